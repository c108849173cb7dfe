"""TLS and mutual TLS for both OTLP receivers (`OTEL_BRIDGE_TLS_*`).

One certificate and key serve the gRPC and the HTTP listener, so a sender sees the same identity
on either port. With a client CA, both listeners require a client certificate signed by it
(mTLS); without one they serve server-authenticated TLS only. When TLS is on, neither listener
accepts plaintext. `Config.from_env` has already checked that the files exist, are readable and
load (see `config._tls_problems`), so nothing here has to explain a bad file at runtime.

TLS 1.2 is the floor on both: grpc core refuses older versions by default (its server minimum is
TLS 1.2), and the HTTP listener's `ssl.SSLContext` gets `minimum_version` set explicitly rather
than relying on Python's current default. Key material is read into memory for gRPC only and is
never logged.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from otel_bridge.config import Config

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: mutual TLS, a client certificate is required

    @classmethod
    def from_config(cls, config: Config) -> TlsSettings | None:
        """None when TLS is off (no certificate configured)."""
        if not config.tls_cert_file or not config.tls_key_file:
            return None
        return cls(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file or None)

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    @property
    def mode(self) -> str:
        """`TLS` or `mTLS`, for the startup log line."""
        return "mTLS" if self.mutual else "TLS"

    def grpc_credentials(self) -> grpc.ServerCredentials:
        import grpc

        root = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        return grpc.ssl_server_credentials(
            [pair], root_certificates=root, require_client_auth=self.mutual
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for `uvicorn.Config`."""
        return {
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_ca_certs": self.client_ca_file,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if self.mutual else ssl.CERT_NONE,
        }

    @staticmethod
    def enforce_minimum_version(context: ssl.SSLContext | None) -> None:
        """Raise the floor of the context uvicorn built from `uvicorn_options()` (after
        `uvicorn.Config.load()`, before the listener exists). Done on the built context rather
        than with uvicorn's `ssl_context_factory`, which older uvicorn releases lack."""
        if context is None:
            raise RuntimeError("uvicorn built no SSL context although TLS is configured")
        context.minimum_version = MINIMUM_VERSION
