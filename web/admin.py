"""Administration over HTTP (role admin only): catalogue and storage figures, users, and deleting
a study or series.

Deletion commits the catalogue side first (``db.admin``: rows, counts and the audit entry in one
transaction), then removes the files and their cached thumbnails; a crash in between leaves
unreferenced files, never rows without files.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from typing import Any

from starlette.authentication import requires
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from db import accounts
from db import admin as catalogue_admin
from db.catalogue import catalogue_stats
from db.models import database
from node.passwords import WeakPassword, hash_password
from node.storage import Storage
from node.usercli import valid_username
from web.context import WebContext, context_of
from web.errors import BadRequest, Conflict, NotFound
from web.params import client_address, json_object, uid_param
from web.thumbnails import thumbnail_path

log = logging.getLogger(__name__)

ADMIN = ["authenticated", "admin"]


def routes() -> list[Route]:
    study = "/api/pacs/studies/{study_uid}"
    return [
        Route("/api/admin/stats", admin_stats, methods=["GET"]),
        Route("/api/admin/users/", list_users, methods=["GET"]),
        Route("/api/admin/users/", add_user, methods=["POST"]),
        Route("/api/admin/users/{username}", change_user, methods=["PATCH"]),
        Route(f"{study}/", delete_study, methods=["DELETE"]),
        Route(f"{study}/series/{{series_uid}}/", delete_series, methods=["DELETE"]),
    ]


@requires(ADMIN)
def admin_stats(request: Request) -> JSONResponse:
    """The figures of ``python -m node stats``, plus the disk holding data_dir."""
    ctx = context_of(request)
    with database.connection_context():
        stats = asdict(catalogue_stats())
    disk = shutil.disk_usage(ctx.data_dir)
    return JSONResponse({**stats, "diskTotalBytes": disk.total, "diskFreeBytes": disk.free})


@requires(ADMIN)
def list_users(request: Request) -> JSONResponse:
    with database.connection_context():
        users = accounts.list_users()
    return JSONResponse({"users": [_user_json(u) for u in users]})


@requires(ADMIN)
async def add_user(request: Request) -> JSONResponse:
    """``{"username","password","role"}``; 409 when the name is taken."""
    body = await json_object(request)
    username, password, role = (_string(body, key) for key in ("username", "password", "role"))
    if not valid_username(username):
        raise BadRequest("a user name is 1-64 letters, digits or . _ @ -")
    if role not in accounts.ROLES:
        raise BadRequest(f"role must be one of {', '.join(accounts.ROLES)}")
    try:
        password_hash = await run_in_threadpool(hash_password, password)
    except WeakPassword as exc:
        raise BadRequest(str(exc)) from None
    account = await run_in_threadpool(_create_user, username, password_hash, role)
    log.info("user %s (%s) added by %s", username, role, request.user.identity)
    return JSONResponse(_user_json(account), status_code=201)


@requires(ADMIN)
async def change_user(request: Request) -> JSONResponse:
    """``{"role": ...}`` and/or ``{"disabled": true|false}``. Disabling revokes the user's
    refresh tokens; a new role takes effect at its next refresh. The last active admin can be
    neither demoted nor disabled (409)."""
    username = request.path_params["username"]
    body = await json_object(request)
    unknown = set(body) - {"role", "disabled"}
    if unknown or not body:
        raise BadRequest("the body changes 'role' and/or 'disabled', nothing else")
    role = body.get("role")
    if role is not None and role not in accounts.ROLES:
        raise BadRequest(f"role must be one of {', '.join(accounts.ROLES)}")
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise BadRequest("'disabled' must be true or false")
    account = await run_in_threadpool(_change_user, username, role, disabled)
    log.info("user %s changed by %s: %s", username, request.user.identity, body)
    return JSONResponse(_user_json(account))


@requires(ADMIN)
def delete_study(request: Request) -> JSONResponse:
    """The whole study: its rows go in one transaction (audited), then its files."""
    study_uid = uid_param(request, "study_uid")
    return _deleted(request, lambda who, address: catalogue_admin.delete_study(study_uid, who, address))


@requires(ADMIN)
def delete_series(request: Request) -> JSONResponse:
    """One series; the study goes too when it was its last series."""
    study_uid = uid_param(request, "study_uid")
    series_uid = uid_param(request, "series_uid")
    return _deleted(request, lambda who, address: catalogue_admin.delete_series(
        study_uid, series_uid, who, address))


def _deleted(request: Request, delete: Any) -> JSONResponse:
    ctx = context_of(request)
    try:
        deleted = _catalogue_write(ctx, lambda: delete(request.user.identity, client_address(request)))
    except catalogue_admin.NothingToDelete as exc:
        raise NotFound(str(exc)) from None
    with database.connection_context():
        kept = catalogue_admin.still_referenced([f.path for f in deleted.files])
    removed = _remove_files(ctx, [f for f in deleted.files if f.path not in kept])
    log.info("%s deleted study %s series %s: %d instances, %d bytes, %d files removed",
             request.user.identity, deleted.study_uid, ", ".join(deleted.series_uids),
             deleted.instances, deleted.bytes, removed)
    return JSONResponse({"studyUid": deleted.study_uid, "seriesUids": list(deleted.series_uids),
                         "instances": deleted.instances, "bytes": deleted.bytes,
                         "studyRemoved": deleted.study_removed, "patientRemoved": deleted.patient_removed,
                         "filesRemoved": removed})


def _catalogue_write(ctx: WebContext, work: Any) -> Any:
    """Run a deletion in the ingest writer's thread when the node has one: on SQLite a second
    writing connection would make the writer's batches fail ("database is locked"), and the
    writer's remembered series and study rows must be forgotten once rows are gone."""
    writer = getattr(ctx.ingestor, "writer", None)
    if writer is None:
        with database.connection_context():
            return work()

    def in_writer_thread() -> Any:
        try:
            return work()
        finally:
            writer.cache.clear()

    return writer.run(in_writer_thread)


