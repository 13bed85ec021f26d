"""Bearer tokens: the algorithm is pinned by settings, every failure is a 401 saying why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from orion_streams.config import Settings
from orion_streams.web.auth import Principal, TokenVerifier, issue_token
from orion_streams.web.problems import ApiError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"
OTHER_SECRET = "another-unit-test-secret-long-enough-for-hs256"
HS = Settings(jwt_secret=SECRET)


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "user-1", "roles": ["customer"], "exp": int(time.time()) + 300}
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def hs_token(secret: str = SECRET, **changes: Any) -> str:
    return jwt.encode(claims(**changes), secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


def refused(verifier: TokenVerifier, token: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        verifier.verify(token)
    assert info.value.status == 401
    assert info.value.headers.get("WWW-Authenticate", "").startswith("Bearer")
    return info.value


@pytest.fixture(scope="module")
def rsa_pem() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


# --- HS256 ---------------------------------------------------------------------------


def test_valid_token_gives_a_principal_with_roles() -> None:
    principal = TokenVerifier(HS).verify(hs_token(roles=["customer", "admin"]))
    assert principal == Principal("user-1", frozenset({"customer", "admin"}))
    assert principal.is_admin


def test_issued_token_verifies() -> None:
    principal = TokenVerifier(HS).verify(issue_token(HS, "svc-1", ["service"]))
    assert principal.subject == "svc-1" and principal.roles == {"service"}
    assert principal.actor == "service:svc-1"


def test_unknown_roles_are_dropped() -> None:
    principal = TokenVerifier(HS).verify(hs_token(roles=["customer", "root", "ADMIN", "admin"]))
    assert principal.roles == frozenset({"customer", "admin"})


def test_token_without_roles_has_none() -> None:
    assert TokenVerifier(HS).verify(hs_token(roles=None)).roles == frozenset()


@pytest.mark.parametrize("roles", ["admin", [1], {"admin": True}])
def test_roles_that_are_not_a_list_of_strings_are_refused(roles: Any) -> None:
    assert (
        "'roles' must be a list of strings"
        in refused(TokenVerifier(HS), hs_token(roles=roles)).detail
    )


def test_expired_token_is_refused() -> None:
    err = refused(TokenVerifier(HS), hs_token(exp=int(time.time()) - 60))
    assert err.detail == "token has expired"


def test_expiry_within_leeway_is_accepted() -> None:
    assert (
        TokenVerifier(HS, leeway=5).verify(hs_token(exp=int(time.time()) - 1)).subject == "user-1"
    )


@pytest.mark.parametrize("claim", ["exp", "sub"])
def test_missing_required_claim_is_refused(claim: str) -> None:
    err = refused(TokenVerifier(HS), hs_token(**{claim: None}))
    assert err.detail == f"token is missing the '{claim}' claim"


@pytest.mark.parametrize("sub", ["", "x" * 201, 42])
def test_bad_subject_is_refused(sub: Any) -> None:
    err = refused(TokenVerifier(HS), hs_token(sub=sub))
    assert "sub" in err.detail.lower()


def test_token_signed_with_another_secret_is_refused() -> None:
    err = refused(TokenVerifier(HS), hs_token(secret=OTHER_SECRET))
    assert err.detail == "token signature is invalid"


def test_tampered_payload_is_refused() -> None:
    header, _, signature = hs_token().split(".")
    forged = b64(json.dumps(claims(roles=["admin"])).encode())
    err = refused(TokenVerifier(HS), f"{header}.{forged}.{signature}")
    assert err.detail == "token signature is invalid"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_token_is_refused(alg: str) -> None:
    token = unsigned({"alg": alg, "typ": "JWT"}, claims(roles=["admin"])) + "."
    assert refused(TokenVerifier(HS), token).detail == "token must be signed with HS256"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b"])
def test_garbage_token_is_refused(token: str) -> None:
    assert refused(TokenVerifier(HS), token).detail.startswith("token is invalid")


# --- issuer and audience -------------------------------------------------------------

SCOPED = Settings(jwt_secret=SECRET, jwt_issuer="https://id.orion", jwt_audience="orion-api")


def test_matching_issuer_and_audience_are_accepted() -> None:
    token = hs_token(iss="https://id.orion", aud="orion-api")
    assert TokenVerifier(SCOPED).verify(token).subject == "user-1"
    assert TokenVerifier(SCOPED).verify(issue_token(SCOPED, "user-2")).subject == "user-2"


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"iss": "https://evil", "aud": "orion-api"}, "issuer"),
        ({"aud": "orion-api"}, "'iss'"),
        ({"iss": "https://id.orion", "aud": "someone-else"}, "audience"),
        ({"iss": "https://id.orion"}, "'aud'"),
    ],
)
def test_wrong_or_missing_issuer_or_audience_is_refused(
    changes: dict[str, Any], detail: str
) -> None:
    err = refused(TokenVerifier(SCOPED), hs_token(**changes))
    assert detail in err.detail.lower()


# --- RS256 ---------------------------------------------------------------------------


def test_rs256_without_public_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="PUBLIC_KEY"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithm="RS256"))


def test_rs256_signed_token_verifies(rsa_pem: tuple[str, str]) -> None:
    private, public = rsa_pem
    settings = Settings(jwt_secret=SECRET, jwt_algorithm="RS256", jwt_public_key=public)
    token = jwt.encode(claims(roles=["admin"]), private, algorithm="RS256")
    assert TokenVerifier(settings).verify(token) == Principal("user-1", frozenset({"admin"}))
    issued = issue_token(settings, "user-3", private_key=private)
    assert TokenVerifier(settings).verify(issued).subject == "user-3"


def test_hs256_token_is_refused_when_rs256_is_configured(rsa_pem: tuple[str, str]) -> None:
    _, public = rsa_pem
    verifier = TokenVerifier(
        Settings(jwt_secret=SECRET, jwt_algorithm="RS256", jwt_public_key=public)
    )
    assert refused(verifier, hs_token()).detail == "token must be signed with RS256"
    # Key confusion: an HMAC over the token made with the public key as the secret.
    signing_input = unsigned({"alg": "HS256", "typ": "JWT"}, claims(roles=["admin"]))
    mac = hmac.new(public.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert (
        refused(verifier, f"{signing_input}.{b64(mac)}").detail == "token must be signed with RS256"
    )


def test_rs256_token_signed_by_another_key_is_refused(rsa_pem: tuple[str, str]) -> None:
    _, public = rsa_pem
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = TokenVerifier(
        Settings(jwt_secret=SECRET, jwt_algorithm="RS256", jwt_public_key=public)
    )
    token = jwt.encode(claims(), other, algorithm="RS256")
    assert refused(verifier, token).detail == "token signature is invalid"


# --- the Authorization header --------------------------------------------------------


def test_bearer_header_is_accepted_in_any_case() -> None:
    verifier = TokenVerifier(HS)
    assert verifier.authenticate(f"Bearer {hs_token()}").subject == "user-1"
    assert verifier.authenticate(f"bearer  {hs_token()} ").subject == "user-1"


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "missing Authorization: Bearer <token>"),
        ("", "missing Authorization: Bearer <token>"),
        ("Bearer", "Authorization must be 'Bearer <token>'"),
        ("Bearer    ", "Authorization must be 'Bearer <token>'"),
        ("Basic dXNlcjpwYXNz", "Authorization must be 'Bearer <token>'"),
        ("Token abc", "Authorization must be 'Bearer <token>'"),
    ],
)
def test_header_without_a_bearer_token_is_refused(header: str | None, detail: str) -> None:
    with pytest.raises(ApiError) as info:
        TokenVerifier(HS).authenticate(header)
    assert (info.value.status, info.value.detail) == (401, detail)


def test_raw_token_without_scheme_is_refused() -> None:
    with pytest.raises(ApiError) as info:
        TokenVerifier(HS).authenticate(hs_token())
    assert info.value.status == 401


# --- roles ---------------------------------------------------------------------------


def test_require_passes_with_any_listed_role() -> None:
    Principal("u", frozenset({"customer"})).require("admin", "customer")


def test_require_without_the_role_is_forbidden() -> None:
    with pytest.raises(ApiError) as info:
        Principal("u", frozenset({"customer"})).require("admin", "service")
    assert info.value.status == 403
    assert info.value.detail == "this needs one of the roles: admin, service"


def test_actor_names_users_and_services() -> None:
    assert Principal("u", frozenset({"customer"})).actor == "user:u"
    assert Principal("s", frozenset({"service"})).actor == "service:s"
    assert Principal("a", frozenset({"service", "admin"})).actor == "user:a"
