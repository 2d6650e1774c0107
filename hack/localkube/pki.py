"""Certificates and kubeconfigs: one CA, the API server's serving pair, a client pair per identity."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path) -> None:
        for path, content in ((cert_path, self.cert_pem), (key_path, self.key_pem)):
            path.write_bytes(content)
            path.chmod(0o600)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    ca: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    is_ca: bool = False,
    server_names: Sequence[str] = (),
    server_ips: Sequence[str] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = (ca[0].subject, ca[1]) if ca else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server_names or server_ips:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster's CA; keeps its key so pairs can be issued after the control plane started (nodes)."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> CertificateAuthority:
        key = _new_key()
        return cls(_issue(_name("modeldeploy-local-ca"), key, None, is_ca=True), key)

    @classmethod
    def load(cls, pair: KeyPair) -> CertificateAuthority:
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return cls(x509.load_pem_x509_certificate(pair.cert_pem), key)

    @property
    def pair(self) -> KeyPair:
        return KeyPair(self.cert.public_bytes(serialization.Encoding.PEM), _key_pem(self.key))

    def issue(
        self,
        common_name: str,
        organization: str | None = None,
        *,
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
    ) -> KeyPair:
        key = _new_key()
        cert = _issue(_name(common_name, organization), key, (self.cert, self.key),
                      server_names=server_names, server_ips=server_ips)
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class Pki:
    """Everything the apiserver and its clients need to trust each other."""

    ca: KeyPair
    serving: KeyPair
    clients: dict[str, KeyPair]
    service_account_key_pem: bytes
    service_account_pub_pem: bytes

    @classmethod
    def generate(
        cls,
        client_identities: dict[str, tuple[str, str | None]],
        *,
        service_ip: str,
        server_ips: Sequence[str] = ("127.0.0.1",),
    ) -> Pki:
        ca = CertificateAuthority.generate()
        serving = ca.issue(
            "kube-apiserver",
            server_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          "kubernetes.default.svc.cluster.local"],
            server_ips=[*server_ips, service_ip],
        )
        clients = {label: ca.issue(cn, org) for label, (cn, org) in client_identities.items()}
        sa_key = _new_key()
        return cls(
            ca=ca.pair,
            serving=serving,
            clients=clients,
            service_account_key_pem=_key_pem(sa_key),
            service_account_pub_pem=sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )


def kubeconfig_yaml(server: str, ca_pem: bytes, user: dict[str, str], name: str = "modeldeploy-local") -> str:
    """A kubeconfig (JSON is valid YAML) for one cluster, one user and one context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
    }
    return json.dumps(config, indent=2) + "\n"


def cert_user(pair: KeyPair) -> dict[str, str]:
    return {
        "client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
        "client-key-data": base64.b64encode(pair.key_pem).decode(),
    }


def write_kubeconfig(path: Path, server: str, ca_pem: bytes, pair: KeyPair) -> Path:
    path.write_text(kubeconfig_yaml(server, ca_pem, cert_user(pair)))
    path.chmod(0o600)
    return path
