"""What the upload-session service speaks: its exceptions and value types.

    UploadError
    ├── SessionNotFound         no such session, or another user's                   404
    ├── SessionExpired          abandoned and expired, its bytes freed               410
    ├── InvalidTransition       not allowed from the session's status                409
    │   ├── RetriesExhausted    uploads.max_retries reached                          409
    │   └── IdentityConflict    an identity field would change                       409
    ├── OffsetMismatch          Upload-Offset is not the session's offset            409
    ├── BeyondSize              the chunk runs past the declared size                400
    ├── TooLarge                the declared size exceeds uploads.max_size           413
    ├── ChunkChecksumMismatch   Upload-Checksum does not match the chunk             460
    └── IngestUnavailable       the store failed for a reason of its own             503
    node.errors.StorageFull     the disk is full: the chunk is refused, nothing lost 507

The HTTP edges (``web.uploads``, ``web.uploads_tus``) map each exception to its status.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any


class UploadError(Exception):
    """Base of the upload session errors; the message is safe to show to the client."""


class SessionNotFound(UploadError):
    pass


class SessionExpired(UploadError):
    pass


class InvalidTransition(UploadError):
    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetriesExhausted(InvalidTransition):
    pass


class IdentityConflict(InvalidTransition):
    pass


class OffsetMismatch(UploadError):
    def __init__(self, expected: int) -> None:
        super().__init__(f"Upload-Offset must be {expected}, the bytes received so far")
        self.expected = expected


class BeyondSize(UploadError):
    pass


class TooLarge(UploadError):
    pass


class ChunkChecksumMismatch(UploadError):
    pass


class IngestUnavailable(UploadError):
    pass


@dataclass(frozen=True)
class Caller:
    username: str
    admin: bool = False


@dataclass(frozen=True)
class NewSession:
    file_name: str
    size: int
    sha256: str
    content_type: str
    order_id: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChunkChecksum:
    """An Upload-Checksum header: the algorithm and the chunk's raw digest (tus checksum)."""

    algorithm: str  # a hashlib name: sha1 or sha256
    digest: bytes

    def matches(self, chunk: bytes, sha256: bytes | None = None) -> bool:
        """``sha256``: the chunk's SHA-256 when already computed (not hashed twice)."""
        actual = sha256 if sha256 is not None and self.algorithm == "sha256" else \
            hashlib.new(self.algorithm, chunk).digest()
        return hmac.compare_digest(actual, self.digest)
