"""DICOMweb problems: ``web.errors.Problem`` subclasses, so the app's one handler renders them
as problem+json (RFC 9457) with the status PS3.18 asks for.

    Problem (web.errors)
    ├── BadRequest, NotFound, Forbidden, PayloadTooLarge, UnsupportedMedia   (web.errors)
    ├── MissingToken     401  no bearer token and anonymous reads are off (PS3.18 8.5)
    ├── NotAcceptable    406  nothing the Accept header allows can be produced (PS3.18 8.7.3)
    └── Conflict         409  a STOW-RS request of which no instance was stored (PS3.18 10.5.3)
"""

from __future__ import annotations

from web.errors import Problem


class MissingToken(Problem):
    status, title = 401, "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class NotAcceptable(Problem):
    status, title = 406, "Not Acceptable"


class Conflict(Problem):
    status, title = 409, "Conflict"
