"""Bulk retrieval from a remote archive: plan with C-FIND, fetch series by series.

``plan_job`` queries the remote down to IMAGE level (SERIES level when the remote refuses
IMAGE), so the job knows every series, how many instances to expect and, where it can, their
UIDs. ``fetch_series`` moves one series with C-MOVE to this node's own AE (the instances
arrive through the node's C-STORE SCP) or C-GET (they arrive over the same association and go
through the same C-STORE handler): either way the one ingest path stores them. Instances the
catalogue already holds are not asked for again. The scheduling, retries and persistence
around these two functions live in scu.runner and scu.jobs.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from pydicom.dataset import Dataset
from pynetdicom import StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from db.models import RetrieveJob, RetrieveSeries
from db.query import KEYS
from node.config import Settings
from node.ingest import Ingestor
from scp.storage import handle_store
from scu.association import associate, client_ae, end_association, let_reactor_resume, remote_named
from scu.direct_store import pause_reactor
from scu.errors import AssociationFailed, RemoteStatusError
from scu.find import build_identifier, find_contexts, find_on, row_of
from scu.jobs import SeriesPlan, instance_uids_of, present_uids

log = logging.getLogger(__name__)

UIDS_PER_REQUEST = 1000  # IMAGE level retrieves name at most this many SOP Instance UIDs
_PENDING = (0xFF00, 0xFF01)
_GET_MODEL = StudyRootQueryRetrieveInformationModelGet
_MOVE_MODEL = StudyRootQueryRetrieveInformationModelMove
_GET_STORAGE_CONTEXTS = 127  # one context is the C-GET model's (PS3.8 9.3.2.2: 128 at most)
_LEVEL_ORDER = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def _keys_for(selection: Sequence[Sequence[str]], level: str) -> list[tuple[str, str]]:
    """The selection keys a query at ``level`` may carry: its level's and those above
    (a lower-level key in a higher-level query is refused by strict archives)."""
    keys = []
    for keyword, value in selection:
        key_level = KEYS[keyword].level if keyword in KEYS else "STUDY"
        if _LEVEL_ORDER.index(key_level) <= _LEVEL_ORDER.index(level) and (
                level == "STUDY" or key_level == level):
            keys.append((keyword, value))
    return keys


def plan_job(settings: Settings, job: RetrieveJob) -> list[SeriesPlan]:
    """Every series the selection names on the remote, with its instances where the remote
    answers IMAGE level queries (one association for all the C-FINDs)."""
    remote = remote_named(settings, job.remote)
    selection = json.loads(job.selection)
    assoc = associate(client_ae(settings), remote, find_contexts(["STUDY"]))
    try:
        studies = _find(assoc, "STUDY", _keys_for(selection, "STUDY"), ["StudyInstanceUID"])
        plans: list[SeriesPlan] = []
        image_level = True
        for study in studies:
            study_uid = study.get("StudyInstanceUID", "")
            series_keys = [("StudyInstanceUID", study_uid), *_keys_for(selection, "SERIES")]
            series = _find(assoc, "SERIES", series_keys, ["SeriesInstanceUID", "Modality",
                                                          "SeriesNumber", "NumberOfSeriesRelatedInstances"])
            series.sort(key=lambda r: (_number(r.get("SeriesNumber")) or 0, r.get("SeriesInstanceUID", "")))
            for row in series:
                series_uid = row.get("SeriesInstanceUID", "")
                uids: tuple[str, ...] | None = None
                if image_level:
                    try:
                        uids = tuple(r["SOPInstanceUID"] for r in _find(
                            assoc, "IMAGE", [("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                                             *_keys_for(selection, "IMAGE")], ["SOPInstanceUID"])
                            if r.get("SOPInstanceUID"))
                    except RemoteStatusError as exc:
                        log.info("%s refuses IMAGE level queries (%s): fetching whole series",
                                 remote.ae_title, exc)
                        image_level = False
                expected = len(uids) if uids is not None else _number(row.get("NumberOfSeriesRelatedInstances")) or 0
                plans.append(SeriesPlan(study_uid, series_uid, row.get("Modality") or None,
                                        _number(row.get("SeriesNumber")), uids, expected))
        return plans
    finally:
        end_association(assoc)


def _find(assoc: Association, level: str, keys: list[tuple[str, str]], returns: list[str]) -> list[dict[str, str]]:
    return [row_of(ds) for ds in find_on(assoc, "STUDY", build_identifier(level, keys, returns))]


def _number(text: str | None) -> int | None:
    try:
        return int(str(text).strip()) if text not in (None, "") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class FetchResult:
    """What one attempt at a series did; ``error`` is None when the remote reported success."""

    status: int | None
    failed: int
    error: str | None
    retryable: bool = True
    cancelled: bool = False


def identifiers_for(row: RetrieveSeries) -> list[Dataset]:
    """The retrieve identifiers for what the catalogue does not hold yet."""
    series_keys = [("StudyInstanceUID", row.study_uid), ("SeriesInstanceUID", row.series_uid)]
    uids = instance_uids_of(row)
    if uids is None:
        return [build_identifier("SERIES", series_keys)]
    held = present_uids(uids)
    missing = [uid for uid in uids if uid not in held]
    if not missing:
        return []
    if not held:
        return [build_identifier("SERIES", series_keys)]
    chunks = [missing[i:i + UIDS_PER_REQUEST] for i in range(0, len(missing), UIDS_PER_REQUEST)]
    return [build_identifier("IMAGE", [*series_keys, ("SOPInstanceUID", "\\".join(chunk))])
            for chunk in chunks]


def _get_contexts() -> tuple[list[PresentationContext], list[Any]]:
    """The C-GET model plus storage contexts this side takes in the SCP role (PS3.4 C.4.3)."""
    from scp.ae import STORAGE_TRANSFER_SYNTAXES

    contexts = [build_context(_GET_MODEL)]
    roles = []
    for cx in StoragePresentationContexts[:_GET_STORAGE_CONTEXTS]:
        contexts.append(build_context(cx.abstract_syntax, STORAGE_TRANSFER_SYNTAXES))
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    return contexts, roles


def retrieve_answers(assoc: Association, model: str, identifier: Dataset, msg_id: int,
                     move_destination: str) -> Iterator[C_GET | C_MOVE | None]:
    """pynetdicom's ``send_c_get``/``send_c_move``, yielding the answers' primitives: for
    each Pending answer (one per sub-operation) pynetdicom builds a status Dataset and logs
    two lines, a fifth of the node's busy time while it stores the instances of a retrieval.
    None when no valid answer came (the association is then aborted, as pynetdicom does).
    A C-GET's C-STORE requests are served on the way, as pynetdicom serves them."""
    context = assoc._get_valid_context(model, "", "scu")
    request = C_GET() if model == _GET_MODEL else C_MOVE()
    request.MessageID = msg_id
    request.AffectedSOPClassUID = model
    request.Priority = 2  # pynetdicom's default
    if isinstance(request, C_MOVE):
        request.MoveDestination = move_destination
    syntax = context.transfer_syntax[0]
    request.Identifier = io.BytesIO(encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian,
                                           syntax.is_deflated))
    pause_reactor(assoc)  # the reactor must not take the answers off the queue
    try:
        assoc.dimse.send_msg(request, context.context_id)
        while True:
            _, answer = assoc.dimse.get_msg(block=True)
            if answer is None:
                assoc._handle_no_response()
                yield None
                return
            if isinstance(answer, C_STORE) and isinstance(request, C_GET):
                assoc._c_store_scp(answer)
                continue
            if type(answer) is not type(request) or not answer.is_valid_response:
                log.error("unexpected or invalid answer to a %s request: aborting the association",
                          type(request).__name__.replace("_", "-"))
                assoc.abort()
                yield None
                return
            yield answer
            if answer.Status not in _PENDING:
                return
    finally:
        assoc._reactor_checkpoint.set()


