"""C-FIND SCP (PS3.4 C.4.1): identifier in, ``db.query.Query`` through the one translator,
one Pending response per match with exactly the requested keys.

Also used by C-MOVE and C-GET to turn their identifiers into the same Query.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ImplicitVRLittleEndian

from db.models import database
from db.query import KEYS, InvalidQuery, Query, UnsupportedQuery, check_hierarchy, find
from node.config import Settings
from node.dicomfile import _PARSE_ERRORS
from scp import statuses
from scp.answers import EncodedIdentifier, answer_bytes, answer_dataset, answer_layout

log = logging.getLogger(__name__)

# Query/Retrieve information models (PS3.4 C.6): SOP Class UID -> root
ROOT_OF_SOP_CLASS = {
    "1.2.840.10008.5.1.4.1.2.1.1": "PATIENT",  # Patient Root Q/R - FIND
    "1.2.840.10008.5.1.4.1.2.1.2": "PATIENT",  # - MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": "PATIENT",  # - GET
    "1.2.840.10008.5.1.4.1.2.2.1": "STUDY",  # Study Root Q/R - FIND
    "1.2.840.10008.5.1.4.1.2.2.2": "STUDY",  # - MOVE
    "1.2.840.10008.5.1.4.1.2.2.3": "STUDY",  # - GET
}
# Keys the SCP answers itself rather than from the catalogue.
_NOT_MATCHED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle",
                "InstanceAvailability"}


def caller_may_query(calling_ae: str, settings: Settings) -> bool:
    """With ``query_requires_known_caller`` only the AE titles under [remotes] may query/retrieve."""
    return not settings.dicom.query_requires_known_caller or calling_ae.strip() in settings.remotes


def query_from_identifier(identifier: Dataset, root: str, settings: Settings,
                          limit: int | None = None) -> Query:
    """Every key of the identifier is a return key; the non-empty ones also match."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        raise InvalidQuery("the identifier has no QueryRetrieveLevel")
    matchers: list[tuple[str, str]] = []
    requested: list[str] = []
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in _NOT_MATCHED:
            continue
        requested.append(keyword)
        value = _sequence_value(elem) if elem.VR == "SQ" else _text_value(elem.value)
        if value:
            matchers.append((keyword, value))
    return Query(level=level, root=root, matchers=tuple(matchers), requested=tuple(requested),
                 case_sensitive_names=settings.dicom.case_sensitive_names, limit=limit)


def ignored_matching_keys(query: Query) -> list[str]:
    """Keys given a value that the catalogue cannot match on (answered 0xFF01, C.4.1.1.4)."""
    return [keyword for keyword, _ in query.matchers if keyword not in KEYS]


def _text_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join("" if v is None else str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value).strip()


def _sequence_value(elem: Any) -> str:
    """An empty sequence (or one empty item) only asks for the sequence back; values inside
    it would need sequence matching (C.2.2.2.6), which this node does not carry out."""
    for item in elem.value:
        if any(_text_value(e.value) for e in item if e.VR != "SQ") or any(
                e.VR == "SQ" and len(e.value) for e in item):
            raise UnsupportedQuery(f"sequence matching on {elem.keyword} is not supported")
    return ""


def handle_find(event: Any, settings: Settings,
                encode_directly: bool = False) -> Iterator[tuple[Any, Dataset | None]]:
    """Stream the matches; cancel between responses; past ``max_find_results`` matches the
    stream ends with 0xA700 (Refused: out of resources) after that many answers.

    ``encode_directly`` (with scp.fastpath installed) yields answers already encoded."""
    calling_ae = event.assoc.requestor.ae_title.strip()
    root = ROOT_OF_SOP_CLASS[event.request.AffectedSOPClassUID]
    if not caller_may_query(calling_ae, settings):
        yield failure(statuses.NOT_AUTHORISED, f"{calling_ae} is not a known remote", calling_ae)
        return
    cap = settings.dicom.max_find_results
    try:
        identifier = event.identifier
        query = query_from_identifier(identifier, root, settings, limit=cap + 1)
        check_hierarchy(query)
        with database.connection_context():
            matches = list(find(query))
    except UnsupportedQuery as exc:
        yield failure(statuses.UNABLE_TO_PROCESS, str(exc), calling_ae)
        return
    except InvalidQuery as exc:
        yield failure(statuses.IDENTIFIER_DOES_NOT_MATCH, str(exc), calling_ae)
        return
    except _PARSE_ERRORS as exc:
        yield failure(statuses.IDENTIFIER_DOES_NOT_MATCH, f"cannot decode the identifier: {exc}",
                      calling_ae)
        return
    layout = answer_layout(identifier, query.unique_key, query.level, settings.node.ae_title)
    implicit = event.context.transfer_syntax == ImplicitVRLittleEndian
    encode_directly = encode_directly and layout.directly_encodable
    pending = statuses.PENDING_UNSUPPORTED_KEYS if ignored_matching_keys(query) else statuses.PENDING
    log.info("C-FIND from %s at %s level: %d match(es)", calling_ae, query.level, min(len(matches), cap))
    for count, values in enumerate(matches):
        if event.is_cancelled:
            log.info("C-FIND from %s cancelled after %d responses", calling_ae, count)
            yield statuses.CANCEL, None
            return
        if count == cap:
            yield failure(statuses.OUT_OF_RESOURCES,
                          f"more than {cap} matches: narrow the query", calling_ae)
            return
        encoded = answer_bytes(layout, values, implicit) if encode_directly else None
        yield pending, EncodedIdentifier(encoded) if encoded is not None else answer_dataset(layout, values)


def failure(status: int, reason: str, calling_ae: str) -> tuple[Dataset, None]:
    """A failure status with its reason in Error Comment, logged with the calling AE."""
    log.warning("C-FIND/C-MOVE/C-GET from %s refused with 0x%04X: %s", calling_ae, status, reason)
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = reason[:64]
    return rsp, None
