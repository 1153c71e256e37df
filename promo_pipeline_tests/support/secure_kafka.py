"""A KRaft broker secured like the seed's managed Kafka: SASL_SSL, SCRAM-SHA-512, private CA.

Its only client listener is SASL_SSL; the certificates come from a throwaway CA made with
openssl, and the SCRAM users are written into the metadata log when the storage is formatted,
so there is no window in which the broker runs without them.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

from promo_pipeline.stack._proc import require_tool
from promo_pipeline.stack.errors import CommandFailed
from promo_pipeline.stack.kafka_broker import KafkaBroker

MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "broker-admin"


def _openssl(*args: str, cwd: Path) -> None:
    openssl = require_tool("openssl", "openssl")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandFailed(f"openssl {args[0]}", f"openssl {args[0]} failed:\n{proc.stderr}")


def make_certificates(dir: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Path:
    """A private CA (`ca.pem`) and a broker key + certificate signed by it (`broker.pem`).

    The broker certificate names every host a client may dial, so clients keep hostname
    verification on. Returns the CA file, the one thing clients need.
    """
    dir.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=promo test CA", "-keyout", "ca.key", "-out", "ca.pem",
        cwd=dir,
    )  # fmt: skip
    alt = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts)
    (dir / "broker.ext").write_text(f"subjectAltName={alt}\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}",
        "-keyout", "broker.key", "-out", "broker.csr",
        cwd=dir,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "broker.ext", "-out", "broker.crt",
        cwd=dir,
    )  # fmt: skip
    # Kafka's PEM key store: the unencrypted PKCS#8 key followed by the certificate chain.
    (dir / "broker.pem").write_text(
        (dir / "broker.key").read_text() + (dir / "broker.crt").read_text()
    )
    for secret in ("ca.key", "broker.key", "broker.pem"):
        (dir / secret).chmod(0o600)
    return dir / "ca.pem"


class _TlsBroker(KafkaBroker):
    """A single-node broker whose client listener uses TLS with the test CA: `_listener_props`
    names the listener; the config is written once with the CA, and readable by its owner only
    (it can hold credentials)."""

    def __init__(self, dir: Path, jars_dir: Path, port: int, controller_port: int) -> None:
        super().__init__(dir, jars_dir, port, controller_port)
        self.tls_dir = self.dir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"

    def _listener_props(self) -> dict[str, str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        super()._write_config()
        if not self.ca_file.exists():
            make_certificates(self.tls_dir)
        props = self._listener_props() | {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls_dir / "broker.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
        }
        lines = [
            line
            for line in self.config.read_text().splitlines()
            if line.split("=", 1)[0] not in props
        ]
        lines += [f"{key}={value}" for key, value in props.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)


class SecureKafkaBroker(_TlsBroker):
    """A single-node broker whose client listener is SASL_SSL with SCRAM-SHA-512 users."""

    def __init__(
        self,
        dir: Path,
        jars_dir: Path,
        port: int,
        controller_port: int,
        users: dict[str, str],
    ) -> None:
        super().__init__(dir, jars_dir, port, controller_port)
        self.users = dict(users)
        self.admin_password = secrets.token_urlsafe(24)

    def client_config(self, user: str, password: str) -> dict[str, Any]:
        """confluent-kafka settings for `user`, the same ones the pipeline derives from its env."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": str(self.ca_file),
        }

    def _listener_props(self) -> dict[str, str]:
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_USER}" password="{self.admin_password}";'
        )
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.client.auth": "none",
        }

    def _format_args(self) -> list[str]:
        """The SCRAM credentials of the broker's own user and every client user."""
        return [
            arg
            for user, password in {ADMIN_USER: self.admin_password, **self.users}.items()
            for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={password}]")
        ]

    def _admin_config(self) -> dict[str, Any]:
        return self.client_config(ADMIN_USER, self.admin_password)


def make_client_certificate(
    ca_dir: Path, dir: Path, name: str, passphrase: str
) -> tuple[Path, Path]:
    """A client certificate signed by the CA in `ca_dir` (`<name>.crt`) and its PKCS#8 key
    encrypted with `passphrase` (`<name>.key`), as librdkafka and Java's PEM key store take it.

    PBE-SHA1-3DES, a PKCS#12 scheme that OpenSSL and Java's EncryptedPrivateKeyInfo both read,
    rather than openssl's default PBES2, whose support on the Java side is not relied on here.
    """
    dir.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{name}.plain.key", "-out", f"{name}.csr",
        cwd=dir,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca_dir / "ca.pem"),
        "-CAkey", str(ca_dir / "ca.key"), "-CAcreateserial", "-days", "2",
        "-out", f"{name}.crt",
        cwd=dir,
    )  # fmt: skip
    _openssl(
        "pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", f"{name}.plain.key",
        "-out", f"{name}.key", "-passout", f"pass:{passphrase}",
        cwd=dir,
    )  # fmt: skip
    (dir / f"{name}.plain.key").unlink()
    (dir / f"{name}.key").chmod(0o600)
    return dir / f"{name}.crt", dir / f"{name}.key"


class MutualTlsKafkaBroker(_TlsBroker):
    """A single-node broker whose only client listener is SSL with `ssl.client.auth=required`:
    a client without a certificate signed by the test CA is refused; no SASL."""

    def _listener_props(self) -> dict[str, str]:
        return {
            "listeners": f"SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SSL://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "SSL:SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SSL",
            "ssl.client.auth": "required",
        }

    def _admin_config(self) -> dict[str, Any]:
        """The broker's own certificate serves as the readiness probe's client certificate."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.ca_file),
            "ssl.certificate.location": str(self.tls_dir / "broker.crt"),
            "ssl.key.location": str(self.tls_dir / "broker.key"),
        }
