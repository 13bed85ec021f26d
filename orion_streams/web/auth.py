"""JWT bearer authentication with the algorithm pinned by configuration, and roles.

The verifier never lets a token choose how it is checked:

* The algorithm is ``ORION_JWT_ALGORITHM`` (HS256/384/512, RS256/384/512, PS256/384/512 or
  ES256/384/512). A token whose header names anything else, ``none`` included, is refused
  before any key is touched, so an HS256 token "signed" with the RSA public key as the secret
  (key confusion) never reaches HMAC.
* HS* verifies with ``ORION_JWT_SECRET``; asymmetric algorithms verify with either one PEM public
  key or certificate (``ORION_JWT_PUBLIC_KEY``, the PEM text or a path to a PEM file) or a local
  JWKS file (``ORION_JWT_JWKS_FILE``). Keys are loaded and checked once, when the verifier is
  built; a key that does not fit the algorithm is a configuration error (``ValueError``).
* With a JWKS file the token header's ``kid`` picks the key; an unknown ``kid`` is refused. A
  token without ``kid`` is accepted only when the set holds exactly one usable key. With a single
  PEM key, a ``kid`` in the token is allowed and ignored: there is only one key it could mean.
  The JWKS file is read once; rotating keys means restarting the worker.
* ``exp`` and ``sub`` are required, ``iss`` and ``aud`` too when configured; ``exp``, ``nbf``
  and ``iat`` are checked with ``ORION_JWT_LEEWAY`` seconds of clock leeway (default 5). A token
  carrying ``aud`` is refused when no ``ORION_JWT_AUDIENCE`` is configured (RFC 7519 4.1.3).

Every refusal is a 401 problem saying what was wrong with the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..config import Settings
from .problems import forbidden, unauthorized

ROLES = frozenset({"customer", "admin", "service"})

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | frozenset(EC_CURVES)
# Bytes an HMAC secret needs at least (RFC 7518 section 3.2: as long as the hash output).
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_MIN_BITS = 2048
# Longer than any token we issue or accept; refused before any parsing work.
MAX_TOKEN_LENGTH = 8192
MAX_SUBJECT_LENGTH = 200
# Tokens verified lately, remembered until they expire: a customer's token signs many
# requests, and checking its signature again each time was a tenth of a POST.
VERIFIED_TOKENS = 10_000
_BAD_SUBJECT = f"token 'sub' must be a non-empty string of at most {MAX_SUBJECT_LENGTH} characters"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user or a service, with roles."""

    subject: str
    roles: frozenset[str]
    # The token's `exp` (Unix seconds): long-lived connections end when it passes.
    expires_at: float | None = field(default=None, compare=False)

    @property
    def is_admin(self) -> bool:
        """Whether the caller has the admin role."""
        return "admin" in self.roles

    @property
    def actor(self) -> str:
        """The caller as recorded in event headers: ``user:<sub>`` or ``service:<sub>``."""
        kind = "service" if "service" in self.roles and not self.is_admin else "user"
        return f"{kind}:{self.subject}"

    def require(self, *roles: str) -> None:
        """Raise 403 unless the caller has at least one of ``roles``."""
        if not self.roles.intersection(roles):
            raise forbidden(f"this needs one of the roles: {', '.join(sorted(roles))}")


