"""QIDO-RS (PS3.18 10.6): query parameters in, the one translator (``db.query``) out, DICOM JSON.

Match keys come by keyword or tag (``PatientName=``, ``00100010=``) and are matched by the
same PS3.4 C.2.2.2 rules as C-FIND. Each level answers the attributes of PS3.18 Tables
10.6.3-3 to 10.6.3-5 that the catalogue knows (plus RetrieveURL and InstanceAvailability),
the matched keys and ``includefield`` ones; searches across studies (``/series``,
``/instances``) also answer the levels above (10.6.3.3.2). No match is ``200 []``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag
from starlette.requests import Request
from starlette.responses import Response

from db import dicomweb_lookups
from db.models import database
from db.query import KEYS, Query, find
from web.context import context_of
from web.dicomweb import dicomjson
from web.dicomweb.accept import DICOM_JSON, require_json
from web.dicomweb.access import require_read
from web.dicomweb.resources import instance_path, series_path, service_url, study_path
from web.errors import BadRequest
from web.params import int_param, uid_param

# PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series), 10.6.3-5 (instance): what the catalogue
# holds of them (TimezoneOffsetFromUTC and the performed procedure step keys it does not)
DEFAULTS = {
    "STUDY": ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
              "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"),
    "SERIES": ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
               "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
              "NumberOfFrames"),
}
_ORDER = ("STUDY", "SERIES", "IMAGE")
_CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching", "accept"})
_COMMA_LISTS = frozenset({"UI", "CS"})  # values that never hold a comma themselves
_TAG = re.compile(r"[0-9A-Fa-f]{8}")


@dataclass(frozen=True)
class Search:
    """A QIDO-RS request: the level, the path's UIDs, the keys to match and to return."""

    level: str
    scope: tuple[tuple[str, str], ...]  # (keyword, UID) the path fixes
    matchers: tuple[tuple[str, str], ...]
    included: tuple[str, ...]
    limit: int
    offset: int
    fuzzy: bool


def keyword_of(name: str) -> str:
    """A parameter name as a keyword: keywords as they are, tags (``00100010``) looked up."""
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise BadRequest(f"{name}: not a tag of the DICOM data dictionary")
        return keyword
    if "." in name:
        raise BadRequest(f"{name}: sequence matching is not supported")
    if not dicomjson.is_keyword(name):
        raise BadRequest(f"{name!r} is neither a DICOM keyword nor a tag (8 hex digits) nor one of "
                         "limit, offset, includefield, fuzzymatching")
    return name


def searchable(level: str) -> list[str]:
    """Keys this level may match on: its own and those of the levels above it."""
    levels = {"STUDY": ("PATIENT", "STUDY"), "SERIES": ("PATIENT", "STUDY", "SERIES"),
              "IMAGE": ("PATIENT", "STUDY", "SERIES", "IMAGE")}[level]
    return [k for k, key in KEYS.items() if key.level in levels]


def parse_search(request: Request, level: str) -> Search:
    """Check every parameter: unknown keys, keys below the level and bad numbers are 400s."""
    scope = []
    if "study" in request.path_params:
        scope.append(("StudyInstanceUID", uid_param(request, "study")))
    if "series" in request.path_params:
        scope.append(("SeriesInstanceUID", uid_param(request, "series")))
    allowed = searchable(level)
    matchers: list[tuple[str, str]] = []
    included: list[str] = []
    for name, value in request.query_params.multi_items():
        if name in _CONTROL:
            if name == "includefield":
                included.extend(_included(value))
            continue
        keyword = keyword_of(name)
        if keyword not in allowed:
            raise BadRequest(f"{keyword} cannot be matched in a {level.lower()} search here; "
                             f"keys: {', '.join(allowed)}")
        if any(keyword == k for k, _ in (*scope, *matchers)):
            raise BadRequest(f"{keyword} is given twice (the path may fix it already)")
        if KEYS[keyword].vr in _COMMA_LISTS:
            value = value.replace(",", "\\")  # PS3.18 8.3.4.1: UID lists are comma-separated
        matchers.append((keyword, value))
    cap = context_of(request).settings.dicomweb.max_results
    return Search(level, tuple(scope), tuple(matchers), tuple(included),
                  int_param(request, "limit", cap, 1), int_param(request, "offset", 0, 0),
                  _flag(request, "fuzzymatching"))


def _included(value: str) -> list[str]:
    if value.strip() == "all":
        return ["all"]
    return [keyword_of(item.strip()) for item in value.split(",") if item.strip()]


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise BadRequest(f"{name}: expected true or false, got {raw[:20]!r}")
    return raw == "true"


def answered_levels(search: Search) -> tuple[str, ...]:
    """The level searched and those above it the path does not fix (PS3.18 10.6.3.3.2-3:
    all series carry their study's attributes, a study's instances their series')."""
    return _ORDER[len(search.scope):_ORDER.index(search.level) + 1]


