"""HTTP API authentication: logins, access token checks, refresh rotation, throttling."""

from __future__ import annotations

import os
import stat
import time

import jwt
import pytest

from db import accounts
from db.models import database
from node.config import AuthSettings
from node.errors import ConfigError
from node.tokens import TokenService, load_or_create_secret
from tests.web_support import PASSWORD, web  # noqa: F401 - fixture

LISTING = "/api/pacs/studies/"


def _claims(settings, **overrides):
    now = int(time.time())
    claims = {"iss": settings.auth.issuer, "aud": settings.auth.audience, "sub": "reader",
              "role": "viewer", "iat": now, "exp": now + 60, "jti": "x", "typ": "access"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_401(response, reason_part: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized"
    assert reason_part in body["detail"]


def test_login_gives_a_pair_that_opens_the_api(web):
    web.add_user("reader")
    pair = web.login("reader")
    assert set(pair) >= {"access", "refresh"} and pair["tokenType"] == "Bearer"
    assert pair["expiresIn"] == 15 * 60
    claims = jwt.decode(pair["access"], options={"verify_signature": False})
    assert {"sub", "role", "exp", "iat", "jti", "iss", "aud"} <= set(claims)
    assert jwt.get_unverified_header(pair["access"])["alg"] == "HS256"
    response = web.client.get(LISTING, headers=_bearer(pair["access"]))
    assert response.status_code == 200
    assert response.json()["studies"] == []


def test_no_token_is_401_with_a_bearer_challenge(web):
    _assert_401(web.client.get(LISTING), "Bearer")


def test_a_scheme_other_than_bearer_is_401(web):
    _assert_401(web.client.get(LISTING, headers={"Authorization": "Basic cmVhZGVyOng="}), "Bearer")


def test_alg_none_is_401(web):
    token = jwt.encode(_claims(web.settings), key=None, algorithm="none")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "algorithm")


def test_another_hmac_algorithm_is_401(web):
    secret = load_or_create_secret(web.settings)
    token = jwt.encode(_claims(web.settings), secret, algorithm="HS512")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "algorithm")


def test_wrong_signature_is_401(web):
    token = jwt.encode(_claims(web.settings), "another secret of at least 32 bytes!!", algorithm="HS256")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "signature")


def test_wrong_audience_is_401(web):
    secret = load_or_create_secret(web.settings)
    token = jwt.encode(_claims(web.settings, aud="someone-else"), secret, algorithm="HS256")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "audience")


def test_wrong_issuer_is_401(web):
    secret = load_or_create_secret(web.settings)
    token = jwt.encode(_claims(web.settings, iss="elsewhere"), secret, algorithm="HS256")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "issued")


def test_expired_token_is_401(web):
    secret = load_or_create_secret(web.settings)
    past = int(time.time()) - 3600
    token = jwt.encode(_claims(web.settings, iat=past, exp=past + 60), secret, algorithm="HS256")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "expired")


def test_a_token_accepted_before_is_refused_once_it_expires(web):
    """Verified tokens are remembered; their expiry is still checked on every request."""
    service = TokenService(web.settings.auth, load_or_create_secret(web.settings),
                           clock=lambda: time.time() - 15 * 60 + 1.5)
    token = service.issue_access("reader", "viewer")  # expires 1.5 s from now (to the second)
    assert web.client.get(LISTING, headers=_bearer(token)).status_code == 200
    assert web.client.get(LISTING, headers=_bearer(token)).status_code == 200
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "expired")


def test_token_without_expiry_is_401(web):
    secret = load_or_create_secret(web.settings)
    token = jwt.encode(_claims(web.settings, exp=None), secret, algorithm="HS256")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "exp")


def test_garbage_token_is_401(web):
    _assert_401(web.client.get(LISTING, headers=_bearer("not.a.jwt")), "malformed")


def test_a_token_issued_by_the_service_in_the_past_expires(web):
    service = TokenService(web.settings.auth, load_or_create_secret(web.settings),
                           clock=lambda: time.time() - 16 * 60)
    token = service.issue_access("reader", "viewer")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "expired")


