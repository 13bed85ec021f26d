"""Bearer tokens: the algorithm is pinned by settings, every failure is a 401 saying why."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from orion_streams.config import Settings
from orion_streams.web import auth
from orion_streams.web.auth import MAX_TOKEN_LENGTH, Principal, TokenVerifier, issue_token
from orion_streams.web.problems import ApiError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"
OTHER_SECRET = "another-unit-test-secret-long-enough-for-hs256"
HS = Settings(jwt_secret=SECRET)
BAD_SUB = "token 'sub' must be a non-empty string of at most 200 characters"


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims with some changed; a change to None removes the claim."""
    base: dict[str, Any] = {"sub": "user-1", "roles": ["customer"], "exp": int(time.time()) + 300}
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def hs_token(secret: str = SECRET, /, **changes: Any) -> str:
    return jwt.encode(claims(**changes), secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: Any) -> str:
    """``header.payload`` (the signing input), no signature yet."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


def hmac_signed(header: dict[str, Any], payload: Any, secret: bytes) -> str:
    """A token HMAC-SHA256-signed by hand, whatever the header says."""
    signing_input = unsigned(header, payload)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def refused(verifier: TokenVerifier, token: str) -> str:
    """The 401 detail for a token the verifier must refuse."""
    with pytest.raises(ApiError) as info:
        verifier.verify(token)
    assert info.value.status == 401
    assert info.value.headers.get("WWW-Authenticate", "").startswith("Bearer")
    return info.value.detail


def pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(key: rsa.RSAPrivateKey, **extra: str) -> dict[str, Any]:
    """The public JWK of an RSA key, with extra members (kid, use, alg)."""
    return {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), **extra}


def flip_first_char(segment: str) -> str:
    """Change a base64url segment's first character (whole bits, unlike the last one)."""
    return ("B" if segment[0] == "A" else "A") + segment[1:]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_pem(rsa_key: rsa.RSAPrivateKey) -> tuple[str, str]:
    return pem_private(rsa_key), pem_public(rsa_key)


@pytest.fixture
def rs(rsa_pem: tuple[str, str]) -> TokenVerifier:
    return TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithm="RS256", jwt_public_key=rsa_pem[1]))


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [
        jwk(rsa_key, kid="k1", use="sig", alg="RS256"),
        jwk(rsa_key2, kid="k2"),
        # Skipped: an encryption key, and a key for another algorithm.
        jwk(rsa_key2, kid="k-enc", use="enc"),
        jwk(rsa_key2, kid="k-ps", alg="PS256"),
    ]}))
    return path


@pytest.fixture
def jwks(jwks_file: Path) -> TokenVerifier:
    return TokenVerifier(Settings(jwt_algorithm="RS256", jwt_jwks_file=str(jwks_file)))


# --- HS256: valid tokens --------------------------------------------------------------


def test_valid_token_gives_a_principal_with_roles_and_expiry() -> None:
    exp = int(time.time()) + 300
    principal = TokenVerifier(HS).verify(hs_token(roles=["customer", "admin"], exp=exp))
    assert principal == Principal("user-1", frozenset({"customer", "admin"}))
    assert principal.expires_at == exp
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


def test_algorithm_setting_is_case_insensitive() -> None:
    assert TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithm=" hs256 ")).verify(hs_token())


# --- HS256: claims ----------------------------------------------------------------------


@pytest.mark.parametrize("roles", ["admin", [1], {"admin": True}, [["admin"]]])
def test_roles_that_are_not_a_list_of_strings_are_refused(roles: Any) -> None:
    detail = refused(TokenVerifier(HS), hs_token(roles=roles))
    assert detail == "token 'roles' must be a list of strings"


@pytest.mark.parametrize("sub", ["", "x" * 201, 42, ["admin"], {"id": 1}])
def test_bad_subject_is_refused(sub: Any) -> None:
    assert refused(TokenVerifier(HS), hs_token(sub=sub)) == BAD_SUB


