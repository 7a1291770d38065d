"""Exceptions of the DIMSE client side, and which of them a retry can cure.

    NodeError
    └── ScuError                 a request to a remote did not succeed
        ├── UnknownRemote        the AE title is not under [remotes] in config.toml   (final)
        ├── AssociationFailed    refused, unreachable, aborted or timed out           (retryable)
        └── RemoteStatusError    the remote answered a failure status (PS3.4 C.4.2.1.5)
                                 A7xx out of resources and Cxxx unable to process are
                                 retryable; A801 destination unknown, A900 identifier,
                                 0x0122 SOP class not supported, 0x0124 not authorised are final
"""

from __future__ import annotations

from node.errors import NodeError

# Failures that come back the same however often the request is repeated.
FINAL_STATUSES = frozenset({0x0122, 0x0124, 0xA801, 0xA900})


class ScuError(NodeError):
    """A request to a remote AE did not succeed."""

    retryable = False


class UnknownRemote(ScuError):
    """The AE title is not configured under [remotes]."""


class AssociationFailed(ScuError):
    """No association, or it ended before the exchange finished (the peer may be busy)."""

    retryable = True


class RemoteStatusError(ScuError):
    """The remote answered with a failure status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return is_retryable_status(self.status)


def is_retryable_status(status: int) -> bool:
    """Out of resources (A7xx) and other processing failures may pass on a later attempt;
    a wrong destination, identifier or SOP class will not."""
    return status not in FINAL_STATUSES and not 0xA900 <= status <= 0xA9FF
