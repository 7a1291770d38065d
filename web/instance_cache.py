"""A bounded memory of recently served instances (catalogue row and file path) by SOP UID.

A viewer asks for an instance's metadata, then for each of its frames: remembering the row
spares a catalogue connection and query per frame, which cost more than reading the frame.
A stored file never changes under its path (the digest is part of the name); when an
instance is replaced its old file is removed, so an entry whose file is gone is forgotten
and the catalogue asked again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from db import lookups
from db.lookups import InstancePixels
from db.models import database


class InstanceCache:
    def __init__(self, data_dir: Path, capacity: int = 2048) -> None:
        self.data_dir = data_dir.resolve()
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[InstancePixels, Path]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sop_uid: str) -> tuple[InstancePixels, Path] | None:
        """The remembered entry while its file is there (one ``stat``); None means: load."""
        with self._lock:
            entry = self._entries.get(sop_uid)
            if entry is None:
                return None
            self._entries.move_to_end(sop_uid)
        if not entry[1].exists():  # replaced or removed since: ask the catalogue again
            self.forget(sop_uid)
            return None
        return entry

    def load(self, sop_uid: str) -> tuple[InstancePixels, Path] | None:
        """Ask the catalogue (in the calling thread) and remember the answer."""
        with database.connection_context():
            inst = lookups.instance_pixels(sop_uid)
        if inst is None:
            return None
        path = (self.data_dir / inst.path).resolve()
        if not path.is_relative_to(self.data_dir):  # a row must never lead out of data_dir
            return None
        with self._lock:
            self._entries[sop_uid] = (inst, path)
            self._entries.move_to_end(sop_uid)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return inst, path

    def forget(self, sop_uid: str) -> None:
        with self._lock:
            self._entries.pop(sop_uid, None)
