"""Email templates, MIME composition and SMTP URL parsing."""

from __future__ import annotations

import email
import email.policy
import html
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
import pytest

from orion_streams.adapters.email import (
    EmailError,
    EmailRenderer,
    PermanentEmailError,
    RenderedEmail,
    SmtpServer,
    TemporaryEmailError,
    compose,
    default_template_dir,
)

ORDER_TEMPLATES = (
    "order_received",
    "order_processing",
    "order_fulfilled",
    "order_failed",
    "order_cancelled",
)
SHOP = {"name": "Orion Shop", "support_email": "support@orion.local"}
ORDER_ID = "1f2e3d4c-5b6a-4789-8abc-def012345678"
LINES: list[dict[str, Any]] = [
    {
        "sku": "LAMP-01",
        "name": "Desk lamp",
        "quantity": 2,
        "unit_price": "12.50 EUR",
        "line_total": "25.00 EUR",
    },
    {
        "sku": "MOUSE-7",
        "name": "Wireless mouse",
        "quantity": 1,
        "unit_price": "7.25 EUR",
        "line_total": "7.25 EUR",
    },
]


def order_context(
    status: str = "PENDING", reason: str | None = None, lines: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "shop": SHOP,
        "order": {
            "order_id": ORDER_ID,
            "short_id": ORDER_ID[:8],
            "status": status,
            "customer_email": "ada@example.com",
            "user_id": "ada",
            "lines": LINES if lines is None else lines,
            "total": "32.25 EUR",
            "currency": "EUR",
            "created_at": "2024-05-01T10:00:00+00:00",
            "at": "2024-05-01T10:05:00+00:00",
        },
        "reason": reason,
    }


STOCK_CONTEXT: dict[str, Any] = {
    "shop": SHOP,
    "stock": {
        "sku": "LAMP-01",
        "name": "Desk lamp",
        "available": 3,
        "threshold": 5,
        "at": "2024-05-01T11:00:00+00:00",
    },
}

STATUS = {
    "order_received": "PENDING",
    "order_processing": "CONFIRMED",
    "order_fulfilled": "FULFILLED",
    "order_failed": "REJECTED",
    "order_cancelled": "CANCELLED",
}


@pytest.fixture(scope="module")
def renderer() -> EmailRenderer:
    return EmailRenderer()


def sample(name: str) -> dict[str, Any]:
    return STOCK_CONTEXT if name == "low_stock" else order_context(STATUS[name], "out of stock")


