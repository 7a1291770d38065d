"""The upload-session routes in the OpenAPI document (``web.openapi`` merges these in)."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"description": "Problem details (RFC 9457)",
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_S, _I = {"type": "string"}, {"type": "integer"}
_NS, _NI = {"type": ["string", "null"]}, {"type": ["integer", "null"]}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "description": "the session's UUID",
               "schema": {"type": "string", "format": "uuid"}}
_TUS = {"name": "Tus-Resumable", "in": "header", "required": True, "schema": {"type": "string", "enum": ["1.0.0"]}}

SCHEMAS: dict[str, Any] = {
    "NewUploadSession": {"type": "object", "required": ["fileName", "size", "sha256"], "properties": {
        "fileName": _S, "size": {"type": "integer", "minimum": 1},
        "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}, "contentType": _S, "orderId": _S,
        "metadata": {"type": "object"}}},
    "UploadSession": {"type": "object", "properties": {
        "sessionId": _S, "owner": _S, "fileName": _S, "size": _I, "sha256": _S, "contentType": _S,
        "orderId": _NS, "metadata": {"type": ["object", "null"]},
        "status": {"type": "string", "enum": ["QUEUED", "METADATA_UPLOADED", "BINARY_UPLOADING", "SYNCED",
                                              "ACK_RECEIVED", "FAILED", "EXPIRED"]},
        "uploadOffset": _I, "uploadUrl": _S, "serverImageId": _NS,
        "errorCode": {"type": ["string", "null"], "enum": ["CHECKSUM_MISMATCH", "INVALID_DICOM",
                                                            "DUPLICATE_INSTANCE", None]},
        "errorMessage": _NS, "retryCount": _I, "createdAt": _S, "updatedAt": _S, "expiresAt": _NS}},
    "UploadSessionList": {"type": "object", "properties": {
        "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/UploadSession"}},
        "limit": _I, "offset": _I}},
    "UploadEvents": {"type": "object", "properties": {"events": {"type": "array", "items": {
        "type": "object", "properties": {"at": _S, "user": _S, "from": _NS, "to": _S, "detail": _NS}}}}},
}


def _json(name: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _op(summary: str, ok: dict[str, Any], *params: dict[str, Any], body: dict[str, Any] | None = None,
        status: str = "200", errors: tuple[str, ...] = ("401", "403", "404", "409", "429")) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": list(params),
                          "responses": {status: ok, **{code: _PROBLEM for code in errors}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def paths() -> dict[str, Any]:
    one = "/api/upload-sessions/{session_id}"
    session = _op("The session", _json("UploadSession"), _SESSION_ID)
    tus_headers = {"description": "Upload-Offset, Upload-Length, Upload-Expires, Upload-Session-Status, "
                                  "Upload-Server-Image-Id, Tus-Resumable"}
    return {
        "/api/upload-sessions/": {
            "post": _op("Create a session (201), or the caller's existing one for this SHA-256 and order (200)",
                        _json("UploadSession", "Created"), body={"$ref": "#/components/schemas/NewUploadSession"},
                        status="201", errors=("200", "400", "401", "403", "409", "413", "429")),
            "get": _op("The caller's sessions (an admin's: everyone's), newest first", _json("UploadSessionList"),
                       {"name": "status", "in": "query", "schema": _S,
                        "description": "pending, failed, synced, or a status name; comma-separated"},
                       {"name": "orderId", "in": "query", "schema": _S},
                       {"name": "limit", "in": "query", "schema": _I},
                       {"name": "offset", "in": "query", "schema": _I})},
        one: {"get": session},
        one + "/": {"get": session},
        one + "/metadata": {"put": _op("Store the metadata before any byte (METADATA_UPLOADED)",
                                       _json("UploadSession"), _SESSION_ID, body={"type": "object"})},
        one + "/acknowledge": {"post": _op("SYNCED -> ACK_RECEIVED: the client may delete its copy",
                                           _json("UploadSession"), _SESSION_ID,
                                           body={"type": "object", "properties": {"serverImageId": _S}})},
        one + "/retry": {"post": _op("Retry a FAILED session (uploads.max_retries)", _json("UploadSession"),
                                     _SESSION_ID)},
        one + "/events": {"get": _op("Every transition of the session", _json("UploadEvents"), _SESSION_ID)},
        one + "/binary": {
            "options": _op("tus 1.0.0 capabilities: Tus-Version, Tus-Extension, Tus-Max-Size, "
                           "Tus-Checksum-Algorithm", {"description": "No Content"}, _SESSION_ID, status="204"),
            "head": _op("The offset to resume from", {"description": "Upload-Offset, Upload-Length, "
                                                                     "Upload-Expires; Cache-Control: no-store"},
                        _SESSION_ID, _TUS, errors=("401", "404", "410", "412")),
            "patch": {**_op("Append a chunk at Upload-Offset (application/offset+octet-stream, optional "
                            "Upload-Checksum); the last one is verified and stored", tus_headers,
                            _SESSION_ID, _TUS, status="204",
                            errors=("400", "401", "404", "409", "410", "412", "413", "415", "460", "503", "507")),
                      "requestBody": {"required": True, "content": {"application/offset+octet-stream": {
                          "schema": {"type": "string", "format": "binary"}}}}}},
    }