def test_wrong_password_and_unknown_user_answer_alike(web):
    web.add_user("reader")
    wrong = web.client.post("/api/token/", json={"username": "reader", "password": "wrong password"})
    unknown = web.client.post("/api/token/", json={"username": "nobody", "password": "wrong password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]


def test_refresh_rotates_and_reuse_revokes_the_family(web):
    web.add_user("reader")
    first = web.login("reader")
    second = web.client.post("/api/token/refresh/", json={"refresh": first["refresh"]})
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh"] != first["refresh"]
    assert web.client.get(LISTING, headers=_bearer(second["access"])).status_code == 200
    # the retired token comes back: someone copied it; the whole family dies
    reuse = web.client.post("/api/token/refresh/", json={"refresh": first["refresh"]})
    _assert_401(reuse, "used before")
    revoked = web.client.post("/api/token/refresh/", json={"refresh": second["refresh"]})
    _assert_401(revoked, "revoked")
    # another login's family is untouched
    other = web.login("reader")
    assert web.client.post("/api/token/refresh/", json={"refresh": other["refresh"]}).status_code == 200


def test_unknown_refresh_token_is_401(web):
    _assert_401(web.client.post("/api/token/refresh/", json={"refresh": "made-up"}), "unknown")


def test_expired_refresh_token_is_401(web):
    web.add_user("reader")
    service = TokenService(web.settings.auth, load_or_create_secret(web.settings),
                           clock=lambda: time.time() - 8 * 86400)
    old = service.login("reader", PASSWORD)
    _assert_401(web.client.post("/api/token/refresh/", json={"refresh": old.refresh}), "expired")


def test_disabled_user_can_neither_log_in_nor_refresh(web):
    web.add_user("reader")
    pair = web.login("reader")
    with database.connection_context():
        accounts.disable_user("reader")
    response = web.client.post("/api/token/", json={"username": "reader", "password": PASSWORD})
    _assert_401(response, "disabled")
    _assert_401(web.client.post("/api/token/refresh/", json={"refresh": pair["refresh"]}), "revoked")


def test_token_endpoints_ignore_a_stale_authorization_header(web):
    web.add_user("reader")
    pair = web.login("reader")
    response = web.client.post("/api/token/refresh/", json={"refresh": pair["refresh"]},
                               headers=_bearer("expired.or.garbage"))
    assert response.status_code == 200


def test_repeated_failed_logins_get_429_until_the_window_passes(web):
    web.add_user("reader")
    limit = web.settings.auth.max_failed_logins
    for _ in range(limit):
        bad = web.client.post("/api/token/", json={"username": "reader", "password": "wrong guess"})
        assert bad.status_code == 401
    blocked = web.client.post("/api/token/", json={"username": "reader", "password": PASSWORD})
    assert blocked.status_code == 429
    assert blocked.headers["content-type"] == "application/problem+json"
    retry_after = int(blocked.headers["retry-after"])
    assert 0 < retry_after <= web.settings.auth.failed_login_window_seconds
    web.clock.advance(retry_after)
    assert web.client.post("/api/token/", json={"username": "reader", "password": PASSWORD}).status_code == 200


def test_failed_logins_from_one_address_are_throttled_across_user_names(web):
    limit = web.settings.auth.max_failed_logins
    for i in range(limit):
        web.client.post("/api/token/", json={"username": f"guess{i}", "password": "wrong guess"})
    response = web.client.post("/api/token/", json={"username": "another", "password": "wrong guess"})
    assert response.status_code == 429 and "retry-after" in response.headers


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"username": "x"}', b'{"username": 1, "password": "p"}'])
def test_malformed_login_bodies_are_400(web, body):
    response = web.client.post("/api/token/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_oversized_bodies_are_413(web):
    body = b'{"username": "' + b"x" * (web.settings.web.max_body_bytes + 10) + b'", "password": "p"}'
    response = web.client.post("/api/token/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_uploader_may_not_read(web):
    response = web.get(LISTING, user="sender", headers=web.headers("sender", role="uploader"))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


def test_unknown_route_is_a_problem(web):
    response = web.client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json()["status"] == 404


def test_secret_is_generated_once_with_mode_0600(make_settings):
    settings = make_settings()
    first = load_or_create_secret(settings)
    path = settings.data_dir / "jwt-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(settings) == first and len(first) >= 32


def test_a_secret_readable_by_others_is_refused(make_settings):
    settings = make_settings()
    load_or_create_secret(settings)
    os.chmod(settings.data_dir / "jwt-secret", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_secret(settings)


def test_a_configured_secret_is_used_as_is(make_settings):
    settings = make_settings(auth={"secret": "s" * 40})
    assert load_or_create_secret(settings) == b"s" * 40
    assert not (settings.data_dir / "jwt-secret").exists()


def test_short_configured_secrets_and_bad_limits_stop_start_up(make_settings):
    with pytest.raises(ConfigError, match="auth.secret"):
        make_settings(auth={"secret": "short"})
    with pytest.raises(ConfigError, match="web.burst"):
        make_settings(web={"burst": 0})
    with pytest.raises(ConfigError, match="auth.access_token_minutes"):
        make_settings(auth={"access_token_minutes": "15"})


def test_token_service_refuses_a_refresh_token_as_access_token(web):
    service = TokenService(AuthSettings(), load_or_create_secret(web.settings))
    secret = load_or_create_secret(web.settings)
    token = jwt.encode(_claims(web.settings, typ="refresh"), secret, algorithm="HS256")
    _assert_401(web.client.get(LISTING, headers=_bearer(token)), "not an access token")
    assert service.issue_access("a", "viewer")