def text_only(markup: str) -> str:
    """HTML with tags removed and entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


# --------------------------------------------------------------------------- templates


def test_all_templates_found(renderer: EmailRenderer) -> None:
    assert set(renderer.templates) == {*ORDER_TEMPLATES, "low_stock"}
    assert renderer.directory == default_template_dir()


@pytest.mark.parametrize("name", [*ORDER_TEMPLATES, "low_stock"])
def test_every_template_renders_mail_client_safe_html(renderer: EmailRenderer, name: str) -> None:
    out = renderer.render(name, sample(name))
    assert isinstance(out, RenderedEmail)
    assert out.subject and "\n" not in out.subject and out.subject == out.subject.strip()
    assert "  " not in out.subject
    lowered = out.html.lower()
    assert lowered.startswith("<!doctype html>")
    assert "<table" in lowered
    for forbidden in ("<style", "<link", "<script", "<img", "class="):
        assert forbidden not in lowered, forbidden
    assert re.search(r"\b(?:src|href)=\"(?!mailto:)", lowered) is None  # no external resources
    assert "{{" not in out.html + out.text and "{%" not in out.html + out.text
    assert out.text.endswith("\n") and not out.text.startswith("\n")
    assert "Orion Shop" in out.text and "Orion Shop" in out.html


@pytest.mark.parametrize("name", ORDER_TEMPLATES)
def test_order_templates_show_lines_and_total(renderer: EmailRenderer, name: str) -> None:
    out = renderer.render(name, order_context(STATUS[name], "out of stock"))
    assert ORDER_ID[:8] in out.subject
    assert ORDER_ID in out.text and ORDER_ID in out.html

    # HTML: one table row per line with name, SKU, quantity, unit price and line total.
    rows = [text_only(row) for row in re.findall(r"<tr>.*?</tr>", out.html, re.S)]
    for line in LINES:
        cells = [line["name"], line["sku"], str(line["quantity"]), line["unit_price"]]
        expected = " ".join([*cells, line["line_total"]])
        assert expected in rows, (expected, rows)
    assert any(row == "Order total 32.25 EUR" for row in rows)

    # Plain text says the same.
    assert "- Desk lamp (SKU LAMP-01): 2 x 12.50 EUR = 25.00 EUR" in out.text
    assert "- Wireless mouse (SKU MOUSE-7): 1 x 7.25 EUR = 7.25 EUR" in out.text
    assert "Order total: 32.25 EUR" in out.text


def test_subjects(renderer: EmailRenderer) -> None:
    def subject(name: str, status: str) -> str:
        return renderer.render(name, order_context(status)).subject

    assert subject("order_received", "PENDING") == "Your order 1f2e3d4c has been received"
    assert subject("order_processing", "CONFIRMED") == (
        "Your order 1f2e3d4c is confirmed and being processed"
    )
    assert subject("order_fulfilled", "FULFILLED") == "Your order 1f2e3d4c has been shipped"
    assert subject("order_failed", "REJECTED") == "We could not accept your order 1f2e3d4c"
    assert subject("order_failed", "PAYMENT_FAILED") == (
        "Payment for your order 1f2e3d4c did not go through"
    )
    assert subject("order_cancelled", "CANCELLED") == "Your order 1f2e3d4c has been cancelled"
    low = renderer.render("low_stock", STOCK_CONTEXT).subject
    assert low == "Low stock: Desk lamp (LAMP-01) has 3 left"


def test_order_failed_says_why(renderer: EmailRenderer) -> None:
    declined = renderer.render("order_failed", order_context("PAYMENT_FAILED", "card declined"))
    assert "Reason: card declined" in declined.text
    assert "Reason: card declined" in text_only(declined.html)
    assert "payment did not go through" in declined.text.lower()

    rejected = renderer.render("order_failed", order_context("REJECTED", "LAMP-01 is sold out"))
    assert "Reason: LAMP-01 is sold out" in rejected.text
    assert "could not accept your order" in rejected.text

    unknown = renderer.render("order_failed", order_context("REJECTED", None))
    assert "Reason: we could not complete the order" in unknown.text
    assert "None" not in unknown.text


def test_order_cancelled_reason_is_optional(renderer: EmailRenderer) -> None:
    with_reason = renderer.render("order_cancelled", order_context("CANCELLED", "asked by you"))
    assert "Reason: asked by you" in with_reason.text
    assert "Reason: asked by you" in text_only(with_reason.html)
    without = renderer.render("order_cancelled", order_context("CANCELLED", None))
    assert "Reason" not in without.text and "Reason" not in without.html
    assert "None" not in without.text


def test_low_stock_alert(renderer: EmailRenderer) -> None:
    out = renderer.render("low_stock", STOCK_CONTEXT)
    for expected in ("Desk lamp", "LAMP-01", "Available: 3", "Alert threshold: 5"):
        assert expected in " ".join(out.text.split()), expected
    shown = text_only(out.html)
    for expected in ("Desk lamp", "SKU LAMP-01", "Available 3", "Alert threshold 5"):
        assert expected in shown, expected


def test_html_escapes_product_names(renderer: EmailRenderer) -> None:
    evil = "<script>alert('x')</script> & <b>bold</b>"
    lines = [{**LINES[0], "name": evil}]
    out = renderer.render("order_received", order_context(lines=lines))
    assert "<script" not in out.html.lower()
    assert "<b>bold" not in out.html
    assert (
        "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in out.html
    )
    assert evil in out.text  # the text part is not HTML: no escaping there


def test_missing_variable_is_an_error(renderer: EmailRenderer) -> None:
    context = order_context()
    del context["order"]["total"]
    with pytest.raises(jinja2.UndefinedError, match="total"):
        renderer.render("order_received", context)
    with pytest.raises(jinja2.UndefinedError, match="reason"):
        renderer.render("order_failed", {"shop": SHOP, "order": order_context()["order"]})
    with pytest.raises(jinja2.UndefinedError, match="stock"):
        renderer.render("low_stock", {"shop": SHOP})


def test_unknown_template(renderer: EmailRenderer) -> None:
    with pytest.raises(KeyError, match="unknown email template 'order_lost'.*order_received"):
        renderer.render("order_lost", order_context())


def test_custom_directory(tmp_path: Path) -> None:
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello" / "subject.txt").write_text("  Hello\n  {{ name }}  \n")
    (tmp_path / "hello" / "body.txt").write_text("{% if name %}\nHi {{ name }}!\n{% endif %}\n")
    (tmp_path / "hello" / "body.html").write_text("<p>Hi {{ name }}</p>")
    (tmp_path / "incomplete").mkdir()
    (tmp_path / "incomplete" / "subject.txt").write_text("x")
    renderer = EmailRenderer(tmp_path)
    assert renderer.templates == ("hello",)
    out = renderer.render("hello", {"name": "<Ada>"})
    assert out == RenderedEmail("Hello <Ada>", "Hi <Ada>!\n", "<p>Hi &lt;Ada&gt;</p>\n")
    with pytest.raises(FileNotFoundError):
        EmailRenderer(tmp_path / "missing")


# --------------------------------------------------------------------------- compose


def parse(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_compose_multipart_alternative(renderer: EmailRenderer) -> None:
    lines = [{**LINES[0], "name": "Lampe für Käthe €"}]
    rendered = renderer.render("order_received", order_context(lines=lines))
    msg = compose(
        rendered,
        sender="Orion Shop <shop@orion.local>",
        to=["ada@example.com", "audit@orion.local"],
        headers={"X-Correlation-ID": "corr-1", "X-Orion-Notification-Id": "n-42"},
    )
    got = parse(msg)
    assert got.get_content_type() == "multipart/alternative"
    assert got["From"] == "Orion Shop <shop@orion.local>"
    assert got["To"] == "ada@example.com, audit@orion.local"
    assert got["Subject"] == rendered.subject
    assert got["Date"] is not None
    assert re.fullmatch(r"<[^@>]+@orion\.local>", got["Message-ID"])
    assert got["X-Correlation-ID"] == "corr-1"
    assert got["X-Orion-Notification-Id"] == "n-42"

    plain, rich = list(got.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert rich.get_content_type() == "text/html"
    assert plain.get_content_charset() == rich.get_content_charset() == "utf-8"
    assert isinstance(plain, EmailMessage) and isinstance(rich, EmailMessage)
    assert plain.get_content() == rendered.text
    assert rich.get_content() == rendered.html
    assert "Lampe für Käthe €" in plain.get_content()


def test_compose_explicit_message_id_and_validation() -> None:
    rendered = RenderedEmail("Hi", "Hello\n", "<p>Hello</p>\n")
    msg = compose(rendered, sender="shop@orion.local", to=["a@b.c"], message_id="<fixed@x>")
    assert parse(msg)["Message-ID"] == "<fixed@x>"
    with pytest.raises(ValueError, match="recipient"):
        compose(rendered, sender="shop@orion.local", to=[])
    with pytest.raises(ValueError, match="Subject"):
        compose(rendered, sender="shop@orion.local", to=["a@b.c"], headers={"Subject": "x"})


# --------------------------------------------------------------------------- SMTP URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:1025", SmtpServer("127.0.0.1", 1025, "none")),
        ("smtp://mail.example.com", SmtpServer("mail.example.com", 25, "none")),
        ("smtp://mail.example.com/", SmtpServer("mail.example.com", 25, "none")),
        ("smtp://mail.example.com?starttls=true", SmtpServer("mail.example.com", 587, "starttls")),
        (
            "smtp://mail.example.com:2587?starttls=1",
            SmtpServer("mail.example.com", 2587, "starttls"),
        ),
        ("smtp://mail.example.com?starttls=false", SmtpServer("mail.example.com", 25, "none")),
        ("smtps://mail.example.com", SmtpServer("mail.example.com", 465, "tls")),
        ("SMTPS://Mail.Example.com:2465", SmtpServer("mail.example.com", 2465, "tls")),
        ("smtp://[::1]:1025", SmtpServer("::1", 1025, "none")),
        (
            "smtp://relay@example.com:p%40ss%3Aw%2Frd@mail.example.com:587"
            "?starttls=true&from=noreply%40example.com",
            SmtpServer(
                "mail.example.com",
                587,
                "starttls",
                username="relay@example.com",
                password="p@ss:w/rd",
                from_address="noreply@example.com",
            ),
        ),
        (
            "smtps://user:secret@mail.example.com?from=Shop%20%3Cshop%40example.com%3E",
            SmtpServer(
                "mail.example.com",
                465,
                "tls",
                username="user",
                password="secret",
                from_address="Shop <shop@example.com>",
            ),
        ),
    ],
)
def test_smtp_url(url: str, expected: SmtpServer) -> None:
    assert SmtpServer.from_url(url) == expected


def test_smtp_server_label_and_repr_hide_password() -> None:
    server = SmtpServer.from_url("smtp://bob:hunter2@mail.example.com:2525?starttls=true")
    assert server.label == "smtp://mail.example.com:2525"
    assert SmtpServer.from_url("smtps://bob:hunter2@mail.example.com").label == (
        "smtps://mail.example.com:465"
    )
    assert SmtpServer("::1", 25, "none").label == "smtp://[::1]:25"
    for shown in (repr(server), str(server), f"{server}", f"{server!r}", str([server])):
        assert "hunter2" not in shown
        assert "mail.example.com" in shown


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://mail.example.com", "scheme"),
        ("mail.example.com:25", "scheme"),
        ("", "scheme"),
        ("smtp://", "no host"),
        ("smtp://:25", "no host"),
        ("smtp://user:hunter2@:25", "no host"),
        ("smtp://mail.example.com:notaport", "port"),
        ("smtp://user:hunter2@mail.example.com:99999", "port"),
        ("smtp://mail.example.com:0", "port"),
        ("smtp://mail.example.com/inbox", "path"),
        ("smtp://mail.example.com?starttls=maybe", "starttls"),
        ("smtp://mail.example.com?tls=true", "unknown parameter"),
        ("smtp://mail.example.com?starttls=true&starttls=false", "repeated"),
        ("smtps://mail.example.com?starttls=true", "implicit TLS"),
        ("smtp://mail.example.com?from=nobody", "from address"),
    ],
)
def test_bad_smtp_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        SmtpServer.from_url(url)
    assert "hunter2" not in str(caught.value)


def test_smtp_server_validation() -> None:
    with pytest.raises(ValueError, match="security"):
        SmtpServer("h", 25, "ssl")
    with pytest.raises(ValueError, match="username"):
        SmtpServer("h", 25, "none", password="x")


def test_error_classes() -> None:
    assert TemporaryEmailError("x").temporary is True
    assert PermanentEmailError("x", server="smtp://h:25").temporary is False
    assert PermanentEmailError("x", server="smtp://h:25").server == "smtp://h:25"
    assert EmailError("x", temporary=False).temporary is False
    assert issubclass(TemporaryEmailError, EmailError) and issubclass(
        PermanentEmailError, EmailError
    )
