"""C-MOVE and C-GET SCP (PS3.4 C.4.2 and C.4.3) for the Patient and Study Root models.

The identifier becomes a ``db.query.Query`` through the same translator as C-FIND; the
matching instances are sent as C-STORE sub-operations by pynetdicom's Query/Retrieve service,
which sends a Pending response with the remaining/completed/failed/warning counts after each
sub-operation, honours C-CANCEL between them (the handlers check ``is_cancelled``), and sends
the final response (Success, Warning 0xB000 or Failure 0xA702, with the Failed SOP Instance
UID List) only after the last sub-operation's status has come back.

C-MOVE opens its sub-operation association to the Move Destination as configured under
[remotes], proposing each SOP class in its stored transfer syntax first (``scu.store``).
pynetdicom's service class hands ``send_c_store`` whatever Dataset the handler yields. When
the peer accepted the stored syntax, that is a ``StoredFile`` naming the file, and the
association (``send_stored_files``) sends the file by path: pynetdicom reads its meta and
streams the dataset bytes as stored, with nothing decoded or re-encoded (reading and encoding
the dataset was half the CPU of a sub-operation). Otherwise the file is read with its elements
left undecoded and converted or decompressed for a syntax the peer took. An instance that
cannot be sent at all (file missing, no usable context, no codec) counts as a failed
sub-operation; it never ends the retrieve.

pynetdicom's service needs the Move Destination before anything else and always answers a
C-MOVE after at least one sub-operation once the destination is known, so an identifier that
cannot be answered (0xA900, 0xC000, 0x0124) still reports one failed sub-operation, and C-MOVE
opens (and closes) the association to the destination first.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from db.models import database
from db.query import InvalidQuery, Query, StoredInstance, UnsupportedQuery, retrieve_instances
from node.config import Settings
from node.dicomfile import _PARSE_ERRORS
from scp import statuses
from scp.find import ROOT_OF_SOP_CLASS, caller_may_query, failure, query_from_identifier
from scu.association import let_reactor_resume, set_no_delay
from scu.store import (MAX_CONTEXTS, Unsendable, accepted_syntaxes, contexts_for, dataset_to_send,
                       send_file_directly)

log = logging.getLogger(__name__)

_SOP_CLASS_UID, _SOP_INSTANCE_UID = Tag(0x00080016), Tag(0x00080018)
_UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
                "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class StoredFile(Dataset):
    """A sub-operation's instance as its stored file. pynetdicom's Q/R service passes only
    Datasets on to ``send_c_store``, and reads the SOP Instance UID of a failed one for the
    Failed SOP Instance UID List: this one carries the UIDs as raw elements (decoded only
    if asked for: setting them by keyword cost more than the rest of a sub-operation's
    bookkeeping) and, as plain attributes, the UIDs, the file's path and its syntax, and the
    file the next sub-operation sends (path, SOP class, syntax: read ahead meanwhile)."""

    def __init__(self, path: Path, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax: str, upcoming: tuple[Path, str, str] | None = None) -> None:
        super().__init__()
        for tag, uid in ((_SOP_CLASS_UID, sop_class_uid), (_SOP_INSTANCE_UID, sop_instance_uid)):
            raw = uid.encode("ascii")
            raw += b"\0" * (len(raw) % 2)
            self._dict[tag] = RawDataElement(tag, "UI", len(raw), raw, 0, False, True)
        object.__setattr__(self, "stored", (path, sop_class_uid, sop_instance_uid, transfer_syntax))
        object.__setattr__(self, "upcoming", upcoming)


def send_stored_files(assoc: Association) -> None:
    """Make ``assoc.send_c_store`` send a ``StoredFile`` as stored: framed and written by
    this side where it can be (scu.direct_store: C-MOVE's outgoing association, C-GET's
    accepted one with the fast path), else by path through pynetdicom (streamed, with
    ``STORE_SEND_CHUNKED_DATASET``); any other dataset goes on as before."""
    if getattr(assoc, "_sends_stored_files", False):
        return
    original = assoc.send_c_store

    def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        status = sent(dataset, *args, **kwargs)
        note_sub_operation(assoc, dataset, status)
        return status

    def sent(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(dataset, StoredFile):
            originator = kwargs.get("originator_aet"), kwargs.get("originator_id")
            path, sop_class_uid, sop_instance_uid, transfer_syntax = dataset.stored
            rsp = send_file_directly(assoc, path, sop_class_uid, sop_instance_uid, transfer_syntax,
                                     kwargs.get("msg_id", 1),
                                     originator if originator[0] and originator[1] is not None else None,
                                     dataset.upcoming)
            if rsp is not None:
                return rsp
            dataset = path
        try:
            return original(dataset, *args, **kwargs)
        finally:
            let_reactor_resume(assoc)

    assoc.send_c_store = send_c_store  # type: ignore[method-assign]
    assoc._sends_stored_files = True  # type: ignore[attr-defined]


@dataclass
class SubOperations:
    """Outcomes of the C-STORE sub-operations sent on one association, for the one line a
    retrieve logs when it ends (``serve`` keeps pynetdicom's line per response out of the
    log); each failure is logged as it happens, with its status."""

    completed: int = 0
    warning: int = 0
    failed: int = 0

    def summary(self, total: int) -> str:
        return (f"{self.completed} of {total} sub-operation(s) completed, {self.warning} with a "
                f"warning, {self.failed} failed")


def sub_operations(assoc: Association | None) -> SubOperations:
    if assoc is None:
        return SubOperations()
    tally = assoc.__dict__.get("_sub_operations")
    if tally is None:
        tally = assoc.__dict__["_sub_operations"] = SubOperations()
    return tally


def note_sub_operation(assoc: Association, dataset: Any, status: Any) -> None:
    code = getattr(status, "Status", None)
    tally = sub_operations(assoc)
    if code == 0x0000:
        tally.completed += 1
        return
    if code is not None and 0xB000 <= code <= 0xBFFF:
        tally.warning += 1
        return
    tally.failed += 1
    uid = dataset.stored[2] if isinstance(dataset, StoredFile) else getattr(dataset, "SOPInstanceUID", "?")
    log.warning("C-STORE sub-operation of %s to %s failed: %s", uid, assoc.acceptor.ae_title.strip()
                if assoc.is_requestor else assoc.requestor.ae_title.strip(),
                f"status 0x{code:04X}" if code is not None else "no response")


class _StoreAssociation:
    """Holds the sub-operation association pynetdicom opens for a C-MOVE (its accepted
    contexts decide whether an instance goes as stored, converted, or not at all)."""

    def __init__(self) -> None:
        self.assoc: Association | None = None

    def accepted(self, event: Any) -> None:
        send_stored_files(event.assoc)
        self.assoc = event.assoc


def handle_move(event: Any, settings: Settings) -> Iterator[Any]:
    """C-MOVE (PS3.4 C.4.2.1): destination, sub-operation count, then one dataset per match."""
    calling_ae = event.assoc.requestor.ae_title.strip()
    destination = (event.move_destination or "").strip()
    remote = settings.remotes.get(destination)
    if remote is None:
        known = ", ".join(sorted(settings.remotes)) or "none"
        log.warning("C-MOVE from %s refused with 0xA801: Move Destination %r is unknown "
                    "(known destinations: %s); add [remotes.%s] with host and port to config.toml",
                    calling_ae, destination, known, destination or "AE_TITLE")
        yield None, None
        return
    refusal, instances = instances_to_retrieve(event, settings, calling_ae, "C-MOVE")
    if refusal is not None:
        yield remote.host, remote.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield refusal
        return
    store = _StoreAssociation()
    contexts = contexts_for(instances)
    if len(contexts) > MAX_CONTEXTS:
        log.warning("C-MOVE to %s needs %d presentation contexts; instances of SOP classes past "
                    "the first %d will fail", destination, len(contexts), MAX_CONTEXTS)
    yield remote.host, remote.port, {
        "contexts": contexts[:MAX_CONTEXTS],
        "evt_handlers": [(evt.EVT_CONN_OPEN, set_no_delay),
                         (evt.EVT_ACCEPTED, store.accepted)],
    }
    yield len(instances)
    log.info("C-MOVE from %s: %d instance(s) to %s", calling_ae, len(instances), destination)
    for done, inst in enumerate(instances):
        if event.is_cancelled:
            log.info("C-MOVE from %s cancelled after %d of %d sub-operations", calling_ae, done,
                     len(instances))
            yield statuses.CANCEL, None
            return
        yield statuses.PENDING, dataset_for_sub_operation(inst, store.assoc, settings,
                                                          _following(instances, done))
    log.info("C-MOVE from %s to %s: %s", calling_ae, destination,
             sub_operations(store.assoc).summary(len(instances)))


def handle_get(event: Any, settings: Settings) -> Iterator[Any]:
    """C-GET (PS3.4 C.4.3.1): sub-operation count, then one dataset per match, sent back over
    this association in the storage contexts the requestor proposed with the SCP role."""
    calling_ae = event.assoc.requestor.ae_title.strip()
    refusal, instances = instances_to_retrieve(event, settings, calling_ae, "C-GET")
    if refusal is not None:
        yield 1
        yield refusal
        return
    yield len(instances)
    send_stored_files(event.assoc)
    log.info("C-GET from %s: %d instance(s)", calling_ae, len(instances))
    before = dataclasses.replace(sub_operations(event.assoc))
    for done, inst in enumerate(instances):
        if event.is_cancelled:
            log.info("C-GET from %s cancelled after %d of %d sub-operations", calling_ae, done,
                     len(instances))
            yield statuses.CANCEL, None
            return
        yield statuses.PENDING, dataset_for_sub_operation(inst, event.assoc, settings,
                                                          _following(instances, done))
    now = sub_operations(event.assoc)  # an association may carry several C-GETs
    log.info("C-GET from %s: %s", calling_ae, SubOperations(
        now.completed - before.completed, now.warning - before.warning, now.failed - before.failed,
    ).summary(len(instances)))


def instances_to_retrieve(event: Any, settings: Settings, calling_ae: str,
                          service: str) -> tuple[tuple[Dataset, None] | None, list[StoredInstance]]:
    """The stored instances the identifier names, or the failure to answer instead."""
    if not caller_may_query(calling_ae, settings):
        return failure(statuses.NOT_AUTHORISED, f"{calling_ae} is not a known remote", calling_ae), []
    root = ROOT_OF_SOP_CLASS[event.request.AffectedSOPClassUID]
    try:
        query = query_from_identifier(event.identifier, root, settings)
        check_unique_key(query)
        with database.connection_context():
            return None, retrieve_instances(query)
    except UnsupportedQuery as exc:
        return failure(statuses.UNABLE_TO_PROCESS, str(exc), calling_ae), []
    except InvalidQuery as exc:
        return failure(statuses.IDENTIFIER_DOES_NOT_MATCH, str(exc), calling_ae), []
    except _PARSE_ERRORS as exc:
        return failure(statuses.IDENTIFIER_DOES_NOT_MATCH, f"cannot decode the identifier: {exc}",
                       calling_ae), []


def check_unique_key(query: Query) -> None:
    """A retrieve names what it wants by the unique key of its level, one UID or a list
    (PS3.4 C.4.2.2.1); without it the request would match everything. Keys of the levels
    above are not required (relational leniency, as Orthanc and dcm4chee allow)."""
    keyword = _UNIQUE_KEYS[query.level]
    value = dict(query.matchers).get(keyword, "").strip()
    if not value or "*" in value or "?" in value:
        raise InvalidQuery(f"a {query.level} level retrieve needs a {keyword} value (no wildcards)")


def _following(instances: list[StoredInstance], done: int) -> StoredInstance | None:
    return instances[done + 1] if done + 1 < len(instances) else None


def dataset_for_sub_operation(inst: StoredInstance, assoc: Association | None,
                              settings: Settings, following: StoredInstance | None = None) -> Dataset:
    """The dataset to send, or a stub naming the instance that pynetdicom's ``send_c_store``
    refuses (no transfer syntax): the sub-operation then counts as failed and its UID goes
    into the Failed SOP Instance UID List (PS3.4 C.4.2.1.4.2)."""
    accepted = accepted_syntaxes(assoc, inst.sop_class_uid) if assoc is not None else set()
    path = settings.data_dir / inst.path
    if (inst.transfer_syntax in accepted and pynetdicom_config.STORE_SEND_CHUNKED_DATASET
            and getattr(assoc, "_sends_stored_files", False) and path.is_file()):
        upcoming = None if following is None else (
            settings.data_dir / following.path, following.sop_class_uid, following.transfer_syntax)
        return StoredFile(path, inst.sop_class_uid, inst.sop_instance_uid, inst.transfer_syntax,
                          upcoming)
    try:
        return dataset_to_send(path, inst.transfer_syntax, accepted)
    except Unsendable as exc:
        log.warning("sub-operation for %s fails: %s", inst.sop_instance_uid, exc)
        stub = Dataset()
        stub.SOPClassUID = inst.sop_class_uid
        stub.SOPInstanceUID = inst.sop_instance_uid
        return stub
