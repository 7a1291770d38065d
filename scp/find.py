"""C-FIND SCP (PS3.4 C.4.1): identifier in, ``db.query.Query`` through the one translator,
one Pending response per match with exactly the requested keys.

Also used by C-MOVE and C-GET to turn their identifiers into the same Query.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.charset import convert_encodings

from db.models import database
from db.query import KEYS, InvalidQuery, Query, UnsupportedQuery, check_hierarchy, find
from node.config import Settings
from node.dicomfile import _PARSE_ERRORS
from scp import statuses

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


def answer_identifier(request: Dataset, values: dict[str, Any], level: str, ae_title: str) -> Dataset:
    """A response with exactly the requested keys, in the request's VRs; unknown ones empty
    (PS3.4 C.4.1.1.3.2), plus the level, the unique key and RetrieveAETitle."""
    ds = Dataset()
    for elem in request:
        keyword = elem.keyword
        if keyword == "SpecificCharacterSet":
            continue
        if elem.VR == "SQ":
            ds.add_new(elem.tag, "SQ", [])
        elif keyword in values:
            ds.add_new(elem.tag, elem.VR, _dicom_value(values[keyword]))
        else:
            ds.add_new(elem.tag, elem.VR, None)
    for keyword, value in values.items():
        if keyword not in ds:
            setattr(ds, keyword, _dicom_value(value))
    ds.QueryRetrieveLevel = level
    ds.RetrieveAETitle = ae_title
    if "InstanceAvailability" in request:
        ds.InstanceAvailability = "ONLINE"
    _set_character_set(ds, request.get("SpecificCharacterSet"), values)
    return ds


def _dicom_value(value: Any) -> Any:
    return value if value is not None and value != "" else None


def _set_character_set(ds: Dataset, requested: Any, values: dict[str, Any]) -> None:
    """ASCII answers need none; otherwise the query's own character set when it can carry the
    text, else UTF-8 (ISO_IR 192)."""
    texts = [v for v in values.values() if isinstance(v, str) and not v.isascii()]
    if not texts:
        return
    if requested:
        terms = list(requested) if isinstance(requested, (MultiValue, list)) else [requested]
        try:
            encodings = convert_encodings(terms)
            if len(encodings) == 1:
                for text in texts:
                    text.encode(encodings[0])
                ds.SpecificCharacterSet = terms
                return
        except (LookupError, UnicodeEncodeError, ValueError):
            pass
    ds.SpecificCharacterSet = "ISO_IR 192"


def handle_find(event: Any, settings: Settings) -> Iterator[tuple[Any, Dataset | None]]:
    """Stream the matches; cancel between responses; past ``max_find_results`` matches the
    stream ends with 0xA700 (Refused: out of resources) after that many answers."""
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
    ae_title = settings.node.ae_title
    pending = statuses.PENDING_UNSUPPORTED_KEYS if ignored_matching_keys(query) else statuses.PENDING
    for count, values in enumerate(matches):
        if event.is_cancelled:
            log.info("C-FIND from %s cancelled after %d responses", calling_ae, count)
            yield statuses.CANCEL, None
            return
        if count == cap:
            yield failure(statuses.OUT_OF_RESOURCES,
                          f"more than {cap} matches: narrow the query", calling_ae)
            return
        yield pending, answer_identifier(identifier, values, query.level, ae_title)


def failure(status: int, reason: str, calling_ae: str) -> tuple[Dataset, None]:
    """A failure status with its reason in Error Comment, logged with the calling AE."""
    log.warning("C-FIND/C-MOVE/C-GET from %s refused with 0x%04X: %s", calling_ae, status, reason)
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = reason[:64]
    return rsp, None
