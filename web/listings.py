"""Study, series and image listings: query parameters in, the one translator (``db.query``) or a
UID look-up (``db.lookups``), camelCase JSON out.
"""

from __future__ import annotations

from typing import Any

from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse

from db import accounts, lookups
from db.models import database
from db.query import KEYS, Query, count_matches, find
from web.context import context_of
from web.errors import BadRequest, NotFound
from web.params import client_address, int_param, uid_param

# keyword -> JSON name for the study listing (what the query answers, in this order)
_STUDY_FIELDS = {
    "StudyInstanceUID": "studyUid",
    "PatientName": "patientName",
    "PatientID": "patientId",
    "PatientBirthDate": "patientBirthDate",
    "PatientSex": "patientSex",
    "StudyDate": "studyDate",
    "StudyTime": "studyTime",
    "AccessionNumber": "accessionNumber",
    "StudyID": "studyId",
    "StudyDescription": "studyDescription",
    "ReferringPhysicianName": "referringPhysicianName",
    "InstitutionName": "institutionName",
    "ModalitiesInStudy": "modalitiesInStudy",
    "NumberOfStudyRelatedSeries": "numberOfSeries",
    "NumberOfStudyRelatedInstances": "numberOfInstances",
}
_SERIES_FIELDS = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality",
                  "NumberOfSeriesRelatedInstances")
# study listing filters: any patient or study level key of the translator
STUDY_FILTERS = tuple(k for k, key in KEYS.items() if key.level in ("PATIENT", "STUDY"))
_PAGING = ("limit", "offset")
DEFAULT_LIMIT = 100


def instance_url(sop_uid: str) -> str:
    return f"/api/pacs/instances/{sop_uid}/"


def frame_url(sop_uid: str, frame: int) -> str:
    return f"/api/pacs/instances/{sop_uid}/frames/{frame}"


def thumbnail_url(sop_uid: str) -> str:
    return f"/api/pacs/instances/{sop_uid}/thumbnail"


@requires(["authenticated", "read"])
def list_studies(request: Request) -> JSONResponse:
    """``?PatientName=SMI*&StudyDate=20210101-20210131&ModalitiesInStudy=CT&limit=&offset=``."""
    ctx = context_of(request)
    matchers = []
    for name, value in request.query_params.multi_items():
        if name in _PAGING:
            continue
        if name not in STUDY_FILTERS:
            raise BadRequest(f"unknown filter {name!r}; filters are {', '.join(STUDY_FILTERS)}, "
                             "limit and offset")
        matchers.append((name, value))
    limit = int_param(request, "limit", DEFAULT_LIMIT, 1, ctx.settings.web.max_list_limit)
    offset = int_param(request, "offset", 0, 0)
    query = Query(level="STUDY", matchers=tuple(matchers), requested=tuple(_STUDY_FIELDS),
                  case_sensitive_names=ctx.settings.dicom.case_sensitive_names,
                  limit=limit, offset=offset)
    with database.connection_context():
        studies = [_study_json(row) for row in find(query)]
        total = count_matches(query)
    return JSONResponse({"studies": studies, "total": total, "limit": limit, "offset": offset})


def _study_json(row: dict[str, Any]) -> dict[str, Any]:
    item = {name: row.get(keyword) for keyword, name in _STUDY_FIELDS.items()}
    item["modalitiesInStudy"] = item["modalitiesInStudy"] or []
    item["seriesUrl"] = f"/api/pacs/studies/{item['studyUid']}/series/"
    return item


@requires(["authenticated", "read"])
def list_series(request: Request) -> JSONResponse:
    """The thumbnail strip: every series of the study in series number order, with the URLs of
    its first image and of the thumbnail of its middle image."""
    study_uid = uid_param(request, "study_uid")
    query = Query(level="SERIES", matchers=(("StudyInstanceUID", study_uid),),
                  requested=_SERIES_FIELDS)
    with database.connection_context():
        if not lookups.study_exists(study_uid):
            raise NotFound(f"no study {study_uid}")
        rows = list(find(query))
        representatives = lookups.representative_images(study_uid)
        _audit(request, study_uid, "series")
    series = []
    for row in rows:
        uid = row["SeriesInstanceUID"]
        images = representatives.get(uid)
        series.append({
            "seriesUid": uid,
            "seriesNumber": row["SeriesNumber"],
            "seriesDescription": row["SeriesDescription"],
            "modality": row["Modality"],
            "imageCount": row["NumberOfSeriesRelatedInstances"],
            "firstImageUrl": frame_url(images.first, 1) if images else None,
            "thumbnailUrl": thumbnail_url(images.middle) if images else None,
        })
    return JSONResponse({"studyUid": study_uid, "series": series})


@requires(["authenticated", "read"])
def series_images_bulk(request: Request) -> JSONResponse:
    """One page of a series' frames in viewing order: ``?start=0&count=50``."""
    ctx = context_of(request)
    study_uid = uid_param(request, "study_uid")
    series_uid = uid_param(request, "series_uid")
    start = int_param(request, "start", 0, 0)
    count = int_param(request, "count", 50, 1, ctx.settings.web.max_bulk_count)
    with database.connection_context():
        if not lookups.series_in_study(study_uid, series_uid):
            raise NotFound(f"no series {series_uid} in study {study_uid}")
        instances = lookups.series_images(series_uid)
        if start == 0:
            _audit(request, study_uid, "images")
    frames = [(uid, n) for uid, frame_count in instances for n in range(1, frame_count + 1)]
    page = frames[start:start + count]
    images = [{"imageNumber": start + i + 1, "instanceUid": uid, "frameNumber": n,
               "imageUrl": frame_url(uid, n)} for i, (uid, n) in enumerate(page)]
    return JSONResponse({"images": images, "totalImages": len(frames),
                         "hasMore": start + len(page) < len(frames)})


@requires(["authenticated", "read"])
def study_image_ids(request: Request) -> JSONResponse:
    """Every frame of the study as a frame URL, series by series, in viewing order."""
    study_uid = uid_param(request, "study_uid")
    with database.connection_context():
        if not lookups.study_exists(study_uid):
            raise NotFound(f"no study {study_uid}")
        instances = lookups.study_images(study_uid)
        _audit(request, study_uid, "image-ids")
    ids = [frame_url(uid, n) for uid, frame_count in instances for n in range(1, frame_count + 1)]
    return JSONResponse({"imageIds": ids, "total": len(ids)})


def _audit(request: Request, study_uid: str, action: str) -> None:
    """Who read which study, when and from where (in the caller's connection)."""
    accounts.record_access(request.user.identity, study_uid, action, client_address(request))