@pytest.mark.parametrize("claim", ["exp", "sub"])
def test_missing_required_claim_is_refused(claim: str) -> None:
    assert refused(TokenVerifier(HS), hs_token(**{claim: None})) == f"token is missing the '{claim}' claim"


def test_expired_token_is_refused() -> None:
    assert refused(TokenVerifier(HS), hs_token(exp=int(time.time()) - 60)) == "token has expired"


def test_expiry_within_leeway_is_accepted_and_refused_without_leeway() -> None:
    token = hs_token(exp=int(time.time()) - 3)
    assert TokenVerifier(HS, leeway=5).verify(token).subject == "user-1"
    assert TokenVerifier(Settings(jwt_secret=SECRET, jwt_leeway=5)).verify(token).subject == "user-1"
    assert refused(TokenVerifier(HS, leeway=0), token) == "token has expired"
    assert refused(TokenVerifier(Settings(jwt_secret=SECRET, jwt_leeway=0)), token) == "token has expired"


def test_default_leeway_is_five_seconds() -> None:
    assert TokenVerifier(HS).leeway == 5.0
    assert TokenVerifier(Settings(jwt_secret=SECRET, jwt_leeway=1.5)).leeway == 1.5
    assert TokenVerifier(HS, leeway=0).leeway == 0


def test_not_before_in_the_future_is_refused() -> None:
    token = hs_token(nbf=int(time.time()) + 60)
    assert refused(TokenVerifier(HS), token) == "token is not valid yet ('nbf' is in the future)"


def test_not_before_within_leeway_is_accepted() -> None:
    token = hs_token(nbf=int(time.time()) + 3)
    assert TokenVerifier(HS, leeway=5).verify(token).subject == "user-1"
    assert refused(TokenVerifier(HS, leeway=0), token) == "token is not valid yet ('nbf' is in the future)"


def test_issued_in_the_future_beyond_leeway_is_refused() -> None:
    assert refused(TokenVerifier(HS), hs_token(iat=int(time.time()) + 60)) == (
        "token was issued in the future ('iat')"
    )
    assert TokenVerifier(HS, leeway=5).verify(hs_token(iat=int(time.time()) + 3)).subject == "user-1"


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"exp": "tomorrow"}, "token is invalid: Expiration Time claim (exp) must be an integer."),
        ({"nbf": "now"}, "token is invalid: Not Before claim (nbf) must be an integer."),
        ({"iat": "now"}, "token 'iat' must be a number"),
    ],
)
def test_time_claims_that_are_not_numbers_are_refused(changes: dict[str, Any], detail: str) -> None:
    assert refused(TokenVerifier(HS), hs_token(**changes)) == detail


def test_audience_in_a_token_is_refused_when_none_is_configured() -> None:
    assert refused(TokenVerifier(HS), hs_token(aud="another-service")) == (
        "token is restricted to an audience ('aud') but this server accepts none"
    )


# --- HS256: forged tokens --------------------------------------------------------------


def test_token_signed_with_another_secret_is_refused() -> None:
    assert refused(TokenVerifier(HS), hs_token(OTHER_SECRET)) == "token signature is invalid"


def test_tampered_payload_is_refused() -> None:
    header, _, signature = hs_token().split(".")
    forged = b64(json.dumps(claims(roles=["admin"])).encode())
    assert refused(TokenVerifier(HS), f"{header}.{forged}.{signature}") == "token signature is invalid"


def test_tampered_signature_is_refused() -> None:
    header, payload, signature = hs_token().split(".")
    token = f"{header}.{payload}.{flip_first_char(signature)}"
    assert refused(TokenVerifier(HS), token) == "token signature is invalid"


def test_truncated_signature_is_refused() -> None:
    header, payload, signature = hs_token().split(".")
    assert refused(TokenVerifier(HS), f"{header}.{payload}.{signature[:-6]}") == "token signature is invalid"


