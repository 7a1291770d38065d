"""C-STORE SCU: the one sender of stored instances (PS3.4 B.2, PS3.7 9.1.1).

``node send``, forwarding and the C-MOVE/C-GET SCP all send through here. The stored
transfer syntax is proposed first, in a presentation context of its own, so the peer can take
the bytes as they are. When it accepts that syntax the file is handed to pynetdicom by path
with ``STORE_SEND_CHUNKED_DATASET`` set (``node.runtime.configure_pynetdicom``): pynetdicom
reads only the File Meta Information and streams the dataset bytes from the file in PDV-sized
chunks, never decoding or holding the dataset. Otherwise the file is read and converted between
the uncompressed syntaxes (explicit/implicit VR, deflate), decompressed where a pixel data
codec is installed, or the instance counts as failed; nothing here stops a batch.

A batch goes over one association (never one per instance); only a batch needing more than
128 presentation contexts (PS3.8 9.3.2.2) is split, by SOP class.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from node.config import Settings
from scu.association import Remote, associate, client_ae, end_association, let_reactor_resume, status_of
from scu.direct_store import can_send_directly, send_stored_file, send_stored_file_in_reactor
from scu.errors import AssociationFailed

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class Sendable(Protocol):
    """What the sender needs of an instance (``db.query.StoredInstance`` has it)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: str  # relative to data_dir


class Unsendable(Exception):
    """The instance cannot go over this association: no usable context, or unreadable."""


@dataclass(frozen=True)
class StoreResult:
    sop_instance_uid: str
    status: int | None  # None: not sent (no usable context, unreadable, association lost)
    error: str = ""

    @property
    def outcome(self) -> str:
        """success, warning or failure (PS3.4 B.2.3: 0xB000, 0xB006, 0xB007 are warnings)."""
        if self.status == 0x0000:
            return "success"
        if self.status is not None and (self.status & 0xF000) == 0xB000:
            return "warning"
        return "failure"


@dataclass
class SendSummary:
    results: list[StoreResult] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def failed(self) -> list[StoreResult]:
        return [r for r in self.results if r.outcome == "failure"]


