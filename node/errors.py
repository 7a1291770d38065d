"""Exceptions raised by the node, mapped to DIMSE statuses and HTTP problems at the edges.

    NodeError
    ├── ConfigError            config.toml is wrong; start-up stops with the key path
    └── IngestError            an instance could not be stored
        ├── InvalidDataset     not DICOM, truncated, or missing a required UID   -> 0xC000 family
        ├── DuplicateInstance  duplicate_policy = "reject" and the UID is stored -> 0x0111
        └── StorageFull        the disk (or quota) is full; nothing was kept       -> 0xA700
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration cannot be used; the message names the key path."""


class IngestError(NodeError):
    """An instance was not stored; nothing of it was kept."""


class InvalidDataset(IngestError):
    """The bytes are not a usable DICOM dataset."""


class DuplicateInstance(IngestError):
    """The SOP Instance UID is already stored and the policy says reject."""


class StorageFull(IngestError):
    """No space left to write the instance durably."""