def _shown(value: object, limit: int = 20) -> str:
    """A client-supplied value, quoted and cut short, for an error message."""
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _b64_json(segment: str, what: str) -> dict[str, Any]:
    """Decode one base64url JSON segment of a compact JWS; 401 if it is not a JSON object."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    # Bad base64, bad UTF-8, bad JSON and absurdly deep JSON alike.
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise unauthorized(f"token is not a JWT: the {what} is not base64url-encoded JSON") from exc
    if not isinstance(value, dict):
        raise unauthorized(f"token is not a JWT: the {what} is not a JSON object")
    return value


def _read_pem(value: str) -> bytes:
    """``ORION_JWT_PUBLIC_KEY`` is PEM text (literal ``\\n`` allowed) or a path to a PEM file."""
    text = value.strip()
    if "-----BEGIN" in text:
        if "\n" not in text:
            text = text.replace("\\n", "\n")
        return text.encode()
    try:
        return Path(text).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(
            f"ORION_JWT_PUBLIC_KEY is neither PEM text nor a readable PEM file: {exc}"
        ) from exc


def _load_public_key(pem: bytes) -> Any:
    """A public key from a PEM public key or certificate; private keys are refused."""
    if b"PRIVATE KEY-----" in pem:
        raise ValueError("ORION_JWT_PUBLIC_KEY holds a private key; give the public key")
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ValueError(f"ORION_JWT_PUBLIC_KEY is not a valid PEM public key: {exc}") from exc


def _check_key(algorithm: str, key: Any, where: str) -> PublicKey:
    """Make sure ``key`` is the kind of public key ``algorithm`` verifies with."""
    if algorithm in RSA_ALGORITHMS:
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"{algorithm} needs an RSA public key; {where} is not one")
        if key.key_size < _RSA_MIN_BITS:
            raise ValueError(f"{where} is a {key.key_size}-bit RSA key; use at least {_RSA_MIN_BITS}")
        return key
    curve = EC_CURVES[algorithm]
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
        raise ValueError(f"{algorithm} needs an EC public key on {curve.name}; {where} is not one")
    return key


def _load_jwks(path: str, algorithm: str) -> dict[str | None, PublicKey]:
    """The usable verification keys of a local JWKS file, by ``kid``.

    Keys for other algorithms, key types or uses (``use`` other than ``sig``) are skipped, as a
    published key set may hold them; a key without ``kid`` is stored under ``None``.
    """
    try:
        document = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"ORION_JWT_JWKS_FILE {path!r} is not a readable JSON file: {exc}") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"ORION_JWT_JWKS_FILE {path!r} has no 'keys' list")
    kty = "RSA" if algorithm in RSA_ALGORITHMS else "EC"
    keys: dict[str | None, PublicKey] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        where = f"JWKS key {kid!r}" if kid is not None else f"JWKS key #{index}"
        if "d" in entry or "k" in entry:
            raise ValueError(f"{where} holds private or secret key material; publish public keys only")
        if entry.get("kty") != kty:
            continue
        if entry.get("alg", algorithm) != algorithm or entry.get("use", "sig") != "sig":
            continue
        ops = entry.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        if kid is not None and not isinstance(kid, str):
            raise ValueError(f"{where}: 'kid' must be a string")
        if kid in keys:
            raise ValueError(f"ORION_JWT_JWKS_FILE has two keys with kid {kid!r}")
        try:
            loaded = jwt.PyJWK(entry, algorithm=algorithm).key
        except jwt.PyJWTError as exc:
            raise ValueError(f"{where} is not a valid {kty} key: {exc}") from exc
        keys[kid] = _check_key(algorithm, loaded, where)
    if not keys:
        raise ValueError(f"ORION_JWT_JWKS_FILE {path!r} has no {kty} signing key for {algorithm}")
    if None in keys and len(keys) > 1:
        raise ValueError("ORION_JWT_JWKS_FILE: with several keys, every key needs a 'kid'")
    return keys


class TokenVerifier:
    """Verifies bearer tokens. The algorithm comes from settings, never from the token.

    Raises ``ValueError`` on construction when the settings do not make a safe verifier:
    an unsupported algorithm, a short HMAC secret, a missing or unsuitable public key, or
    public-key settings combined with an HMAC algorithm (which would silently ignore them).
    """

    def __init__(self, settings: Settings, leeway: float | None = None) -> None:
        self.algorithm = settings.jwt_algorithm.strip().upper()
        if self.algorithm not in SUPPORTED_ALGORITHMS:
            raise ValueError(
                f"ORION_JWT_ALGORITHM {settings.jwt_algorithm!r} is not supported; "
                f"use one of {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
            )
        self._secret: bytes | None = None
        self._public_key: PublicKey | None = None
        self._jwks: dict[str | None, PublicKey] | None = None
        if self.algorithm in HMAC_ALGORITHMS:
            if settings.jwt_public_key or settings.jwt_jwks_file:
                raise ValueError(
                    f"ORION_JWT_PUBLIC_KEY / ORION_JWT_JWKS_FILE are set but ORION_JWT_ALGORITHM "
                    f"is {self.algorithm}; set the algorithm to the one the keys are for"
                )
            secret = settings.jwt_secret.get_secret_value().encode()
            if len(secret) < _HMAC_MIN_BYTES[self.algorithm]:
                raise ValueError(
                    f"ORION_JWT_SECRET must be at least {_HMAC_MIN_BYTES[self.algorithm]} bytes "
                    f"for {self.algorithm}"
                )
            if b"-----BEGIN" in secret or secret.startswith(b"ssh-"):
                raise ValueError("ORION_JWT_SECRET looks like a PEM/SSH key, not an HMAC secret")
            self._secret = secret
        elif settings.jwt_public_key and settings.jwt_jwks_file:
            raise ValueError("set only one of ORION_JWT_PUBLIC_KEY and ORION_JWT_JWKS_FILE")
        elif settings.jwt_public_key:
            key = _load_public_key(_read_pem(settings.jwt_public_key))
            self._public_key = _check_key(self.algorithm, key, "ORION_JWT_PUBLIC_KEY")
        elif settings.jwt_jwks_file:
            self._jwks = _load_jwks(settings.jwt_jwks_file, self.algorithm)
        else:
            raise ValueError(
                f"{self.algorithm} needs ORION_JWT_PUBLIC_KEY or ORION_JWT_JWKS_FILE"
            )
        self._verified: OrderedDict[str, Principal] = OrderedDict()
        self.issuer = settings.jwt_issuer or None
        self.audience = settings.jwt_audience or None
        self.leeway = settings.jwt_leeway if leeway is None else leeway
        if self.leeway < 0:
            raise ValueError("ORION_JWT_LEEWAY must not be negative")
        required = ["exp", "sub"]
        if self.issuer:
            required.append("iss")
        if self.audience:
            required.append("aud")
        self._options: dict[str, Any] = {
            "require": required,
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": self.issuer is not None,
            # Always on: a token naming an audience is refused where none is configured
            # (RFC 7519 section 4.1.3), so tokens minted for another service are not replayable.
            "verify_aud": True,
            "enforce_minimum_key_length": True,
        }

    def verify(self, token: str) -> Principal:
        """The principal a bearer token stands for; 401 with the reason if it is not valid.

        A token verified before is taken from memory while its `exp` (with the leeway) has
        not passed: nothing else about a signed token changes with time once it was valid
        (`nbf` and `iat` had passed). Only valid tokens are remembered, the latest
        VERIFIED_TOKENS of them."""
        known = self._verified.get(token)
        if known is not None:
            assert known.expires_at is not None  # `exp` is required
            if time.time() < known.expires_at + self.leeway:
                self._verified.move_to_end(token)
                return known
            del self._verified[token]
        header = self._header(token)
        key = self._key_for(header)
        claims = self._decode(token, key)
        principal = self._principal(claims)
        self._verified[token] = principal
        if len(self._verified) > VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <token>`` header value."""
        if not authorization:
            raise unauthorized("missing Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization must be 'Bearer <token>'")
        return self.verify(token.strip())

    # --- steps ------------------------------------------------------------------------------

    def _header(self, token: str) -> dict[str, Any]:
        """Check the token's shape and its header: algorithm, ``crit`` and ``kid``."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise unauthorized(f"token is longer than {MAX_TOKEN_LENGTH} characters")
        parts = token.split(".")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise unauthorized("token is not a JWT: expected header.payload.signature")
        header = _b64_json(parts[0], "header")
        _b64_json(parts[1], "payload")
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise unauthorized(f"token header has no 'alg'; it must be {self.algorithm}")
        if alg.lower() == "none":
            raise unauthorized(f"unsigned token (alg 'none'); it must be signed with {self.algorithm}")
        if alg != self.algorithm:
            raise unauthorized(f"token must be signed with {self.algorithm}, not {_shown(alg)}")
        if not parts[2]:
            raise unauthorized("token has no signature")
        try:
            base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        except (binascii.Error, ValueError) as exc:  # e.g. cut short: not whole base64 quanta
            raise unauthorized("token signature is invalid") from exc
        if "crit" in header:
            raise unauthorized("token header has 'crit' extensions, which are not supported")
        if "kid" in header and not isinstance(header["kid"], str):
            raise unauthorized("token 'kid' header must be a string")
        return header

    def _key_for(self, header: Mapping[str, Any]) -> Any:
        """The key to verify with: the secret, the one PEM key, or the JWKS key named by kid."""
        if self._secret is not None:
            return self._secret
        if self._public_key is not None:
            return self._public_key  # a single configured key: any kid is ignored
        assert self._jwks is not None
        kid = header.get("kid")
        if kid is None:
            if len(self._jwks) == 1:
                return next(iter(self._jwks.values()))
            raise unauthorized("token has no 'kid' header, which is needed to pick its key")
        key = self._jwks.get(kid)
        if key is None:
            raise unauthorized("unknown key id")
        return key

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        """Verify the signature, then the registered claims; map every failure to a 401."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.InvalidSignatureError as exc:
            raise unauthorized("token signature is invalid") from exc
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            if "(iat)" in str(exc):
                raise unauthorized("token was issued in the future ('iat')") from exc
            raise unauthorized("token is not valid yet ('nbf' is in the future)") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"token is missing the '{exc.claim}' claim") from exc
        except jwt.InvalidIssuerError as exc:
            raise unauthorized("token issuer ('iss') is not accepted") from exc
        except jwt.InvalidAudienceError as exc:
            if self.audience is None:
                raise unauthorized(
                    "token is restricted to an audience ('aud') but this server accepts none"
                ) from exc
            raise unauthorized("token audience ('aud') is not accepted") from exc
        except jwt.exceptions.InvalidSubjectError as exc:
            raise unauthorized(_BAD_SUBJECT) from exc
        except jwt.InvalidIssuedAtError as exc:
            raise unauthorized("token 'iat' must be a number") from exc
        except jwt.InvalidAlgorithmError as exc:  # not reached: _header checked alg already
            raise unauthorized(f"token must be signed with {self.algorithm}") from exc
        except jwt.PyJWTError as exc:  # malformed claims (e.g. a non-numeric exp), bad padding
            raise unauthorized(f"token is invalid: {exc}") from exc
        return claims

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        """Subject, roles and expiry from verified claims."""
        subject = claims.get("sub")
        roles = claims.get("roles", [])
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_LENGTH:
            raise unauthorized(_BAD_SUBJECT)
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise unauthorized("token 'roles' must be a list of strings")
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) else None  # checked by jwt
        return Principal(subject, frozenset(r for r in roles if r in ROLES), expires_at)


def issue_token(
    settings: Settings,
    subject: str,
    roles: Iterable[str] = ("customer",),
    *,
    ttl: float = 24 * 3600,
    private_key: Any = None,
    kid: str | None = None,
) -> str:
    """Mint a token (development and tests).

    HS* tokens are signed with ``ORION_JWT_SECRET``; RS/PS/ES tokens need ``private_key`` (PEM
    text or bytes, or a ``cryptography`` private key). ``kid`` goes into the header when given.
    """
    algorithm = settings.jwt_algorithm.strip().upper()
    if private_key is None:
        if algorithm not in HMAC_ALGORITHMS:
            raise ValueError(
                f"{algorithm} tokens need private_key; only HS* tokens are signed with the secret"
            )
        private_key = settings.jwt_secret.get_secret_value()
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "roles": list(roles),
        "iat": now,
        "exp": now + int(ttl),
        "jti": uuid.uuid4().hex,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, private_key, algorithm=algorithm, headers=headers)

