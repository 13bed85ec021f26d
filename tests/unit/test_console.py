"""`GET /console` (web/console.py): the ops console's page and its files, served from the
package by name with a strict Content-Security-Policy, 404 problem+json for anything else."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources

import pytest

from orion_streams.web import console
from orion_streams.web.middleware import CORRELATION_ID

from .web_fakes import Client, World, problem, serve

FILES = resources.files("orion_streams.web").joinpath("console")


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with serve(World()) as http:
        yield http


def directives(policy: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


async def test_the_page_is_served_as_html_without_credentials(client: Client) -> None:
    response = await client.get("/console")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers.get(CORRELATION_ID)
    body = await response.text()
    assert body == FILES.joinpath("index.html").read_text()
    assert '<form id="signin"' in body and 'id="credential"' in body


@pytest.mark.parametrize(("name", "content_type"), [
    ("console.css", "text/css; charset=utf-8"),
    ("console.js", "text/javascript; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"),
    ("index.html", "text/html; charset=utf-8"),
])
async def test_each_file_has_its_content_type(client: Client, name: str, content_type: str) -> None:
    response = await client.get(f"/console/{name}")
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert await response.read() == FILES.joinpath(name).read_bytes()
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", [
    "/console/nope.js", "/console/console.py", "/console/..%2fconsole.py", "/console/%2e%2e%2f__init__.py",
    "/console/..%2F..%2Fconfig.py", "/console/CONSOLE.JS", "/console/console.js.map",
])
async def test_any_other_name_is_a_404_problem(client: Client, path: str) -> None:
    response = await client.get(path)
    body = await problem(response, 404)
    assert "no console file" in body["detail"]


async def test_a_dot_dot_path_never_reaches_a_file_outside_the_console(client: Client) -> None:
    for path in ("/console/../web/console.py", "/console/./console.js/../../views.py"):
        response = await client.get(path)  # normalised by the client or the router: never a file
        assert response.status == 404
        assert response.content_type == "application/problem+json"


async def test_the_policy_allows_this_origin_only_and_no_inline_script(client: Client) -> None:
    response = await client.get("/console", headers={"Host": "console.example:8080"})
    policy = directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", "ws://console.example:8080", "wss://console.example:8080"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert not any("unsafe" in v for values in policy.values() for v in values)


def test_a_strange_host_is_not_written_into_the_policy() -> None:
    assert console.content_security_policy("a b;script-src *").endswith("connect-src 'self'")
    assert console.content_security_policy(None).endswith("connect-src 'self'")
    assert console.content_security_policy("[::1]:8080").endswith("ws://[::1]:8080 wss://[::1]:8080")


def test_the_page_uses_only_its_own_files_and_no_inline_script_or_style() -> None:
    html = FILES.joinpath("index.html").read_text()
    assert "style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert scripts and all(not s.strip() for s in scripts)
    referenced = set(re.findall(r'(?:src|href)="([^"#]+)"', html))
    assert referenced == {f"/console/{name}" for name in console.FILES if name != console.INDEX}
    for name in console.FILES:
        text = FILES.joinpath(name).read_text().replace("http://www.w3.org/2000/svg", "")  # a namespace, not a URL
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "@import" not in text and "url(" not in text, name


def test_every_element_the_script_looks_up_is_on_the_page() -> None:
    html = FILES.joinpath("index.html").read_text()
    script = FILES.joinpath("console.js").read_text()
    on_page = set(re.findall(r'\sid="([^"]+)"', html))
    made_by_script = set(re.findall(r'\bid: "([^"]+)"', script))  # h("span", { id: "…" })
    looked_up = set(re.findall(r'\$\("([^"]+)"\)', script))
    looked_up |= {i for ids in re.findall(r"for \(const id of \[([^\]]*)\]", script) for i in re.findall(r'"([^"]+)"', ids)}
    assert looked_up, "no lookups found"
    assert looked_up - on_page <= made_by_script, sorted(looked_up - on_page - made_by_script)
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    controls = set(re.findall(r'<(?:input|select)\b[^>]*\sid="([^"]+)"', html))
    unlabelled = {c for c in controls if c not in labelled and f'id="{c}" aria-label=' not in html}
    assert not unlabelled - {"stock-low-only"}, unlabelled  # that one sits inside its <label>
