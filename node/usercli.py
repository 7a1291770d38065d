"""``python -m node user add|list|disable|role``: the people and programs allowed into the HTTP API.

Passwords come from a prompt (asked twice) or, when stdin is not a terminal, from its first
line, so scripts can pipe them in without putting them on the command line.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from typing import Callable

from node.config import Settings

_NAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def valid_username(name: str) -> bool:
    """1-64 letters, digits or ``. _ @ -``: safe in URLs, logs and the audit trail."""
    return _NAME_RE.fullmatch(name) is not None


def add_commands(sub: argparse._SubParsersAction) -> None:
    from db.roles import ROLES

    user = sub.add_parser("user", help="HTTP API users: add, list, disable, role")
    actions = user.add_subparsers(dest="user_command", required=True)
    add = actions.add_parser("add", help="create a user (password from a prompt or stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.set_defaults(run=_add)
    listing = actions.add_parser("list", help="every user with role and state")
    listing.set_defaults(run=_list)
    disable = actions.add_parser("disable", help="refuse the user's logins and revoke its refresh tokens")
    disable.add_argument("name")
    disable.set_defaults(run=_disable)
    role = actions.add_parser("role", help="give a user another role (effective at its next token refresh)")
    role.add_argument("name")
    role.add_argument("--role", choices=ROLES, required=True)
    role.set_defaults(run=_role)


def _open(settings: Settings):  # noqa: ANN202 - a peewee Database
    from db.catalogue import open_database

    return open_database(settings.database.url, settings.data_dir)


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            print("error: the passwords differ", file=sys.stderr)
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _add(settings: Settings, args: argparse.Namespace) -> int:
    from db.accounts import AccountError, create_user
    from node.passwords import WeakPassword, hash_password

    if not _NAME_RE.fullmatch(args.name):
        print("error: a user name is 1-64 letters, digits or . _ @ -", file=sys.stderr)
        return 2
    password = _read_password()
    if password is None:
        return 1
    try:
        password_hash = hash_password(password)
    except WeakPassword as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _apply(settings, lambda: create_user(args.name, password_hash, args.role), AccountError,
                  f"added {args.name} ({args.role})")


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from db.accounts import list_users
    from db.catalogue import close_database

    db = _open(settings)
    try:
        with db.connection_context():
            users = list_users()
    finally:
        close_database(db)
    for user in users:
        state = "disabled" if user.disabled else "active"
        print(f"{user.username:<24} {user.role:<9} {state:<9} {user.created_at:%Y-%m-%d %H:%M}")
    return 0


def _disable(settings: Settings, args: argparse.Namespace) -> int:
    from db.accounts import UnknownUser, disable_user

    return _apply(settings, lambda: disable_user(args.name), UnknownUser, f"disabled {args.name}")


def _role(settings: Settings, args: argparse.Namespace) -> int:
    from db.accounts import UnknownUser, change_role

    return _apply(settings, lambda: change_role(args.name, args.role), UnknownUser,
                  f"{args.name} is now {args.role}")


def _apply(settings: Settings, change: Callable[[], object], mistakes: type[Exception], done: str) -> int:
    """One account change on the catalogue; ``mistakes`` are the caller's (a line, exit 1)."""
    from db.catalogue import close_database

    db = _open(settings)
    try:
        with db.connection_context():
            change()
    except mistakes as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        close_database(db)
    print(done)
    return 0
