"""``python -m node user add|list|disable`` and the password hash behind it."""

from __future__ import annotations

import io

import pytest

from db import accounts
from db.catalogue import open_database
from node.cli import main
from node.passwords import WeakPassword, hash_password, verify_password
from tests.helpers import run_cli, write_config


def _run(config, monkeypatch, *args: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["--config", str(config), "user", *args])


def test_password_hash_is_scrypt_salted_and_verifies():
    first, second = hash_password("a long password"), hash_password("a long password")
    assert first.startswith("scrypt$16384$8$1$") and first != second
    assert verify_password("a long password", first)
    assert not verify_password("a long passwore", first)
    assert not verify_password("a long password", "bcrypt$garbage")
    with pytest.raises(WeakPassword):
        hash_password("short")


def test_user_add_list_disable(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    assert _run(config, monkeypatch, "add", "alice", "--role", "viewer", stdin="alice's password\n") == 0
    assert _run(config, monkeypatch, "add", "bob", "--role", "admin", stdin="bob's password\n") == 0
    assert _run(config, monkeypatch, "add", "alice", "--role", "admin", stdin="another password\n") == 1
    assert "exists already" in capsys.readouterr().err
    assert _run(config, monkeypatch, "disable", "alice") == 0
    assert _run(config, monkeypatch, "disable", "nobody") == 1
    capsys.readouterr()
    assert _run(config, monkeypatch, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [["alice", "viewer", "disabled"], ["bob", "admin", "active"]]
    db = open_database("", tmp_path / "data")
    with db.connection_context():
        stored = accounts.find_user("bob")
    db.close()
    assert stored is not None and verify_password("bob's password", stored.password_hash)
    assert "bob's password" not in stored.password_hash


def test_user_add_refuses_bad_names_and_short_passwords(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    assert _run(config, monkeypatch, "add", "bad name", "--role", "viewer", stdin="long enough pw\n") == 2
    assert _run(config, monkeypatch, "add", "carol", "--role", "viewer", stdin="short\n") == 1
    assert "at least 8" in capsys.readouterr().err


def test_user_add_reads_the_password_from_stdin_of_the_real_command(tmp_path):
    config = write_config(tmp_path)
    result = run_cli(config, "user", "add", "dave", "--role", "uploader", input="dave's password\n")
    assert result.returncode == 0, result.stderr
    listed = run_cli(config, "user", "list")
    assert listed.stdout.split()[:3] == ["dave", "uploader", "active"]