def can_decompress(transfer_syntax: str) -> bool:
    """True when an installed pixel data codec decodes this syntax (pydicom's own RLE does)."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def contexts_for(instances: Iterable[Sendable]) -> list[PresentationContext]:
    """Per SOP class: one context of its own for each stored syntax (so the peer takes it or
    refuses it, rather than choosing another from a list), then one [explicit, implicit VR
    little endian] context led by the class's most common plain syntax, which also carries
    that syntax's instances. The plain context is left out only when every instance is
    compressed in a syntax no installed codec decodes."""
    by_class: dict[str, dict[str, int]] = {}
    for inst in instances:
        counts = by_class.setdefault(inst.sop_class_uid, {})
        counts[inst.transfer_syntax] = counts.get(inst.transfer_syntax, 0) + 1
    contexts = []
    for sop_class, syntaxes in by_class.items():
        plain = sorted(UNCOMPRESSED, key=lambda t: -syntaxes.get(t, 0))
        for ts in sorted(syntaxes, key=lambda t: -syntaxes[t]):
            if ts != plain[0]:
                contexts.append(build_context(sop_class, [ts]))
        if any(not UID(ts).is_compressed or can_decompress(ts) for ts in syntaxes):
            contexts.append(build_context(sop_class, plain))
    return contexts


def batches(instances: Sequence[Sendable]) -> list[list[Sendable]]:
    """Split by SOP class only when one association cannot carry every context needed."""
    groups: dict[str, list[Sendable]] = {}
    for inst in instances:
        groups.setdefault(inst.sop_class_uid, []).append(inst)
    result: list[list[Sendable]] = []
    current: list[Sendable] = []
    for group in groups.values():
        if current and len(contexts_for(current + group)) > MAX_CONTEXTS:
            result.append(current)
            current = []
        current = current + group
    if current:
        result.append(current)
    return result


def accepted_syntaxes(assoc: Association, sop_class_uid: str) -> set[str]:
    """Transfer syntaxes accepted for the class with this side as the storage SCU."""
    return set(storage_contexts(assoc).get(sop_class_uid, ()))


def storage_contexts(assoc: Association) -> dict[str, dict[str, int]]:
    """SOP class -> accepted transfer syntax -> the first context ID for it, with this side
    as the storage SCU. Worked out once per negotiation: a C-GET asks for every
    sub-operation, and getscu proposes over a hundred contexts (pynetdicom replaces its
    whole ``_accepted_cx`` dict when it negotiates, which renews this)."""
    accepted = getattr(assoc, "_accepted_cx", None)
    cached = assoc.__dict__.get("_storage_contexts")
    if cached is not None and accepted is not None and cached[0] is accepted and cached[1] == len(accepted):
        return cached[2]
    found: dict[str, dict[str, int]] = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu:
            found.setdefault(cx.abstract_syntax, {}).setdefault(cx.transfer_syntax[0], cx.context_id)
    if accepted is not None:
        assoc.__dict__["_storage_contexts"] = (accepted, len(accepted), found)
    return found


def dataset_to_send(path: Path, stored_ts: str, accepted: set[str]) -> Dataset:
    """The stored dataset, ready for pynetdicom to encode in an accepted syntax.

    Elements stay undecoded (pydicom writes raw elements back byte for byte); only a compressed
    instance the peer cannot take in its own syntax is decompressed, and only with a codec.
    """
    stored = UID(stored_ts)
    if stored not in accepted:
        if not accepted:
            raise Unsendable("the peer accepted no context for its SOP class")
        if stored.is_compressed and not (accepted & set(UNCOMPRESSED) and can_decompress(stored)):
            raise Unsendable(f"stored as {stored.name}; the peer accepted only "
                             f"{', '.join(sorted(UID(t).name for t in accepted))} and no installed "
                             "codec decompresses it")
    try:
        ds = dcmread(path)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise Unsendable(f"cannot read {path}: {exc}") from None
    if stored not in accepted and stored.is_compressed:
        try:
            ds.decompress(generate_instance_uid=False)  # pydicom would mint a new UID
        except Exception as exc:  # noqa: BLE001 - codecs raise anything; the instance fails
            raise Unsendable(f"decompressing {stored.name} failed: {exc}") from None
    return ds


def send_one(assoc: Association, inst: Sendable, data_dir: Path, msg_id: int = 1,
             move_originator: tuple[str, int] | None = None) -> StoreResult:
    """One C-STORE over an established association; every failure becomes a result."""
    path = data_dir / inst.path
    accepted = accepted_syntaxes(assoc, inst.sop_class_uid)
    originator_aet, originator_id = move_originator or (None, None)
    try:
        if inst.transfer_syntax in accepted and pynetdicom_config.STORE_SEND_CHUNKED_DATASET:
            if not path.is_file():
                raise Unsendable(f"the stored file {path} is missing")
            payload: Path | Dataset = path
            rsp = send_file_directly(assoc, path, inst.sop_class_uid, inst.sop_instance_uid,
                                     inst.transfer_syntax, msg_id, move_originator)
            if rsp is not None:
                return _result(inst, rsp)
        else:
            payload = dataset_to_send(path, inst.transfer_syntax, accepted)
        rsp = assoc.send_c_store(payload, msg_id=msg_id, originator_aet=originator_aet,
                                 originator_id=originator_id)
    except Unsendable as exc:
        return StoreResult(inst.sop_instance_uid, None, str(exc))
    except (ValueError, AttributeError, OSError) as exc:  # pynetdicom: no context, unencodable
        return StoreResult(inst.sop_instance_uid, None, str(exc))
    return _result(inst, rsp)


def _result(inst: Sendable, rsp: Dataset | None) -> StoreResult:
    status = status_of(rsp)
    if status is None:
        return StoreResult(inst.sop_instance_uid, None, "no C-STORE response (association lost)")
    comment = str(rsp.get("ErrorComment", "") or "")  # type: ignore[union-attr]
    return StoreResult(inst.sop_instance_uid, status, comment)


def send_file_directly(assoc: Association, path: Path, sop_class_uid: str, sop_instance_uid: str,
                       transfer_syntax: str, msg_id: int,
                       move_originator: tuple[str, int] | None = None,
                       upcoming: tuple[Path, str, str] | None = None) -> Dataset | None:
    """A stored file, in its stored syntax, through scu.direct_store when the association
    allows it: an outgoing one (``send``, forwarding, C-MOVE), or an accepted one from its
    own reactor thread (C-GET); None when it does not (the caller sends through pynetdicom).
    ``upcoming``: the file to be sent next (path, SOP class, syntax), to read ahead."""
    in_reactor = threading.current_thread() is assoc and not assoc.is_requestor
    if not direct_sending.enabled or not (in_reactor or can_send_directly(assoc)):
        return None
    contexts = storage_contexts(assoc)
    context_id = contexts.get(sop_class_uid, {}).get(transfer_syntax)
    if context_id is None:
        return None
    then = None
    if upcoming is not None:
        next_context = contexts.get(upcoming[1], {}).get(upcoming[2])
        then = (upcoming[0], next_context) if next_context is not None else None
    try:
        if in_reactor:
            return send_stored_file_in_reactor(assoc, context_id, path, sop_class_uid,
                                               sop_instance_uid, msg_id, then)
        return send_stored_file(assoc, context_id, path, sop_class_uid, sop_instance_uid, msg_id,
                                move_originator, then)
    except ValueError:  # a file without a meta group length: pynetdicom finds the dataset
        return None


class _DirectSending:
    """Whether outgoing C-STOREs of stored files use scu.direct_store (tests switch it off to
    run the same exchanges through pynetdicom)."""

    enabled = True


direct_sending = _DirectSending()


def send_instances(settings: Settings, remote: Remote, instances: Sequence[Sendable],
                   calling_ae: str | None = None,
                   on_result: Callable[[StoreResult], None] | None = None,
                   cancelled: Callable[[], bool] | None = None) -> SendSummary:
    """Send every instance, one association per batch; AssociationFailed only when no
    association could be opened at all (later losses fail the rest of their batch)."""
    summary = SendSummary()
    ae = client_ae(settings, calling_ae)
    opened_any = False
    for batch in batches(list(instances)):
        try:
            assoc = associate(ae, remote, contexts_for(batch))
        except AssociationFailed:
            if not opened_any:
                raise
            results = [StoreResult(i.sop_instance_uid, None, "association refused") for i in batch]
            summary.results.extend(results)
            continue
        opened_any = True
        try:
            for n, inst in enumerate(batch):
                if cancelled is not None and cancelled():
                    return summary
                if not assoc.is_established:
                    result = StoreResult(inst.sop_instance_uid, None, "association lost")
                else:
                    result = send_one(assoc, inst, settings.data_dir, msg_id=n % 65535 + 1)
                    let_reactor_resume(assoc)
                summary.results.append(result)
                if on_result is not None:
                    on_result(result)
        finally:
            end_association(assoc)
    return summary
