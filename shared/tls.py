"""TLS for a secured NATS (`autotune up --secure`): a private CA of this controller and the server's
certificate, signed by it, naming the addresses clients dial. Every client (the stack's services, the
CLI, deployed nodes) verifies the server against the CA; the users and passwords stay as they are.

    <data>/nats/tls/ca.pem           the CA certificate: what `autotune deploy` copies to each host
    <data>/nats/tls/ca-key.pem       its key (0600); never leaves this machine
    <data>/nats/tls/server.pem       the server's certificate (its names: `names()`)
    <data>/nats/tls/server-key.pem   its key (0600)

The CA is made once and kept, so hosts deployed earlier keep trusting the server; the server's
certificate is issued again when an address it must name is missing. To use your own PKI, put your
files under those names (`ca-key.pem` may stay away): they are used as they are while they name the
addresses; without the CA's key, a certificate that lacks one is an error (TlsError), never replaced.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from autotune.shared.security import TlsFiles, write_private

CA, CA_KEY, CERT, KEY = "ca.pem", "ca-key.pem", "server.pem", "server-key.pem"


class TlsError(Exception):
    """The TLS files cannot serve the addresses asked for (and autotune may not replace them)."""


def ensure(directory: Path, addresses: list[str]) -> TlsFiles:
    """The server's TLS files in `directory`, made or completed so that the certificate names every one
    of `addresses` (IP addresses or DNS names); `TlsFiles.ca` is the CA clients trust."""
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    wanted = {a for a in addresses if a and a not in ("0.0.0.0", "::")}
    if not (directory / CA).exists():  # a CA of our own; one that is there (yours) is never replaced
        key, cert = _issue("autotune NATS CA", set(), None)
        write_private(directory / CA_KEY, _key_pem(key))
        (directory / CA).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not (directory / CERT).exists() or not wanted <= names(directory / CERT):
        if not (directory / CA_KEY).exists():
            missing = sorted(wanted - names_if_any(directory / CERT))
            raise TlsError(f"{directory / CERT} does not name {', '.join(missing) or 'anything'} and there is no {directory / CA_KEY} to issue one: "
                           f"add those names to your server certificate, or remove {directory} to let autotune make its own CA")  # fmt: skip
        ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        ca = _load(directory / CA)
        key, cert = _issue("autotune NATS server", wanted | names_if_any(directory / CERT), (ca, ca_key))
        write_private(directory / KEY, _key_pem(key))
        (directory / CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(cert=str(directory / CERT), key=str(directory / KEY), ca=str(directory / CA))


def names(cert_file: Path) -> set[str]:
    """The addresses and DNS names a certificate is valid for (its subjectAltName)."""
    from cryptography import x509

    try:
        san = _load(cert_file).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def names_if_any(cert_file: Path) -> set[str]:
    return names(cert_file) if cert_file.exists() else set()


def _load(path: Path):
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def _key_pem(key) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _issue(common_name: str, sans: set[str], issuer):
    """(key, certificate): a CA's when `issuer` is None, else a server's for `sans`, signed by issuer=(cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder().subject_name(subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
    )  # fmt: skip
    if issuer is None:
        b = b.issuer_name(subject).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        return key, b.sign(key, hashes.SHA256())
    ca, ca_key = issuer
    alt: list[x509.GeneralName] = []
    for name in sorted(sans):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    b = b.issuer_name(ca.subject).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


__all__ = ["TlsError", "ensure", "names"]
