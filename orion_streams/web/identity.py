"""Who is calling: a JWT (users, admins, services) or an `X-API-Key` (services), and what
each endpoint lets them do.

Endpoints declare the roles a token needs and the scope a key needs (`allow`); a key without
the scope gets 403, and a key on an endpoint that declares no scope gets 403 as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from .auth import Principal, TokenVerifier
from .problems import forbidden, unauthorized

if TYPE_CHECKING:
    from ..bootstrap import Runtime

API_KEY_HEADER = "X-API-Key"


@dataclass(frozen=True)
class KeyPrincipal(Principal):
    """A service calling with an API key: role `service`, limited to the key's scopes."""

    scopes: frozenset[str] = field(default_factory=frozenset)
    key_name: str = ""

    @property
    def actor(self) -> str:
        return f"service:{self.key_name}/{self.subject}"


async def authenticate(request: web.Request, verifier: TokenVerifier, runtime: Runtime) -> Principal:
    """The caller: an API key checked against `runtime`'s key store, else a token."""
    key = request.headers.get(API_KEY_HEADER)
    if key is not None:
        return await key_principal(runtime, key)
    return verifier.authenticate(request.headers.get("Authorization"))


async def key_principal(runtime: Runtime, key: str) -> KeyPrincipal:
    """The caller an API key stands for; 401 when the key is unknown or revoked."""
    await runtime.ready()
    grant = await runtime.api_keys.check(key.strip())
    if grant is None:
        raise unauthorized("API key is not valid or has been revoked")
    return KeyPrincipal(grant.id, frozenset({"service"}), scopes=grant.scopes, key_name=grant.name)


def allow(principal: Principal, *roles: str, scope: str | None = None) -> None:
    """403 unless a token holds one of `roles` (any role when none are named) or a key holds
    `scope`."""
    if isinstance(principal, KeyPrincipal):
        if scope is None:
            raise forbidden("API keys cannot use this endpoint")
        if scope not in principal.scopes:
            raise forbidden(f"this API key lacks the scope {scope}")
        return
    if roles:
        principal.require(*roles)


def sees_all_orders(principal: Principal) -> bool:
    """Admins and services see every order; customers only their own."""
    return principal.is_admin or "service" in principal.roles