def test_token_without_signature_is_refused() -> None:
    header, payload, _ = hs_token().split(".")
    assert refused(TokenVerifier(HS), f"{header}.{payload}.") == "token has no signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "c2lnbmF0dXJl"])
def test_alg_none_token_is_refused(alg: str, signature: str) -> None:
    token = unsigned({"alg": alg, "typ": "JWT"}, claims(roles=["admin"])) + "." + signature
    assert refused(TokenVerifier(HS), token) == (
        "unsigned token (alg 'none'); it must be signed with HS256"
    )


def test_pyjwt_alg_none_token_is_refused() -> None:
    token = jwt.encode(claims(), "", algorithm="none")
    assert refused(TokenVerifier(HS), token) == "unsigned token (alg 'none'); it must be signed with HS256"


def test_other_hmac_algorithm_is_refused() -> None:
    token = jwt.encode(claims(), SECRET + SECRET, algorithm="HS512")
    assert refused(TokenVerifier(HS), token) == "token must be signed with HS256, not 'HS512'"


def test_long_algorithm_name_is_cut_short_in_the_detail() -> None:
    token = hmac_signed({"alg": "X" * 100}, claims(), SECRET.encode())
    assert refused(TokenVerifier(HS), token) == f"token must be signed with HS256, not '{'X' * 20}...'"


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"alg": ""}, {"alg": 256}, {"alg": None}])
def test_header_without_an_algorithm_is_refused(header: dict[str, Any]) -> None:
    token = hmac_signed(header, claims(), SECRET.encode())
    assert refused(TokenVerifier(HS), token) == "token header has no 'alg'; it must be HS256"


def test_critical_header_extensions_are_refused() -> None:
    token = hmac_signed({"alg": "HS256", "crit": ["b64"], "b64": False}, claims(), SECRET.encode())
    assert refused(TokenVerifier(HS), token) == (
        "token header has 'crit' extensions, which are not supported"
    )


def test_non_string_kid_is_refused() -> None:
    token = hmac_signed({"alg": "HS256", "kid": 7}, claims(), SECRET.encode())
    assert refused(TokenVerifier(HS), token) == "token 'kid' header must be a string"


def test_kid_is_ignored_with_a_shared_secret() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "whatever"})
    assert TokenVerifier(HS).verify(token).subject == "user-1"


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("", "token is not a JWT: expected header.payload.signature"),
        ("garbage", "token is not a JWT: expected header.payload.signature"),
        ("a.b", "token is not a JWT: expected header.payload.signature"),
        ("a.b.c.d.e", "token is not a JWT: expected header.payload.signature"),
        (".e30.sig", "token is not a JWT: expected header.payload.signature"),
        ("a.b.c", "token is not a JWT: the header is not base64url-encoded JSON"),
        (f"{b64(b'not json')}.e30.c2ln", "token is not a JWT: the header is not base64url-encoded JSON"),
        (f"{b64(b'[1]')}.e30.c2ln", "token is not a JWT: the header is not a JSON object"),
        (f"{b64(b'{}')}.{b64(b'nope')}.c2ln", "token is not a JWT: the payload is not base64url-encoded JSON"),
        (f"{b64(b'{}')}.{b64(b'[]')}.c2ln", "token is not a JWT: the payload is not a JSON object"),
        (f"{b64(bytes([0xff, 0xfe]))}.e30.c2ln", "token is not a JWT: the header is not base64url-encoded JSON"),
    ],
)
def test_garbage_token_is_refused(token: str, detail: str) -> None:
    assert refused(TokenVerifier(HS), token) == detail


def test_properly_signed_non_json_payload_is_refused() -> None:
    token = jwt.api_jws.encode(b"just some bytes", SECRET, algorithm="HS256")
    assert refused(TokenVerifier(HS), token) == (
        "token is not a JWT: the payload is not base64url-encoded JSON"
    )


def test_deeply_nested_header_is_refused() -> None:
    token = f"{b64(b'[' * 3000)}.e30.c2ln"
    assert refused(TokenVerifier(HS), token) == (
        "token is not a JWT: the header is not base64url-encoded JSON"
    )