class Fetcher:
    """Runs the retrieves of one series over one association (C-MOVE or C-GET)."""

    def __init__(self, settings: Settings, ingestor: Ingestor, register: Callable[[Association | None], None]):
        self.settings = settings
        self.ingestor = ingestor
        self.register = register  # the runner keeps the open association, to abort it at stop

    def fetch(self, job: RetrieveJob, row: RetrieveSeries, cancelled: Callable[[], bool]) -> FetchResult:
        identifiers = identifiers_for(row)
        if not identifiers:
            return FetchResult(0x0000, 0, None)
        remote = remote_named(self.settings, job.remote)
        ae = client_ae(self.settings)
        if job.method == "get":
            contexts, roles = _get_contexts()
            assoc = associate(ae, remote, contexts, [(evt.EVT_C_STORE, handle_store, [self.ingestor])],
                              ext_neg=roles)
        else:
            assoc = associate(ae, remote, [build_context(_MOVE_MODEL)])
        self.register(assoc)
        try:
            failed = 0
            for msg_id, identifier in enumerate(identifiers, start=1):
                result = self._one(assoc, job, identifier, msg_id, cancelled)
                failed += result.failed
                if result.error is not None or result.cancelled:
                    return FetchResult(result.status, failed, result.error, result.retryable, result.cancelled)
            return FetchResult(0x0000, failed, None)
        finally:
            self.register(None)
            end_association(assoc)

    def _one(self, assoc: Association, job: RetrieveJob, identifier: Dataset, msg_id: int,
             cancelled: Callable[[], bool]) -> FetchResult:
        model = _GET_MODEL if job.method == "get" else _MOVE_MODEL
        cancel_sent = False
        let_reactor_resume(assoc)  # one request per identifier, back to back
        for answer in retrieve_answers(assoc, model, identifier, msg_id, self.settings.node.ae_title):
            if answer is None:
                if cancel_sent:
                    return FetchResult(None, 0, "stopped", cancelled=True)
                raise AssociationFailed(f"{job.remote} ended the association during the "
                                        f"C-{job.method.upper()}")
            status = answer.Status
            if status in _PENDING:  # progress is read from the catalogue, not written here
                if not cancel_sent and cancelled():
                    assoc.send_c_cancel(msg_id, query_model=model)
                    cancel_sent = True
                continue
            failed = answer.NumberOfFailedSuboperations or 0
            if status == 0x0000:
                return FetchResult(status, failed, None)
            if status == 0xFE00:
                return FetchResult(status, failed, "cancelled", cancelled=True)
            return self._failure(job, status, str(answer.ErrorComment or ""), failed)
        raise AssociationFailed(f"{job.remote} sent no final C-{job.method.upper()} response")

    def _failure(self, job: RetrieveJob, status: int, comment: str, failed: int) -> FetchResult:
        if status == 0xB000 or 0xA700 <= status <= 0xA7FF and failed:
            message = f"{failed} sub-operation(s) failed (status 0x{status:04X})"
        elif status == 0xA801:
            own = self.settings.node.ae_title
            message = (f"{job.remote} does not know {own} as a move destination (0xA801): add "
                       f"{own} with this node's host and port {self.settings.dicom.port} to its configuration")
        else:
            message = f"C-{job.method.upper()} failed with status 0x{status:04X}"
        if comment:
            message += f": {comment}"
        return FetchResult(status, failed, message, RemoteStatusError(status, message).retryable)
