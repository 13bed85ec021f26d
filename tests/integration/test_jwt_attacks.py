"""Forged and broken bearer tokens against real workers: each is a 401 problem saying why,
and nothing is written for the subject the token claims.

The session worker verifies HS256 with the development secret. A dedicated worker, started for
this module only, verifies RS256 against a JWKS file with two keys and checks issuer and audience.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from orion_streams.adapters.postgres import SqlAlchemyStore

from .harness import Api, Services, Worker, count_rows, running_services

BODY = {"lines": [{"sku": "SKU-001", "quantity": 1}], "payment": {"token": "tok_ok"},
        "email": "mallory@example.com"}
ISSUER = "https://id.orion.test"
AUDIENCE = "orion-api"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(subject: str, **changes: Any) -> dict[str, Any]:
    """Valid claims for `subject` with some changed; a change to None removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": subject, "roles": ["customer"], "iat": now, "exp": now + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def _hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """HMAC-SHA256 over header.payload by hand, whatever the header claims."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _flip_first(segment: str) -> str:
    return ("B" if segment[0] == "A" else "A") + segment[1:]


async def _orders_of(services: Services, user: str) -> int:
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        return await count_rows(store, "orders", user_id=user)
    finally:
        await store.close()


async def _assert_refused(api: Api, services: Services, token: str, detail: str, subject: str) -> None:
    """POST /v1/orders (a valid body) and GET /v1/orders are 401 with `detail`; no rows appear."""
    before = await _orders_of(services, subject)
    for method, body in (("POST", BODY), ("GET", None)):
        status, problem, headers = await api.call(method, "/v1/orders", token, body)
        assert status == 401, (method, problem)
        assert headers["Content-Type"].startswith("application/problem+json"), (method, headers)
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), (method, headers)
        assert problem["status"] == 401 and problem["title"] == "Unauthorized", problem
        assert problem["detail"] == detail, (method, problem)
    # A refused request never reaches Kafka (authentication comes first), so there is nothing
    # in flight that could still write a row later.
    assert await _orders_of(services, subject) == before == 0


# --- the session worker: HS256 with the development secret ----------------------------

Forge = Callable[[bytes, str], str]


def _tampered_payload(secret: bytes, subject: str) -> str:
    header, _, signature = jwt.encode(_claims(subject), secret, algorithm="HS256").split(".")
    forged = _b64(json.dumps(_claims(subject, roles=["admin"])).encode())
    return f"{header}.{forged}.{signature}"


def _tampered_signature(secret: bytes, subject: str) -> str:
    header, payload, signature = jwt.encode(_claims(subject), secret, algorithm="HS256").split(".")
    return f"{header}.{payload}.{_flip_first(signature)}"


HS_ATTACKS: dict[str, tuple[Forge, str]] = {
    "alg none": (
        lambda _, sub: jwt.encode(_claims(sub, roles=["admin"]), "", algorithm="none"),
        "unsigned token (alg 'none'); it must be signed with HS256",
    ),
    "alg none hand-made": (
        lambda _, sub: _hmac_token({"alg": "None"}, _claims(sub), b"").rsplit(".", 1)[0] + ".",
        "unsigned token (alg 'none'); it must be signed with HS256",
    ),
    "wrong secret": (
        lambda _, sub: jwt.encode(_claims(sub), "guess" * 8, algorithm="HS256"),
        "token signature is invalid",
    ),
    "other hmac algorithm": (
        lambda secret, sub: jwt.encode(_claims(sub), secret * 2, algorithm="HS512"),
        "token must be signed with HS256, not 'HS512'",
    ),
    "expired": (
        lambda secret, sub: jwt.encode(_claims(sub, exp=int(time.time()) - 3600), secret, algorithm="HS256"),
        "token has expired",
    ),
    "no exp": (
        lambda secret, sub: jwt.encode(_claims(sub, exp=None), secret, algorithm="HS256"),
        "token is missing the 'exp' claim",
    ),
    "future nbf": (
        lambda secret, sub: jwt.encode(_claims(sub, nbf=int(time.time()) + 600), secret, algorithm="HS256"),
        "token is not valid yet ('nbf' is in the future)",
    ),
    "future iat": (
        lambda secret, sub: jwt.encode(_claims(sub, iat=int(time.time()) + 600), secret, algorithm="HS256"),
        "token was issued in the future ('iat')",
    ),
    "foreign audience": (
        lambda secret, sub: jwt.encode(_claims(sub, aud="billing-api"), secret, algorithm="HS256"),
        "token is restricted to an audience ('aud') but this server accepts none",
    ),
    "tampered payload": (
        _tampered_payload,
        "token signature is invalid",
    ),
    "tampered signature": (
        _tampered_signature,
        "token signature is invalid",
    ),
    "roles not a list": (
        lambda secret, sub: jwt.encode(_claims(sub, roles="admin"), secret, algorithm="HS256"),
        "token 'roles' must be a list of strings",
    ),
    "garbage": (
        lambda _, sub: f"not-a-jwt-{sub}",
        "token is not a JWT: expected header.payload.signature",
    ),
    "garbage segments": (
        lambda _, sub: "eyJhbGciOi.eyJzdWIiOi.c2ln",
        "token is not a JWT: the header is not base64url-encoded JSON",
    ),
}


@pytest.mark.parametrize("attack", sorted(HS_ATTACKS))
async def test_forged_token_is_401_and_writes_nothing(api: Api, services: Services, attack: str) -> None:
    subject = f"jwt-{attack.replace(' ', '-')}"
    forge, detail = HS_ATTACKS[attack]
    token = forge(services.settings.jwt_secret.get_secret_value().encode(), subject)
    await _assert_refused(api, services, token, detail, subject)


