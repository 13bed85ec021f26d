"""The certificates the secure local stack makes: a client trusting the CA reaches the server
by name and address, with its certificate when the server asks for one; the expired client
certificate and a client trusting another CA are refused."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from orion_devstack.certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def _handshake(certs: Certs, client: ssl.SSLContext, host: str) -> bytes:
    """What the server says once the handshake is done (b"" or an error when it refused)."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    server.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    server.verify_mode = ssl.CERT_REQUIRED

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    listening = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
    port = listening.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client, server_hostname=host), timeout=10)
        said = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        return said
    finally:
        listening.close()


def _client(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_client_trusting_the_ca_reaches_the_server_with_its_certificate(certs: Certs, host: str) -> None:
    assert await _handshake(certs, _client(certs.ca, certs.client_cert, certs.client_key), host) == b"hello"


async def test_the_expired_client_certificate_is_refused(certs: Certs) -> None:
    # TLS 1.3: the server checks the client's certificate after the client's side of the
    # handshake, so the refusal shows as an error or as a connection closed unanswered.
    try:
        said = await _handshake(certs, _client(certs.ca, certs.expired_client_cert, certs.expired_client_key), "127.0.0.1")
    except (ssl.SSLError, ConnectionError):
        said = b""
    assert said == b""


async def test_a_client_trusting_another_ca_refuses_the_server(certs: Certs) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(certs, _client(certs.other_ca, certs.client_cert, certs.client_key), "127.0.0.1")


def test_keys_are_readable_by_their_owner_only(certs: Certs) -> None:
    for key in (certs.server_key, certs.client_key, certs.server_chain):
        assert key.stat().st_mode & 0o077 == 0
