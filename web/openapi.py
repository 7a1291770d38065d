"""The OpenAPI 3.1 document of the HTTP API, served at ``/api/openapi.json``.

Written out rather than generated: Starlette's generator wants YAML docstrings, and the
shapes below are contracts a viewer codes against. A test checks that every route of the
app appears here, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse

from web import uploads_openapi

_UID = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)*$", "maxLength": 64}
_PROBLEM = {"description": "Problem details (RFC 9457)",
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or _UID}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _get(summary: str, ok: dict[str, Any], *params: dict[str, Any], public: bool = False,
         cached: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok, "400": _PROBLEM, "404": _PROBLEM, "429": _PROBLEM}
    if not public:
        responses["401"] = _PROBLEM
    if cached:
        responses["304"] = {"description": "If-None-Match matched the ETag"}
    op: dict[str, Any] = {"summary": summary, "parameters": list(params), "responses": responses}
    if public:
        op["security"] = []
    return {"get": op}


def _json(schema: dict[str, Any] | str, description: str = "OK") -> dict[str, Any]:
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _binary(*media_types: str) -> dict[str, Any]:
    return {"description": "OK (ETag, Cache-Control: private, max-age=86400, immutable)",
            "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in media_types}}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


_S, _I, _N, _B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_NS = {"type": ["string", "null"]}
_NI = {"type": ["integer", "null"]}

SCHEMAS: dict[str, Any] = {
    "Problem": _obj(type=_S, title=_S, status=_I, detail=_S, instance=_S),
    "Credentials": {**_obj(username=_S, password=_S), "required": ["username", "password"]},
    "Refresh": {**_obj(refresh=_S), "required": ["refresh"]},
    "TokenPair": _obj(access=_S, refresh=_S, tokenType=_S, expiresIn=_I),
    "Study": _obj(studyUid=_S, patientName=_NS, patientId=_NS, patientBirthDate=_NS, patientSex=_NS,
                  studyDate=_NS, studyTime=_NS, accessionNumber=_NS, studyId=_NS,
                  studyDescription=_NS, referringPhysicianName=_NS, institutionName=_NS,
                  modalitiesInStudy={"type": "array", "items": _S}, numberOfSeries=_I,
                  numberOfInstances=_I, seriesUrl=_S),
    "StudyList": _obj(studies={"type": "array", "items": {"$ref": "#/components/schemas/Study"}},
                      total=_I, limit=_I, offset=_I),
    "SeriesList": _obj(studyUid=_S, series={"type": "array", "items": _obj(
        seriesUid=_S, seriesNumber=_NI, seriesDescription=_NS, modality=_NS, imageCount=_I,
        firstImageUrl=_NS, thumbnailUrl=_NS)}),
    "ImagePage": _obj(images={"type": "array", "items": _obj(
        imageNumber=_I, instanceUid=_S, frameNumber=_I, imageUrl=_S)}, totalImages=_I, hasMore=_B),
    "ImageIds": _obj(imageIds={"type": "array", "items": _S}, total=_I),
    "Instance": _obj(instanceUid=_S, sopClassUid=_S, studyUid=_S, seriesUid=_S, instanceNumber=_NI,
                     rows=_NI, columns=_NI, samplesPerPixel=_I, photometricInterpretation=_NS,
                     bitsAllocated=_NI, bitsStored=_NI, pixelRepresentation=_I, rescaleSlope=_N,
                     rescaleIntercept=_N, windowCenter={"type": "array", "items": _N},
                     windowWidth={"type": "array", "items": _N},
                     pixelSpacing={"type": "array", "items": _N}, numberOfFrames=_I,
                     transferSyntaxUid=_S, frameUrls={"type": "array", "items": _S}),
    "Health": _obj(status=_S, checks={"type": "object", "additionalProperties": _S}),
    "AdminStats": _obj(patients=_I, studies=_I, series=_I, instances=_I, bytes=_I, diskTotalBytes=_I,
                       diskFreeBytes=_I),
    "User": _obj(username=_S, role={"type": "string", "enum": ["admin", "viewer", "uploader"]},
                 disabled=_B, createdAt=_S),
    "NewUser": {**_obj(username=_S, password=_S, role=_S), "required": ["username", "password", "role"]},
    "UserChange": _obj(role=_S, disabled=_B),
    "Deleted": _obj(studyUid=_S, seriesUids={"type": "array", "items": _S}, instances=_I, bytes=_I,
                    studyRemoved=_B, patientRemoved=_B, filesRemoved=_I),
}


def _post(summary: str, body: str) -> dict[str, Any]:
    return {"post": {"summary": summary, "security": [],
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": f"#/components/schemas/{body}"}}}},
                     "responses": {"200": _json("TokenPair"), "400": _PROBLEM, "401": _PROBLEM,
                                   "413": _PROBLEM, "429": _PROBLEM}}}


def _admin(method: str, summary: str, ok: dict[str, Any], *params: dict[str, Any],
           body: str | None = None, status: str = "200") -> dict[str, Any]:
    """An admin-only operation (403 for the other roles)."""
    op: dict[str, Any] = {"summary": summary, "parameters": list(params), "responses": {
        status: ok, **{code: _PROBLEM for code in ("400", "401", "403", "404", "409", "429")}}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
    return {method: op}


def build_document() -> dict[str, Any]:
    study, series = _path("study_uid", "Study Instance UID"), _path("series_uid", "Series Instance UID")
    sop = _path("sop_uid", "SOP Instance UID")
    frame = _path("frame", "frame number, from 1", {"type": "integer", "minimum": 1})
    filters = [_query(k, f"DICOM matching on {k} (PS3.4 C.2.2.2)", _S) for k in (
        "PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
        "ModalitiesInStudy", "StudyInstanceUID", "ReferringPhysicianName")]
    paths = {
        "/healthz": _get("Catalogue, storage and DIMSE listener status (503 when unhealthy)",
                         _json("Health"), public=True),
        "/metrics": _get("Prometheus metrics", {"description": "OK", "content": {"text/plain": {}}},
                         public=True),
        "/api/token/": _post("Log in: an access and a refresh token", "Credentials"),
        "/api/token/refresh/": _post("Rotate a refresh token (reuse revokes its family)", "Refresh"),
        "/api/openapi.json": _get("This document", _json({"type": "object"})),
        "/api/pacs/studies/": _get(
            "Studies matching DICOM keys (the same translator as C-FIND)", _json("StudyList"), *filters,
            _query("limit", "page size", {"type": "integer", "minimum": 1}),
            _query("offset", "results to skip", {"type": "integer", "minimum": 0})),
        "/api/pacs/studies/{study_uid}/series/": _get(
            "The study's series with first image and thumbnail URLs", _json("SeriesList"), study),
        "/api/pacs/studies/{study_uid}/series/{series_uid}/images/bulk": _get(
            "A page of the series' frames in viewing order", _json("ImagePage"), study, series,
            _query("start", "first frame, from 0", {"type": "integer", "minimum": 0}),
            _query("count", "frames in the page (capped)", {"type": "integer", "minimum": 1})),
        "/api/pacs/studies/{study_uid}/image-ids/": _get(
            "Every frame URL of the study", _json("ImageIds"), study),
        "/api/pacs/instances/{sop_uid}/": _get(
            "What client-side rendering needs", _json("Instance"), sop),
        "/api/pacs/instances/{sop_uid}/frames/{frame}": _get(
            "Frame bytes as stored (media type carries the transfer syntax)",
            _binary("application/octet-stream", "image/jpeg", "image/jls", "image/jp2",
                    "image/dicom-rle"), sop, frame,
            _query("decode", "1: decode to little endian pixels", {"type": "integer", "enum": [0, 1]}),
            cached=True),
        "/api/pacs/instances/{sop_uid}/frames/{frame}/rendered": _get(
            "The frame windowed and encoded as PNG or JPEG", _binary("image/png", "image/jpeg"), sop, frame,
            _query("window", "center,width", _S),
            _query("format", "png or jpeg", {"type": "string", "enum": ["png", "jpeg"]}),
            _query("quality", "JPEG quality", {"type": "integer", "minimum": 1, "maximum": 100}),
            _query("size", "longest side in pixels", {"type": "integer", "minimum": 1}), cached=True),
        "/api/pacs/instances/{sop_uid}/thumbnail": _get(
            "Small JPEG of the middle frame, cached on disk", _binary("image/jpeg"), sop, cached=True),
        "/api/pacs/instances/{sop_uid}/file": _get(
            "The stored Part 10 file", _binary("application/dicom"), sop, cached=True),
        "/api/admin/stats": _admin("get", "Catalogue and storage figures (as `node stats`)",
                                   _json("AdminStats")),
        "/api/admin/users/": {
            **_admin("get", "Every user", _json(_obj(users={"type": "array", "items": {
                "$ref": "#/components/schemas/User"}}))),
            **_admin("post", "Add a user", _json("User", "Created"), body="NewUser", status="201")},
        "/api/admin/users/{username}": _admin(
            "patch", "Change a user's role, disable or enable it", _json("User"),
            _path("username", "user name", _S), body="UserChange"),
        "/api/pacs/studies/{study_uid}/": _admin(
            "delete", "Delete a study: rows (audited), then files", _json("Deleted"), study),
        "/api/pacs/studies/{study_uid}/series/{series_uid}/": _admin(
            "delete", "Delete a series (its study too when it was the last)", _json("Deleted"),
            study, series),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "PACSNODE HTTP API", "version": "1"},
        "paths": {**paths, **uploads_openapi.paths()},
        "components": {"schemas": {**SCHEMAS, **uploads_openapi.SCHEMAS}, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "security": [{"bearer": []}],
    }


@requires(["authenticated"])
async def openapi_document(request: Request) -> JSONResponse:
    document = build_document()
    # DICOMweb is specified by PS3.18, not here: its mount, whose GET {root}/ lists its resources
    root = request.app.state.ctx.settings.dicomweb.root.rstrip("/")
    document["paths"][root] = _get("DICOMweb (PS3.18: QIDO-RS, WADO-RS, STOW-RS, WADO-URI); "
                                   f"GET {root}/ describes what is served", _json({"type": "object"}),
                                   public=True)
    return JSONResponse(document)
