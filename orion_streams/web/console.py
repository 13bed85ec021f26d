"""`GET /console`: the ops console, one page of plain HTML, CSS and JavaScript shipped in the
package (`web/console/`), served by every worker without authentication.

The page holds no data of its own: it signs in with a pasted admin JWT or API key and talks
only to the public HTTP API and `/v1/ws`, whose calls carry the credential. Only the files
named in `FILES` are served (no path is ever joined from the request), each with a strict
Content-Security-Policy: scripts, styles and images from this origin only, no inline script
or style attribute, connections to this origin and its WebSocket.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from aiohttp import web
from faust.web import View

from .problems import not_found

PATH = "/console"
ASSET_PATH = "/console/{name}"
PACKAGE = "orion_streams.web"
DIRECTORY = "console"
INDEX = "index.html"
# Every file the page may load, by name, with its Content-Type.
FILES: dict[str, str] = {
    INDEX: "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# A Host header this plain may be named in the policy (host, IPv4, [IPv6], optional port).
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
BASE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'none'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def content_security_policy(host: str | None) -> str:
    """The page's policy; the WebSocket of the page's own host is named next to 'self' (which
    covers it in current browsers but not in every older one)."""
    connect = "'self'"
    if host and _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return f"{BASE_POLICY}; connect-src {connect}"


@cache
def _read(name: str) -> bytes:
    return resources.files(PACKAGE).joinpath(DIRECTORY, name).read_bytes()


def asset(request: web.Request, name: str) -> web.Response:
    """One of the console's files, or 404 problem+json for any other name."""
    content_type = FILES.get(name)
    if content_type is None:
        raise not_found(f"no console file {name}")
    return web.Response(
        body=_read(name),
        headers={
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            "Content-Security-Policy": content_security_policy(request.headers.get("Host")),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )


class ConsoleView(View):
    async def get(self, request: web.Request) -> web.Response:
        """The console page (no authentication: its data calls carry the credential)."""
        return asset(request, INDEX)


class ConsoleAssetView(View):
    async def get(self, request: web.Request, name: str) -> web.Response:
        """The page's stylesheet, script and icon; 404 for any other name."""
        return asset(request, name)


# The views and their paths, as `web.register` adds them.
ROUTES: tuple[tuple[str, type[View]], ...] = (
    (PATH, ConsoleView),
    (ASSET_PATH, ConsoleAssetView),
)
