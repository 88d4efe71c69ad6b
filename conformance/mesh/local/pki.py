"""The local mesh's certificate authority: one CA per run, one SPIFFE leaf per workload and waypoint.

Istio proves identity with an X.509 certificate whose URI SAN is `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`
(istiod's CA issues them; Envoy's RBAC `authenticated.principal_name` reads that SAN). The local mesh
does the same with a throwaway CA made by `cryptography`, so that `principals`, `namespaces` and
PERMISSIVE/STRICT are decided on real mTLS handshakes, not on a header a client could forge.

Keys never leave the run's private directory (0700), each key file is 0600, and the directory is
deleted with the run.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A leaf lives as long as a run could; the clock skew margin covers a CA made a moment "in the future".
_VALIDITY = datetime.timedelta(days=2)
_SKEW = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class CertFiles:
    """Where one identity's certificate chain and private key are, as Envoy's TLS contexts read them."""

    spiffe_id: str
    cert: Path
    key: Path


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The URI SAN Istio puts in a workload certificate (security/pkg/pki/util, spiffe.go)."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


class CertificateAuthority:
    """A self-signed EC P-256 root that signs one leaf per identity, writing PEM files into `directory`."""

    def __init__(self, directory: Path, trust_domain: str):
        self.directory = directory
        self.trust_domain = trust_domain
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "istio-authz-conformance"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"local mesh root for {trust_domain}"),
        ])
        self._name = name
        ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        self.root = directory / "root-cert.pem"
        self.root.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, namespace: str, service_account: str) -> CertFiles:
        """Sign a leaf for `spiffe://<td>/ns/<namespace>/sa/<service_account>`, usable as client and server.

        Like istiod's workload certificates: empty subject, a critical URI SAN, both TLS usages. `name`
        only names the files (two workloads may share a service account, hence an identity).
        """
        uri = spiffe_id(self.trust_domain, namespace, service_account)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(self._aki, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        stem = _file_stem(name)
        cert_path = self.directory / f"{stem}.pem"
        key_path = self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
        ))
        return CertFiles(uri, cert_path, key_path)


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only, from the first byte on (no window with looser mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