def test_infinite_expiry_is_refused() -> None:
    payload = json.dumps(claims()).replace(json.dumps(claims()["exp"]), "1e400")
    token = jwt.api_jws.encode(payload.encode(), SECRET, algorithm="HS256")
    assert refused(TokenVerifier(HS), token) == (
        "token is invalid: Expiration Time claim (exp) must be an integer."
    )


def test_oversized_token_is_refused() -> None:
    token = hs_token(pad="x" * MAX_TOKEN_LENGTH)
    assert refused(TokenVerifier(HS), token) == f"token is longer than {MAX_TOKEN_LENGTH} characters"


# --- issuer and audience -------------------------------------------------------------

SCOPED = Settings(jwt_secret=SECRET, jwt_issuer="https://id.orion", jwt_audience="orion-api")


def test_matching_issuer_and_audience_are_accepted() -> None:
    token = hs_token(iss="https://id.orion", aud="orion-api")
    assert TokenVerifier(SCOPED).verify(token).subject == "user-1"
    assert TokenVerifier(SCOPED).verify(hs_token(iss="https://id.orion", aud=["x", "orion-api"]))
    assert TokenVerifier(SCOPED).verify(issue_token(SCOPED, "user-2")).subject == "user-2"


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"iss": "https://evil", "aud": "orion-api"}, "token issuer ('iss') is not accepted"),
        ({"aud": "orion-api"}, "token is missing the 'iss' claim"),
        ({"iss": "https://id.orion", "aud": "someone-else"}, "token audience ('aud') is not accepted"),
        ({"iss": "https://id.orion", "aud": ["a", "b"]}, "token audience ('aud') is not accepted"),
        ({"iss": "https://id.orion"}, "token is missing the 'aud' claim"),
    ],
)
def test_wrong_or_missing_issuer_or_audience_is_refused(changes: dict[str, Any], detail: str) -> None:
    assert refused(TokenVerifier(SCOPED), hs_token(**changes)) == detail


def test_empty_issuer_and_audience_settings_mean_unchecked() -> None:
    verifier = TokenVerifier(Settings(jwt_secret=SECRET, jwt_issuer="", jwt_audience=""))
    assert verifier.issuer is None and verifier.audience is None
    assert verifier.verify(hs_token(iss="anyone")).subject == "user-1"


# --- RS256 with one PEM key -------------------------------------------------------------


def test_rs256_signed_token_verifies(rsa_pem: tuple[str, str], rs: TokenVerifier) -> None:
    private, _ = rsa_pem
    token = jwt.encode(claims(roles=["admin"]), private, algorithm="RS256")
    assert rs.verify(token) == Principal("user-1", frozenset({"admin"}))


def test_issue_token_signs_rs256_with_a_private_key_and_kid(rsa_pem: tuple[str, str], rs: TokenVerifier) -> None:
    private, public = rsa_pem
    settings = Settings(jwt_algorithm="RS256", jwt_public_key=public)
    issued = issue_token(settings, "user-3", private_key=private, kid="k1")
    assert jwt.get_unverified_header(issued)["kid"] == "k1"
    # With a single configured key, the kid is not checked.
    assert rs.verify(issued).subject == "user-3"


def test_issue_token_without_private_key_for_rs256_is_an_error(rsa_pem: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="private_key"):
        issue_token(Settings(jwt_algorithm="RS256", jwt_public_key=rsa_pem[1]), "u")


def test_public_key_can_be_a_path_or_escaped_text(tmp_path: Path, rsa_pem: tuple[str, str]) -> None:
    private, public = rsa_pem
    token = jwt.encode(claims(), private, algorithm="RS256")
    path = tmp_path / "public.pem"
    path.write_text(public)
    for value in (str(path), public.replace("\n", "\\n")):
        verifier = TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=value))
        assert verifier.verify(token).subject == "user-1"