async def test_non_string_subject_is_401_and_writes_nothing(api: Api, services: Services) -> None:
    token = jwt.encode(_claims("x", sub=4242), services.settings.jwt_secret.get_secret_value(), algorithm="HS256")
    await _assert_refused(api, services, token,
                          "token 'sub' must be a non-empty string of at most 200 characters", "4242")


async def test_the_same_request_with_a_valid_token_is_accepted(api: Api, services: Services) -> None:
    """The control: the body the attacks send is a valid order."""
    token = services.token("jwt-control")
    status, body, _ = await api.call("POST", "/v1/orders", token, BODY)
    assert status == 202, body
    status, body, _ = await api.call("GET", "/v1/orders", token)
    assert status == 200, body


# --- a dedicated worker: RS256 with a JWKS file, issuer and audience ----------------------


class RsaIdentity:
    """Two signing keys published in a JWKS file as kid "k1" and "k2"."""

    def __init__(self, root: Path) -> None:
        self.k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        keys = [
            {**jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": kid, "use": "sig"}
            for kid, k in (("k1", self.k1), ("k2", self.k2))
        ]
        self.jwks_file = root / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": keys}))
        self.public_pem = self.k1.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, subject: str, kid: str = "k1", key: rsa.RSAPrivateKey | None = None,
              **changes: Any) -> str:
        claims = _claims(subject, **{"iss": ISSUER, "aud": AUDIENCE, **changes})
        signer = key or (self.k1 if kid == "k1" else self.k2)
        return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> RsaIdentity:
    return RsaIdentity(tmp_path_factory.mktemp("jwks"))


@pytest.fixture(scope="module")
def rs_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A stack of its own: a second worker in the session worker's consumer group would make
    Kafka move the session worker's partitions, and Faust can stall in table recovery then."""
    with running_services(tmp_path_factory.mktemp("jwt-rs")) as svc:
        yield svc


@pytest.fixture(scope="module")
def rs_worker(rs_services: Services, identity: RsaIdentity) -> Iterator[Worker]:
    """A worker configured for RS256 + a JWKS file + required iss and aud."""
    env = {
        "ORION_JWT_ALGORITHM": "RS256",
        "ORION_JWT_JWKS_FILE": str(identity.jwks_file),
        "ORION_JWT_ISSUER": ISSUER,
        "ORION_JWT_AUDIENCE": AUDIENCE,
    }
    rs = Worker(rs_services, "jwt-rs256", extra_env=env)
    try:
        yield rs.start()
    finally:
        rs.stop()


@pytest.fixture
async def rs_api(rs_worker: Worker) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Api(rs_worker.url, session)


async def test_rs256_worker_accepts_tokens_from_either_jwks_key(rs_api: Api, identity: RsaIdentity) -> None:
    for kid in ("k1", "k2"):
        status, body, _ = await rs_api.call("GET", "/v1/orders", identity.token("jwt-rs-valid", kid=kid))
        assert status == 200, (kid, body)
        assert body["items"] == []


def _rs_attacks(identity: RsaIdentity, secret: bytes, subject: str) -> dict[str, tuple[str, str]]:
    confusion = _hmac_token({"alg": "HS256", "typ": "JWT", "kid": "k1"},
                            _claims(subject, iss=ISSUER, aud=AUDIENCE, roles=["admin"]), identity.public_pem)
    header, payload, signature = identity.token(subject).split(".")
    forged = _b64(json.dumps(_claims(subject, iss=ISSUER, aud=AUDIENCE, roles=["admin"])).encode())
    return {
        "hs256 signed with the public key": (confusion, "token must be signed with RS256, not 'HS256'"),
        "hs256 with the session secret": (
            jwt.encode(_claims(subject, iss=ISSUER, aud=AUDIENCE), secret, algorithm="HS256"),
            "token must be signed with RS256, not 'HS256'",
        ),
        "alg none": (
            jwt.encode(_claims(subject, iss=ISSUER, aud=AUDIENCE), "", algorithm="none"),
            "unsigned token (alg 'none'); it must be signed with RS256",
        ),
        "unknown kid": (identity.token(subject, kid="k9", key=identity.k1), "unknown key id"),
        "kid of the other key": (identity.token(subject, kid="k2", key=identity.k1), "token signature is invalid"),
        "no kid": (
            jwt.encode(_claims(subject, iss=ISSUER, aud=AUDIENCE), identity.k1, algorithm="RS256"),
            "token has no 'kid' header, which is needed to pick its key",
        ),
        "wrong issuer": (identity.token(subject, iss="https://evil.test"), "token issuer ('iss') is not accepted"),
        "no issuer": (identity.token(subject, iss=None), "token is missing the 'iss' claim"),
        "wrong audience": (identity.token(subject, aud="billing-api"), "token audience ('aud') is not accepted"),
        "no audience": (identity.token(subject, aud=None), "token is missing the 'aud' claim"),
        "expired": (identity.token(subject, exp=int(time.time()) - 3600), "token has expired"),
        "tampered payload": (f"{header}.{forged}.{signature}", "token signature is invalid"),
        "tampered signature": (f"{header}.{payload}.{_flip_first(signature)}", "token signature is invalid"),
    }


async def test_rs256_worker_refuses_forged_tokens_and_writes_nothing(
    rs_api: Api, rs_services: Services, identity: RsaIdentity
) -> None:
    subject = "jwt-rs-forged"
    attacks = _rs_attacks(identity, rs_services.settings.jwt_secret.get_secret_value().encode(), subject)
    for name, (token, detail) in attacks.items():
        try:
            await _assert_refused(rs_api, rs_services, token, detail, subject)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
