"""Certificates made on the fly for the secure local stack and its tests: a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate for mutual TLS, an expired
client certificate, and a second CA that signed none of them (a "wrong CA" for tests).
Every key is unencrypted PKCS#8 PEM, which Kafka (ssl.keystore.type=PEM), PostgreSQL,
aiosmtpd and Python's ssl module all read."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Certs:
    """Where each PEM file is."""

    ca: Path  # the CA every client is told to trust
    server_cert: Path
    server_key: Path
    server_chain: Path  # the server's key, its certificate and the CA's, in one file (Kafka)
    client_cert: Path
    client_key: Path
    expired_client_cert: Path  # signed by the CA, valid until yesterday
    expired_client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Orion local stack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common)).issuer_name(_name(common))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, common: str, *, server: bool,
    expired: bool = False, hosts: tuple[str, ...] = HOSTS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else (
        now - dt.timedelta(minutes=5), now + dt.timedelta(days=30))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # A server certificate may also be shown as a client's (a broker connecting to itself).
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server
            else [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_certs(directory: Path, *, hosts: tuple[str, ...] = HOSTS, client_name: str = "orion") -> Certs:
    """Write a fresh CA and certificates into `directory` (created; keys readable by the
    owner only) and say where they are."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("Orion local CA")
    _, other = _ca("Some other CA")
    server_key, server = _leaf(ca_key, ca, hosts[0], server=True, hosts=hosts)
    client_key, client = _leaf(ca_key, ca, client_name, server=False)
    old_key, old = _leaf(ca_key, ca, client_name, server=False, expired=True)
    files = {
        "ca": _pem_cert(ca), "server_cert": _pem_cert(server), "server_key": _pem_key(server_key),
        "server_chain": _pem_key(server_key) + _pem_cert(server) + _pem_cert(ca),
        "client_cert": _pem_cert(client), "client_key": _pem_key(client_key),
        "expired_client_cert": _pem_cert(old), "expired_client_key": _pem_key(old_key),
        "other_ca": _pem_cert(other),
    }
    paths = {}
    for name, data in files.items():
        path = directory / f"{name}.pem"
        path.write_bytes(data)
        if name.endswith("key") or name == "server_chain":
            path.chmod(0o600)
        paths[name] = path
    return Certs(**paths)


def main() -> None:
    """`python -m orion_devstack.certs DIR [HOST ...]`: write the certificates into DIR for the
    given host names (docker-compose.secure.yml uses `kafka` and `postgres`)."""
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m orion_devstack.certs DIR [HOST ...]")
    hosts = tuple(sys.argv[2:]) or HOSTS
    certs = make_certs(Path(sys.argv[1]), hosts=hosts)
    print(f"wrote certificates for {', '.join(hosts)} into {certs.ca.parent}")


if __name__ == "__main__":
    main()
