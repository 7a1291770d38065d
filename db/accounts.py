"""Users, refresh tokens and the access audit log in the catalogue.

Callers open the connection (``database.connection_context()``) in the thread that asks;
nothing here knows about HTTP or JWT (shared/STYLE.md, 1).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterator

from peewee import IntegrityError

from db.models import AuditEntry, RefreshToken, User, database
from db.roles import ROLES


class AccountError(Exception):
    """A user cannot be created or changed as asked."""


class UnknownUser(AccountError):
    """No user has that name."""


class UserExists(AccountError):
    """The name is taken."""


class LastAdmin(AccountError):
    """The change would leave no active admin to manage users over HTTP."""


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    role: str
    disabled: bool
    password_hash: str
    created_at: dt.datetime


@dataclass(frozen=True)
class StoredRefresh:
    """A refresh token's row: its family, owner and state."""

    id: int
    family: str
    user_id: int
    expires_at: dt.datetime
    used: bool
    revoked: bool


def utcnow() -> dt.datetime:
    """Naive UTC, as the catalogue stores every timestamp."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def create_user(username: str, password_hash: str, role: str) -> Account:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    try:
        with database.atomic():
            user = User.create(username=username, password_hash=password_hash, role=role,
                               disabled=0, created_at=utcnow())
    except IntegrityError:
        raise UserExists(f"user {username!r} exists already") from None
    return _account(user)


def find_user(username: str) -> Account | None:
    user = User.get_or_none(User.username == username)
    return _account(user) if user else None


def user_by_id(user_id: int) -> Account | None:
    user = User.get_or_none(User.id == user_id)
    return _account(user) if user else None


def list_users() -> list[Account]:
    return [_account(u) for u in User.select().order_by(User.username)]


def disable_user(username: str) -> None:
    """Disable the user and revoke every refresh token it holds."""
    with database.atomic():
        user = User.get_or_none(User.username == username)
        if user is None:
            raise UnknownUser(f"no user named {username!r}")
        User.update(disabled=1).where(User.id == user.id).execute()
        (RefreshToken.update(revoked_at=utcnow())
         .where((RefreshToken.user == user.id) & RefreshToken.revoked_at.is_null()).execute())


def change_role(username: str, role: str) -> Account:
    """Give the user another role; it takes effect at the user's next token refresh."""
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    with database.atomic():
        if User.update(role=role).where(User.username == username).execute() != 1:
            raise UnknownUser(f"no user named {username!r}")
    return _account(User.get(User.username == username))


def enable_user(username: str) -> Account:
    """Allow the user's logins again (its revoked refresh tokens stay revoked)."""
    if User.update(disabled=0).where(User.username == username).execute() != 1:
        raise UnknownUser(f"no user named {username!r}")
    return _account(User.get(User.username == username))


def ensure_another_admin(username: str) -> None:
    """Refuse (LastAdmin) when ``username`` is the only active admin: disabling or demoting it
    would leave nobody able to manage users except from the command line."""
    others = (User.select().where((User.role == "admin") & (User.disabled == 0)
                                  & (User.username != username)).exists())
    if not others:
        raise LastAdmin(f"{username!r} is the only active admin; make another user admin first")


def store_refresh(token_hash: str, family: str, user_id: int, expires_at: dt.datetime) -> None:
    RefreshToken.create(token_hash=token_hash, family=family, user=user_id, issued_at=utcnow(),
                        expires_at=expires_at)


def find_refresh(token_hash: str) -> StoredRefresh | None:
    row = RefreshToken.get_or_none(RefreshToken.token_hash == token_hash)
    if row is None:
        return None
    return StoredRefresh(row.id, row.family, row.user_id, row.expires_at,
                         used=row.used_at is not None, revoked=row.revoked_at is not None)


def retire_refresh(token_id: int) -> bool:
    """Mark a refresh token used; False when another request retired it first (a reuse)."""
    updated = (RefreshToken.update(used_at=utcnow())
               .where((RefreshToken.id == token_id) & RefreshToken.used_at.is_null()
                      & RefreshToken.revoked_at.is_null())
               .execute())
    return updated == 1


def revoke_family(family: str) -> int:
    """Revoke every token of one login's chain; returns how many were still live."""
    return (RefreshToken.update(revoked_at=utcnow())
            .where((RefreshToken.family == family) & RefreshToken.revoked_at.is_null())
            .execute())


def record_access(username: str, study_uid: str, action: str, address: str | None) -> None:
    AuditEntry.insert(at=utcnow(), username=username, study_uid=study_uid, action=action,
                      address=(address or "")[:64] or None).execute()


def iter_audit(study_uid: str | None = None) -> Iterator[AuditEntry]:
    query = AuditEntry.select().order_by(AuditEntry.id)
    if study_uid is not None:
        query = query.where(AuditEntry.study_uid == study_uid)
    yield from query.iterator()


def _account(user: User) -> Account:
    return Account(user.id, user.username, user.role, bool(user.disabled), user.password_hash,
                   user.created_at)
