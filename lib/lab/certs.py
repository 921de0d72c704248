"""The lab's certificates: one CA, and a certificate per host for TLS both ways.

A host certificate carries the host's name and addresses (subject alternative names) and both TLS
usages: the Prefect server presents it to clients, and Dask uses it in both directions (mutual TLS: a
scheduler, worker or client without a certificate from this CA is refused). Private keys are written
0600 before their content; the CA is reused when it exists, so adding a host does not invalidate the
others.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from labpipe.errors import ConfigError
from labpipe.files import atomic_path

CA_NAME = "ca"
VALID_DAYS = 825  # what browsers accept for a server certificate


@dataclass(frozen=True)
class HostCert:
    host: str
    cert: Path
    key: Path


def write_private(path: Path, data: bytes) -> Path:
    """``data`` at ``path``, mode 0600 from before its first byte, published atomically."""
    with atomic_path(path) as staged:
        staged.touch(mode=0o600)
        staged.chmod(0o600)
        staged.write_bytes(data)
    return path


def _write_public(path: Path, data: bytes) -> Path:
    with atomic_path(path) as staged:
        staged.write_bytes(data)
        staged.chmod(0o644)
    return path


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labpipe"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def ensure_ca(folder: Path, lab: str = "lab") -> tuple[Path, Path]:
    """``ca.pem`` and ``ca-key.pem`` in ``folder``: the existing ones, or a new CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    cert_path, key_path = folder / f"{CA_NAME}.pem", folder / f"{CA_NAME}-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    if cert_path.exists() or key_path.exists():
        raise ConfigError(folder, "holds only one of ca.pem and ca-key.pem", "restore the other, or remove both")
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"labpipe {lab} CA"))
        .issuer_name(_name(f"labpipe {lab} CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def host_cert(folder: Path, host: str, names: list[str]) -> HostCert:
    """``<host>.pem`` and ``<host>-key.pem``, signed by the CA in ``folder``, for ``names`` (IPs or DNS names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from labpipe.files import path_component

    host = path_component(host, what="host name")
    if host == CA_NAME:
        raise ConfigError(host, "is the CA's file name", "name the host differently")
    ca_cert_path, ca_key_path = ensure_ca(folder)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    alt_names: list[x509.GeneralName] = []
    for name in dict.fromkeys([host, *names]):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_path = write_private(folder / f"{host}-key.pem", _key_pem(key))
    cert_path = _write_public(folder / f"{host}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return HostCert(host, cert_path, key_path)


def make_certs(folder: Path, hosts: dict[str, list[str]], lab: str = "lab") -> dict[str, HostCert]:
    """The CA (kept when it exists) and a fresh certificate for every host in ``hosts`` (name -> addresses)."""
    ensure_ca(Path(folder), lab)
    return {host: host_cert(Path(folder), host, names) for host, names in hosts.items()}
