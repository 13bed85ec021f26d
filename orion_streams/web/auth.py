"""JWT bearer authentication with the algorithm pinned by configuration, and roles."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import jwt

from ..config import Settings
from .problems import forbidden, unauthorized

ROLES = frozenset({"customer", "admin", "service"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user or a service, with roles."""

    subject: str
    roles: frozenset[str]
    # The token's `exp` (Unix seconds): long-lived connections end when it passes.
    expires_at: float | None = field(default=None, compare=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def actor(self) -> str:
        kind = "service" if "service" in self.roles and not self.is_admin else "user"
        return f"{kind}:{self.subject}"

    def require(self, *roles: str) -> None:
        if not self.roles.intersection(roles):
            raise forbidden(f"this needs one of the roles: {', '.join(sorted(roles))}")


class TokenVerifier:
    """Verifies bearer tokens. The algorithm comes from settings, never from the token."""

    def __init__(self, settings: Settings, leeway: float = 5.0) -> None:
        self.algorithm = settings.jwt_algorithm
        if self.algorithm.startswith(("RS", "ES", "PS")):
            if not settings.jwt_public_key:
                raise ValueError(f"{self.algorithm} needs ORION_JWT_PUBLIC_KEY")
            self.key: str = settings.jwt_public_key
        else:
            self.key = settings.jwt_secret
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = leeway

    def verify(self, token: str) -> Principal:
        options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("token has expired") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"token is missing the '{exc.claim}' claim") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise unauthorized(f"token must be signed with {self.algorithm}") from exc
        except jwt.InvalidSignatureError as exc:
            raise unauthorized("token signature is invalid") from exc
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"token is invalid: {exc}") from exc
        subject = claims.get("sub")
        roles = claims.get("roles", [])
        if not isinstance(subject, str) or not subject or len(subject) > 200:
            raise unauthorized("token 'sub' must be a non-empty string")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise unauthorized("token 'roles' must be a list of strings")
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) else None  # checked by jwt
        return Principal(subject, frozenset(r for r in roles if r in ROLES), expires_at)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise unauthorized("missing Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization must be 'Bearer <token>'")
        return self.verify(token.strip())


def issue_token(
    settings: Settings,
    subject: str,
    roles: Iterable[str] = ("customer",),
    *,
    ttl: float = 24 * 3600,
    private_key: str | None = None,
) -> str:
    """Mint a token (development and tests). HS256 with the configured secret by default."""
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
    key = private_key if private_key is not None else settings.jwt_secret
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)