def return_keys(search: Search) -> list[str]:
    """Defaults of the answered levels, the matched keys, and the included ones the
    catalogue knows (others are not supported, so not returned)."""
    levels = answered_levels(search)
    keys = [k for level in levels for k in DEFAULTS[level]]
    if "all" in search.included:
        keys += [k for k in searchable(search.level) if _study_root_level(k) in levels]
    keys += [k for k, _ in (*search.scope, *search.matchers)]
    keys += [k for k in search.included if k in KEYS and k in searchable(search.level)]
    return list(dict.fromkeys(keys))


def _study_root_level(keyword: str) -> str:
    """Patient attributes are study attributes in the Study Root model QIDO-RS uses."""
    level = KEYS[keyword].level
    return "STUDY" if level == "PATIENT" else level


def run_search(request: Request, search: Search) -> tuple[list[dict[str, Any]], bool]:
    """The matching rows (at most ``max_results``) and whether the cap cut the answer."""
    settings = context_of(request).settings
    cap = settings.dicomweb.max_results
    wanted = min(search.limit, cap)
    keys = return_keys(search)
    if search.level != "STUDY":
        keys = list(dict.fromkeys(["StudyInstanceUID", *keys]))
    if search.level == "IMAGE":
        keys = list(dict.fromkeys(["SeriesInstanceUID", *keys]))
    query = Query(level=search.level, matchers=(*search.scope, *search.matchers),
                  requested=tuple(keys), case_sensitive_names=settings.dicom.case_sensitive_names,
                  limit=wanted + 1, offset=search.offset)
    with database.connection_context():
        rows = list(find(query))
        if search.level == "IMAGE" and rows:
            bits = dicomweb_lookups.bits_allocated([r["SOPInstanceUID"] for r in rows[:wanted]])
            for row in rows:
                row["BitsAllocated"] = bits.get(row["SOPInstanceUID"])
    return rows[:wanted], wanted == cap and len(rows) > wanted


def answer_json(row: dict[str, Any], keys: list[str], level: str, base: str) -> dict[str, Any]:
    """One match as DICOM JSON, with InstanceAvailability and RetrieveURL (PS3.18 10.6.3.3)."""
    out = {dicomjson.tag_key(k): dicomjson.attribute(k, row.get(k)) for k in keys}
    if level == "IMAGE":
        out[dicomjson.tag_key("BitsAllocated")] = dicomjson.attribute("BitsAllocated",
                                                                      row.get("BitsAllocated"))
    out[dicomjson.tag_key("InstanceAvailability")] = dicomjson.attribute("InstanceAvailability",
                                                                         "ONLINE")
    study = row["StudyInstanceUID"]
    url = {"STUDY": lambda: study_path(study),
           "SERIES": lambda: series_path(study, row["SeriesInstanceUID"]),
           "IMAGE": lambda: instance_path(study, row["SeriesInstanceUID"], row["SOPInstanceUID"])}
    out[dicomjson.tag_key("RetrieveURL")] = dicomjson.attribute("RetrieveURL",
                                                                f"{base}/{url[level]()}")
    if any(isinstance(v, str) and not v.isascii() for v in row.values()) or any(
            isinstance(v, list) and any(isinstance(i, str) and not i.isascii() for i in v)
            for v in row.values()):
        out[dicomjson.tag_key("SpecificCharacterSet")] = dicomjson.attribute(
            "SpecificCharacterSet", "ISO_IR 192")
    return dicomjson.json_object(out.items())


def _search(request: Request, level: str) -> Response:
    require_read(request)
    require_json(request)
    search = parse_search(request, level)
    rows, truncated = run_search(request, search)
    keys = return_keys(search)
    base = service_url(request)
    body = "[" + ",".join(dicomjson.dumps(answer_json(r, keys, level, base)) for r in rows) + "]"
    headers = {}
    warnings = []
    if search.fuzzy:
        warnings.append('299 pacsnode "fuzzymatching is not supported: names match as written"')
    if truncated:
        cap = context_of(request).settings.dicomweb.max_results
        warnings.append(f'299 pacsnode "more than {cap} matches (dicomweb.max_results): '
                        'narrow the search or page with offset"')
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    return Response(body, media_type=DICOM_JSON, headers=headers)


def search_studies(request: Request) -> Response:
    """``GET /studies`` (PS3.18 10.6.1)."""
    return _search(request, "STUDY")


def search_series(request: Request) -> Response:
    """``GET /series`` and ``GET /studies/{study}/series``."""
    return _search(request, "SERIES")


def search_instances(request: Request) -> Response:
    """``GET /instances``, ``/studies/{study}/instances`` and ``.../series/{series}/instances``."""
    return _search(request, "IMAGE")