def test_public_key_can_be_a_certificate(rsa_key: rsa.RSAPrivateKey) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orion-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(rsa_key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    verifier = TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=pem))
    assert verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).subject == "user-1"


def test_hs256_token_is_refused_when_rs256_is_configured(rs: TokenVerifier) -> None:
    assert refused(rs, hs_token()) == "token must be signed with RS256, not 'HS256'"


def test_key_confusion_hs256_signed_with_the_public_key_is_refused(
    rsa_pem: tuple[str, str], rs: TokenVerifier
) -> None:
    _, public = rsa_pem
    # HMAC over the token with the RSA public key (PEM text, and its DER bytes) as the secret.
    der = serialization.load_pem_public_key(public.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public.encode(), public.strip().encode(), der):
        token = hmac_signed({"alg": "HS256", "typ": "JWT"}, claims(roles=["admin"]), secret)
        assert refused(rs, token) == "token must be signed with RS256, not 'HS256'"


def test_alg_none_is_refused_when_rs256_is_configured(rs: TokenVerifier) -> None:
    token = unsigned({"alg": "none"}, claims(roles=["admin"])) + "."
    assert refused(rs, token) == "unsigned token (alg 'none'); it must be signed with RS256"


def test_ps256_token_is_refused_when_rs256_is_configured(rsa_key: rsa.RSAPrivateKey, rs: TokenVerifier) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="PS256")
    assert refused(rs, token) == "token must be signed with RS256, not 'PS256'"


def test_rs256_token_signed_by_another_key_is_refused(rsa_key2: rsa.RSAPrivateKey, rs: TokenVerifier) -> None:
    assert refused(rs, jwt.encode(claims(), rsa_key2, algorithm="RS256")) == "token signature is invalid"


def test_embedded_jwk_header_is_not_trusted(rsa_key2: rsa.RSAPrivateKey, rs: TokenVerifier) -> None:
    # The attacker signs with their own key and ships its public half in the header.
    token = jwt.encode(claims(roles=["admin"]), rsa_key2, algorithm="RS256",
                       headers={"jwk": jwk(rsa_key2), "jku": "https://evil.example/jwks.json"})
    assert refused(rs, token) == "token signature is invalid"


def test_rs256_tampered_payload_and_signature_are_refused(
    rsa_key: rsa.RSAPrivateKey, rs: TokenVerifier
) -> None:
    header, payload, signature = jwt.encode(claims(), rsa_key, algorithm="RS256").split(".")
    forged = b64(json.dumps(claims(roles=["admin"])).encode())
    assert refused(rs, f"{header}.{forged}.{signature}") == "token signature is invalid"
    assert refused(rs, f"{header}.{payload}.{flip_first_char(signature)}") == "token signature is invalid"


def test_rs256_expiry_and_not_before_are_checked(rsa_key: rsa.RSAPrivateKey, rs: TokenVerifier) -> None:
    now = int(time.time())
    assert refused(rs, jwt.encode(claims(exp=now - 60), rsa_key, algorithm="RS256")) == "token has expired"
    assert refused(rs, jwt.encode(claims(exp=None), rsa_key, algorithm="RS256")) == (
        "token is missing the 'exp' claim"
    )
    assert refused(rs, jwt.encode(claims(nbf=now + 60), rsa_key, algorithm="RS256")) == (
        "token is not valid yet ('nbf' is in the future)"
    )


# --- RS256 with a JWKS file -------------------------------------------------------------


