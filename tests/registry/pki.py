"""A throw-away PKI for the registry tests, made with ``cryptography``.

One CA signs the registry's server certificate (for 127.0.0.1 and
localhost), a client certificate for mutual TLS, and the token issuer's
signing certificate, which the registry trusts through its
``rootcertbundle``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: Another CA's client certificate: one the registry must refuse.
    stranger_cert: Path
    stranger_key: Path
    signing_cert: x509.Certificate
    signing_key: rsa.RSAPrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crishim tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(key: _PrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    key: _PrivateKey,
    usage: list[x509.ObjectIdentifier],
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """Write the CA, server, client and stranger certificates under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("crishim test CA")
    _write_cert(ca, directory / "ca.pem")

    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _leaf(ca, ca_key, "127.0.0.1", server_key, [ExtendedKeyUsageOID.SERVER_AUTH], True)
    _write_cert(server, directory / "server.pem")
    _write_key(server_key, directory / "server-key.pem")

    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _leaf(ca, ca_key, "crishim node", client_key, [ExtendedKeyUsageOID.CLIENT_AUTH])
    _write_cert(client, directory / "client.pem")
    _write_key(client_key, directory / "client-key.pem")

    other, other_key = _ca("some other CA")
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _leaf(other, other_key, "stranger", stranger_key, [ExtendedKeyUsageOID.CLIENT_AUTH])
    _write_cert(stranger, directory / "stranger.pem")
    _write_key(stranger_key, directory / "stranger-key.pem")

    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing = _leaf(ca, ca_key, "crishim token issuer", signing_key, [])
    return Pki(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        stranger_cert=directory / "stranger.pem",
        stranger_key=directory / "stranger-key.pem",
        signing_cert=signing,
        signing_key=signing_key,
    )
