"""Who may use DICOMweb, and the audit trail of what they read.

The same bearer tokens and roles as ``/api/`` (web.security): reading needs the ``read``
scope (viewer, admin), STOW-RS the ``upload`` scope (uploader, admin). Reads without a token
are allowed only with ``[dicomweb] anonymous_read = true``. Checked in each endpoint rather
than with ``@requires`` because the anonymous case depends on the configuration.
"""

from __future__ import annotations

from starlette.requests import Request

from db import accounts
from db.models import database
from web.context import context_of
from web.dicomweb.errors import MissingToken
from web.errors import Forbidden
from web.params import client_address

ANONYMOUS = "anonymous"
_NEEDS_TOKEN = "DICOMweb needs an Authorization: Bearer access token (POST /api/token/ issues one)"


def require_read(request: Request) -> str:
    """The reader's name for the audit log; 401 or 403 when reading is not allowed."""
    if request.user.is_authenticated:
        if "read" not in request.auth.scopes:
            raise Forbidden(f"the role {request.user.role!r} may not read images")
        return request.user.identity
    if context_of(request).settings.dicomweb.anonymous_read:
        return ANONYMOUS
    raise MissingToken(_NEEDS_TOKEN)


def require_upload(request: Request) -> str:
    """The uploader's name; STOW-RS always needs a token with the ``upload`` scope."""
    if not request.user.is_authenticated:
        raise MissingToken(_NEEDS_TOKEN)
    if "upload" not in request.auth.scopes:
        raise Forbidden(f"the role {request.user.role!r} may not store instances")
    return request.user.identity


def audit(request: Request, who: str, study_uids: list[str] | set[str], action: str) -> None:
    """One audit entry per study touched, as the ``/api/`` reads write them."""
    address = client_address(request)
    with database.connection_context():
        for study_uid in sorted(set(study_uids)):
            accounts.record_access(who, study_uid, action, address)