def test_jwks_kid_selects_the_key(
    jwks: TokenVerifier, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    one = jwt.encode(claims(sub="one"), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    two = jwt.encode(claims(sub="two"), rsa_key2, algorithm="RS256", headers={"kid": "k2"})
    assert jwks.verify(one).subject == "one"
    assert jwks.verify(two).subject == "two"


def test_jwks_token_signed_by_the_other_key_is_refused(jwks: TokenVerifier, rsa_key2: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key2, algorithm="RS256", headers={"kid": "k1"})
    assert refused(jwks, token) == "token signature is invalid"


@pytest.mark.parametrize("kid", ["k3", "", "K1", "k-enc", "k-ps"])
def test_jwks_unknown_kid_is_refused(jwks: TokenVerifier, rsa_key: rsa.RSAPrivateKey, kid: str) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": kid})
    assert refused(jwks, token) == "unknown key id"


def test_jwks_token_without_kid_is_refused_when_there_are_several_keys(
    jwks: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert refused(jwks, token) == "token has no 'kid' header, which is needed to pick its key"


def test_jwks_with_one_key_accepts_a_token_without_kid(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"keys": [jwk(rsa_key)]}))
    verifier = TokenVerifier(Settings(jwt_algorithm="RS256", jwt_jwks_file=str(path)))
    assert verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).subject == "user-1"


def test_jwks_key_confusion_is_refused(jwks: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    public = pem_public(rsa_key).encode()
    token = hmac_signed({"alg": "HS256", "kid": "k1"}, claims(roles=["admin"]), public)
    assert refused(jwks, token) == "token must be signed with RS256, not 'HS256'"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"keys": []}, "no RSA signing key"),
        ({"nokeys": 1}, "no 'keys' list"),
        ([1, 2], "no 'keys' list"),
        ({"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB"}]}, "not a valid RSA key"),
        ({"keys": [{"kty": "oct", "kid": "x", "k": "c2VjcmV0"}]}, "secret key material"),
        ({"keys": [{"kty": "EC", "kid": "x", "crv": "P-256"}]}, "no RSA signing key"),
    ],
)
def test_unusable_jwks_files_are_configuration_errors(tmp_path: Path, document: Any, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_jwks_file=str(path)))


def test_jwks_configuration_errors(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    def build(document: Any) -> None:
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps(document))
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_jwks_file=str(path)))

    private = {**jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True), "kid": "p"}
    with pytest.raises(ValueError, match="private or secret key material"):
        build({"keys": [private]})
    with pytest.raises(ValueError, match="two keys with kid 'a'"):
        build({"keys": [jwk(rsa_key, kid="a"), jwk(rsa_key2, kid="a")]})
    with pytest.raises(ValueError, match="every key needs a 'kid'"):
        build({"keys": [jwk(rsa_key, kid="a"), jwk(rsa_key2)]})
    with pytest.raises(ValueError, match="not a readable JSON file"):
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_jwks_file=str(tmp_path / "missing.json")))


# --- ES256 ------------------------------------------------------------------------------


def test_es256_with_a_pem_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier(Settings(jwt_algorithm="ES256", jwt_public_key=pem_public(key)))
    assert verifier.verify(jwt.encode(claims(), key, algorithm="ES256")).subject == "user-1"
    other = ec.generate_private_key(ec.SECP256R1())
    assert refused(verifier, jwt.encode(claims(), other, algorithm="ES256")) == "token signature is invalid"
    assert refused(verifier, hs_token()) == "token must be signed with ES256, not 'HS256'"


# --- configuration errors -----------------------------------------------------------------


def test_rs256_without_public_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="PUBLIC_KEY or ORION_JWT_JWKS_FILE"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithm="RS256"))


@pytest.mark.parametrize("algorithm", ["none", "", "EdDSA", "HS1"])
def test_unsupported_algorithm_is_a_configuration_error(algorithm: str) -> None:
    with pytest.raises(ValueError, match="is not supported"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithm=algorithm))


def test_short_hmac_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier(Settings(jwt_secret="short"))
    with pytest.raises(ValueError, match="at least 64 bytes"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithm="HS512"))


def test_pem_as_hmac_secret_is_a_configuration_error(rsa_pem: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="not an HMAC secret"):
        TokenVerifier(Settings(jwt_secret=rsa_pem[1]))


