"""Throw-away PKI for the local test control plane: a CA, the API server's serving certificate, an
admin client certificate (group system:masters) and the service-account signing key pair."""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# DNS names and IPs the API server answers to: loopback plus the in-cluster service address
# (first IP of the service range the cluster module passes to kube-apiserver).
SERVER_DNS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
              "kubernetes.default.svc.cluster.local")
SERVER_IPS = ("127.0.0.1", "10.0.0.1")


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path   # private, signs service-account tokens
    sa_pub: Path   # public, verifies them


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, key) -> x509.CertificateBuilder:
    now = _dt.datetime.now(_dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=7)))


def generate_pki(directory: Path) -> Pki:
    """Write every key and certificate into `directory` (created) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("cambrian-test-ca")
    ca = (_builder(ca_name, ca_name, ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, org: str | None, usage, san: x509.SubjectAlternativeName | None):
        key = _key()
        b = (_builder(_name(cn, org), ca_name, key)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if san is not None:
            b = b.add_extension(san, critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    san = x509.SubjectAlternativeName(
        [x509.DNSName(d) for d in SERVER_DNS]
        + [x509.IPAddress(ipaddress.ip_address(i)) for i in SERVER_IPS])
    server_key, server = leaf("kube-apiserver", None, [ExtendedKeyUsageOID.SERVER_AUTH], san)
    admin_key, admin = leaf("cambrian-test-admin", "system:masters",
                            [ExtendedKeyUsageOID.CLIENT_AUTH], None)
    sa_key = _key()

    p = Pki(ca_cert=directory / "ca.crt", ca_key=directory / "ca.key",
            server_cert=directory / "apiserver.crt", server_key=directory / "apiserver.key",
            admin_cert=directory / "admin.crt", admin_key=directory / "admin.key",
            sa_key=directory / "sa.key", sa_pub=directory / "sa.pub")
    pem = serialization.Encoding.PEM
    p.ca_cert.write_bytes(ca.public_bytes(pem))
    _write_key(p.ca_key, ca_key)
    p.server_cert.write_bytes(server.public_bytes(pem))
    _write_key(p.server_key, server_key)
    p.admin_cert.write_bytes(admin.public_bytes(pem))
    _write_key(p.admin_key, admin_key)
    _write_key(p.sa_key, sa_key)
    p.sa_pub.write_bytes(sa_key.public_key().public_bytes(
        pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return p