def _remove_files(ctx: WebContext, files: list[catalogue_admin.StoredFile]) -> int:
    """Unlink the stored files and their cached thumbnails; a file already gone is no error."""
    storage = Storage(ctx.data_dir)
    removed = 0
    for stored in files:
        path = storage.absolute(stored.path)
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:  # an unreferenced file left behind is harmless: log it, go on
            log.warning("could not remove %s: %s", path, exc)
        folder = thumbnail_path(ctx.thumbnail_dir, stored.sha256, 0).parent
        for thumb in folder.glob(f"{stored.sha256}-*.jpg"):
            thumb.unlink(missing_ok=True)
    return removed


def _create_user(username: str, password_hash: str, role: str) -> accounts.Account:
    with database.connection_context():
        try:
            return accounts.create_user(username, password_hash, role)
        except accounts.UserExists as exc:
            raise Conflict(str(exc)) from None


def _change_user(username: str, role: str | None, disabled: bool | None) -> accounts.Account:
    with database.connection_context(), database.atomic():
        account = accounts.find_user(username)
        if account is None:
            raise NotFound(f"no user named {username!r}")
        demoted = role is not None and role != "admin" and account.role == "admin"
        if (demoted or (disabled and account.role == "admin")) and not account.disabled:
            try:
                accounts.ensure_another_admin(username)
            except accounts.LastAdmin as exc:
                raise Conflict(str(exc)) from None
        if role is not None and role != account.role:
            account = accounts.change_role(username, role)
        if disabled is True and not account.disabled:
            accounts.disable_user(username)
        elif disabled is False and account.disabled:
            accounts.enable_user(username)
        return accounts.find_user(username) or account


def _user_json(account: accounts.Account) -> dict[str, Any]:
    return {"username": account.username, "role": account.role, "disabled": account.disabled,
            "createdAt": account.created_at.isoformat(timespec="seconds") + "Z"}


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > 1024:
        raise BadRequest(f"{key!r} must be a non-empty string")
    return value.strip() if key != "password" else value