def test_public_key_with_hmac_algorithm_is_a_configuration_error(rsa_pem: tuple[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ORION_JWT_ALGORITHM is HS256"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_public_key=rsa_pem[1]))
    with pytest.raises(ValueError, match="ORION_JWT_ALGORITHM is HS256"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_jwks_file=str(tmp_path / "jwks.json")))


def test_both_public_key_and_jwks_is_a_configuration_error(rsa_pem: tuple[str, str], jwks_file: Path) -> None:
    with pytest.raises(ValueError, match="only one of"):
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=rsa_pem[1], jwt_jwks_file=str(jwks_file)))


def test_unsuitable_public_keys_are_configuration_errors(rsa_pem: tuple[str, str], tmp_path: Path) -> None:
    private, public = rsa_pem
    with pytest.raises(ValueError, match="holds a private key"):
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=private))
    with pytest.raises(ValueError, match="needs an EC public key"):
        TokenVerifier(Settings(jwt_algorithm="ES256", jwt_public_key=public))
    p384 = pem_public(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="secp256r1"):
        TokenVerifier(Settings(jwt_algorithm="ES256", jwt_public_key=p384))
    with pytest.raises(ValueError, match="needs an RSA public key"):
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=p384))
    with pytest.raises(ValueError, match="readable PEM file"):
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=str(tmp_path / "nope.pem")))
    with pytest.raises(ValueError, match="not a valid PEM public key"):
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key="-----BEGIN PUBLIC KEY-----\nxx\n"))


def test_small_rsa_key_is_a_configuration_error() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="1024-bit RSA key"):
        TokenVerifier(Settings(jwt_algorithm="RS256", jwt_public_key=pem_public(small)))


def test_negative_leeway_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="LEEWAY"):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_leeway=-1))


def test_settings_read_jwks_file_and_leeway_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORION_JWT_JWKS_FILE", "/etc/orion/jwks.json")
    monkeypatch.setenv("ORION_JWT_LEEWAY", "2.5")
    settings = Settings.from_env()
    assert (settings.jwt_jwks_file, settings.jwt_leeway) == ("/etc/orion/jwks.json", 2.5)
    monkeypatch.delenv("ORION_JWT_JWKS_FILE")
    monkeypatch.delenv("ORION_JWT_LEEWAY")
    assert (Settings.from_env().jwt_jwks_file, Settings.from_env().jwt_leeway) == (None, 5.0)


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


def test_bearer_header_with_a_forged_token_gives_the_reason() -> None:
    with pytest.raises(ApiError) as info:
        TokenVerifier(HS).authenticate(f"Bearer {hs_token(OTHER_SECRET)}")
    assert (info.value.status, info.value.detail) == (401, "token signature is invalid")


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


# --- Verified tokens remembered ----------------------------------------------------------


def test_a_token_verified_before_is_not_checked_again_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(HS, leeway=5)
    exp = int(time.time()) - 3  # expired, within the leeway
    token = hs_token(exp=exp)
    decoded: list[str] = []
    real = verifier._decode
    monkeypatch.setattr(verifier, "_decode", lambda t, k: decoded.append(t) or real(t, k))
    first = verifier.verify(token)
    assert verifier.verify(token) is first and decoded == [token]
    with monkeypatch.context() as m:  # up to the end of the leeway: from memory
        m.setattr(auth.time, "time", lambda: exp + 4.9)
        assert verifier.verify(token) is first and len(decoded) == 1
    # Once the leeway has passed (here: taken away), it is checked again and refused, as a
    # token never seen would be.
    verifier.leeway = 0
    assert refused(verifier, token) == "token has expired"
    assert refused(verifier, token) == "token has expired" and len(decoded) == 3


def test_refused_tokens_are_not_remembered_and_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(HS)
    bad = hs_token(exp=int(time.time()) - 60)
    assert refused(verifier, bad) == "token has expired"
    assert bad not in verifier._verified
    monkeypatch.setattr(auth, "VERIFIED_TOKENS", 3)
    tokens = [hs_token(sub=f"user-{i}") for i in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert list(verifier._verified) == tokens[2:]
