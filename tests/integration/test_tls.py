"""TLS and mutual TLS (`OTEL_BRIDGE_TLS_*`) on both receivers, with certificates made here: a CA,
a server certificate for 127.0.0.1/localhost, a client certificate from the CA, and a second CA
nobody trusts with a client certificate of its own. Real clients: the OTel SDK's gRPC exporter,
raw grpc channels (for the exact status of a refused handshake), httpx and plain `ssl` sockets.
Every refusal is checked to store nothing; every success to store its rows."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_bridge.config import Config, ConfigError
from otel_bridge.receiver.tls import TlsSettings
from otel_bridge.workload import export_request, random_requests, spans_for

TOKEN = "tok-tls-5e8a1c"
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
API_ROWS = "SELECT count(*) FROM api_performance_metrics"
PROTOBUF = {"content-type": "application/x-protobuf"}
CERT, KEY, CA = (
    "OTEL_BRIDGE_TLS_CERT_FILE",
    "OTEL_BRIDGE_TLS_KEY_FILE",
    "OTEL_BRIDGE_TLS_CLIENT_CA_FILE",
)


# --- a throwaway PKI ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # trusted by nobody
    rogue_client_cert: Path  # signed by rogue_ca
    rogue_client_key: Path


Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _issue(common_name: str, issuer: Issued | None = None, role: str = "ca") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=role == "ca", path_length=None), critical=True)
    )
    if role == "ca":
        usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False)  # fmt: skip
        builder = builder.add_extension(usage, critical=True)
    else:
        if role == "server":
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        purpose = (
            ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = _issue("otel-bridge test CA"), _issue("untrusted CA")
    ca_path, _ = _write(directory, "ca", *ca)
    rogue_ca_path, _ = _write(directory, "rogue-ca", *rogue_ca)
    server = _write(directory, "server", *_issue("otel-bridge", ca, role="server"))
    client = _write(directory, "client", *_issue("checkout-service", ca, role="client"))
    rogue = _write(directory, "rogue-client", *_issue("checkout-service", rogue_ca, role="client"))
    return Pki(ca_path, *server, *client, rogue_ca_path, *rogue)


def _tls_env(pki: Pki, mutual: bool = False) -> dict[str, str]:
    env = {CERT: str(pki.server_cert), KEY: str(pki.server_key)}
    return {**env, CA: str(pki.ca)} if mutual else env


# --- clients ------------------------------------------------------------------------------------
def _https_context(
    trusted_ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trusted_ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context  # fmt: skip


def _grpc_credentials(trusted_ca: Path, cert: Path | None = None, key: Path | None = None) -> Any:
    return grpc.ssl_channel_credentials(
        root_certificates=trusted_ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def _grpc_export_status(endpoint: str, credentials: Any) -> grpc.StatusCode:
    """An empty trace Export over a raw channel: the status a refused handshake really gets."""
    channel = (
        grpc.secure_channel(endpoint, credentials)
        if credentials
        else grpc.insecure_channel(endpoint)
    )
    with channel:
        export = channel.unary_unary(TRACES, request_serializer=None, response_deserializer=None)
        try:
            export(b"", timeout=20, metadata=(("authorization", f"Bearer {TOKEN}"),))
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK  # fmt: skip


def _traces_body(seed: int, count: int = 2) -> bytes:
    request = export_request(random_requests(count, seed=seed, error_rate=0), stable=True)
    return bytes(request.SerializeToString())


def _handshake_version(port: int, context: ssl.SSLContext, alpn: list[str] | None = None) -> str:
    """Open a TLS connection with `context` and return the negotiated version (raises if refused)."""
    if alpn:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return str(tls.version())


def _allow_tls_1_0(context: ssl.SSLContext, up_to_1_1: bool = False) -> ssl.SSLContext:
    """Let `context` speak TLS 1.0/1.1 (OpenSSL's security level refuses them otherwise); with
    `up_to_1_1`, nothing newer. The versions are deprecated in Python: that is the point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        if up_to_1_1:
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.fixture
def tls11_accepting_port(pki: Pki) -> Iterator[int]:
    """Control: a plain ssl server that accepts TLS 1.1, proving the capped client really offers
    it here (so a refusal by otel-bridge is the version floor, not a client that cannot speak)."""
    server = _allow_tls_1_0(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    server.load_cert_chain(pki.server_cert, pki.server_key)
    listener = socket.create_server(("127.0.0.1", 0))

    def accept_one() -> None:
        connection, _ = listener.accept()
        with connection, contextlib.suppress(OSError):  # the client reports the outcome
            server.wrap_socket(connection, server_side=True).close()

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    thread.join(timeout=20)
    listener.close()


# --- TLS ----------------------------------------------------------------------------------------
def _spans(seed: int, count: int = 2) -> Any:
    return spans_for(random_requests(count, seed=seed, error_rate=0), stable=True)


def test_tls_with_tokens_serves_grpc_and_http_and_refuses_plaintext_and_untrusted_servers(
    db_url: str, start_bridge: Any, rows: Any, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bridge = start_bridge(db_url, **_tls_env(pki), OTEL_BRIDGE_AUTH_TOKENS=TOKEN)
    assert f"OTLP/gRPC receiver listening on {bridge.endpoint} (TLS)" in caplog.text
    assert f"OTLP/HTTP receiver listening on {bridge.http_endpoint} (TLS)" in caplog.text
    bearer = {"authorization": f"Bearer {TOKEN}"}
    our_ca = _grpc_credentials(pki.ca)

    # gRPC: the SDK exporter trusting our CA, with the bearer token, stores its spans.
    trusted = OTLPSpanExporter(
        endpoint=bridge.endpoint, credentials=our_ca, timeout=20, headers=bearer
    )
    assert trusted.export(_spans(11, count=3)) == SpanExportResult.SUCCESS
    assert rows(db_url, API_ROWS)[0][0] == 3
    # Tokens still apply inside TLS.
    anonymous = OTLPSpanExporter(endpoint=bridge.endpoint, credentials=our_ca, timeout=20)
    assert anonymous.export(_spans(12)) == SpanExportResult.FAILURE
    # A plaintext sender gets no answer from a TLS port; a sender trusting another CA refuses us.
    plaintext = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True, timeout=2, headers=bearer)
    assert plaintext.export(_spans(13)) == SpanExportResult.FAILURE
    status = _grpc_export_status
    assert status(bridge.endpoint, None) == grpc.StatusCode.UNAVAILABLE
    assert status(bridge.endpoint, _grpc_credentials(pki.rogue_ca)) == grpc.StatusCode.UNAVAILABLE
    assert status(bridge.endpoint, our_ca) == grpc.StatusCode.OK  # control: same call, right CA
    assert rows(db_url, API_ROWS)[0][0] == 3

    # HTTP: the same certificate on the other port.
    url = f"https://{bridge.http_endpoint}/v1/traces"
    with httpx.Client(verify=_https_context(pki.ca), timeout=20) as client:
        stored = client.post(url, content=_traces_body(seed=14), headers={**PROTOBUF, **bearer})
        assert stored.status_code == 200, stored.text
        refused = client.post(url, content=_traces_body(seed=15), headers=PROTOBUF)
        assert refused.status_code == 401
    assert rows(db_url, API_ROWS)[0][0] == 5
    plain_url, headers = f"http://{bridge.http_endpoint}/v1/traces", {**PROTOBUF, **bearer}
    with pytest.raises(httpx.TransportError):  # plaintext HTTP to the TLS port
        httpx.post(plain_url, content=_traces_body(seed=16), headers=headers, timeout=20)
    rogue_ca = _https_context(pki.rogue_ca)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.post(url, content=_traces_body(seed=17), headers=headers, verify=rogue_ca, timeout=20)
    assert rows(db_url, API_ROWS)[0][0] == 5
    assert "PRIVATE KEY" not in caplog.text and TOKEN not in caplog.text
    for exporter in (trusted, anonymous, plaintext):
        exporter.shutdown()


def test_tls_below_1_2_is_refused_on_both_ports(
    db_url: str, start_bridge: Any, pki: Pki, tls11_accepting_port: int
) -> None:
    bridge = start_bridge(db_url, **_tls_env(pki))
    # The local OpenSSL can still speak TLS 1.1 when asked to, so the refusals below are the floor.
    tls_1_1 = _allow_tls_1_0(_https_context(pki.ca), up_to_1_1=True)
    assert _handshake_version(tls11_accepting_port, tls_1_1) == "TLSv1.1"
    http_port, grpc_port = int(bridge.http_endpoint.rsplit(":", 1)[1]), bridge.port
    # HTTP: the SSLContext's minimum_version; gRPC: grpc core's own TLS 1.2 minimum.
    for port, alpn in ((http_port, None), (grpc_port, ["h2"])):
        with pytest.raises(ssl.SSLError, match="(?i)protocol|version"):
            _handshake_version(port, _allow_tls_1_0(_https_context(pki.ca), up_to_1_1=True), alpn)
        default = _handshake_version(port, _https_context(pki.ca), alpn)  # control
        assert default in ("TLSv1.2", "TLSv1.3")
        capped = _https_context(pki.ca)
        capped.maximum_version = ssl.TLSVersion.TLSv1_2
        assert _handshake_version(port, capped, alpn) == "TLSv1.2"  # 1.2 itself is allowed


# --- mutual TLS ---------------------------------------------------------------------------------
def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    db_url: str,
    start_bridge: Any,
    rows: Any,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    bridge = start_bridge(db_url, **_tls_env(pki, mutual=True))
    assert f"OTLP/gRPC receiver listening on {bridge.endpoint} (mTLS)" in caplog.text
    assert f"OTLP/HTTP receiver listening on {bridge.http_endpoint} (mTLS)" in caplog.text

    # gRPC, configured the way README tells apps to: the standard OTEL_EXPORTER_OTLP_* variables.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki.ca))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(pki.client_cert))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(pki.client_key))
    with_cert = OTLPSpanExporter(endpoint=f"https://{bridge.endpoint}", timeout=20)
    assert with_cert.export(_spans(21, count=3)) == SpanExportResult.SUCCESS
    assert rows(db_url, API_ROWS)[0][0] == 3
    our_ca = _grpc_credentials(pki.ca)
    without_cert = OTLPSpanExporter(endpoint=bridge.endpoint, credentials=our_ca, timeout=2)
    assert without_cert.export(_spans(22)) == SpanExportResult.FAILURE
    status = _grpc_export_status
    assert status(bridge.endpoint, our_ca) == grpc.StatusCode.UNAVAILABLE
    rogue = _grpc_credentials(pki.ca, pki.rogue_client_cert, pki.rogue_client_key)
    assert status(bridge.endpoint, rogue) == grpc.StatusCode.UNAVAILABLE
    own = _grpc_credentials(pki.ca, pki.client_cert, pki.client_key)
    assert status(bridge.endpoint, own) == grpc.StatusCode.OK  # control: same call, our cert
    assert rows(db_url, API_ROWS)[0][0] == 3

    url = f"https://{bridge.http_endpoint}/v1/traces"
    own_context = _https_context(pki.ca, pki.client_cert, pki.client_key)
    stored = httpx.post(
        url, content=_traces_body(seed=23), headers=PROTOBUF, verify=own_context, timeout=20
    )
    assert stored.status_code == 200, stored.text
    assert rows(db_url, API_ROWS)[0][0] == 5
    # TLS 1.3 finishes the client's side of the handshake before the server checks the client's
    # certificate, so the client only sees the connection closed before any response. The request
    # above differs from these only in the certificate: that is what is refused.
    no_cert = _https_context(pki.ca)
    rogue_cert = _https_context(pki.ca, pki.rogue_client_cert, pki.rogue_client_key)
    for refused in (no_cert, rogue_cert):
        with pytest.raises(httpx.TransportError):
            httpx.post(
                url, content=_traces_body(seed=24), headers=PROTOBUF, verify=refused, timeout=20
            )
    assert rows(db_url, API_ROWS)[0][0] == 5
    with_cert.shutdown()
    without_cert.shutdown()


# --- configuration ------------------------------------------------------------------------------
def _config(**env: str) -> Config:
    return Config.from_env({"OTEL_BRIDGE_DATABASE_URL": "postgresql://u@db/x", **env})


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        ({CERT: "server"}, KEY, "must be set"),
        ({KEY: "server-key"}, CERT, "must be set"),
        ({CA: "ca"}, CA, "needs"),
        ({CERT: "server", KEY: "missing"}, KEY, "cannot read"),
        ({CERT: "server", KEY: "server-key", CA: "."}, CA, "cannot read"),  # a directory
        ({CERT: "junk", KEY: "server-key"}, CERT, "no PEM certificate"),
        ({CERT: "server", KEY: "client-key"}, KEY, "private key of the certificate"),
        ({CERT: "server", KEY: "encrypted-key"}, KEY, "private key of the certificate"),
        ({CERT: "server", KEY: "server-key", CA: "junk"}, CA, "no PEM CA certificate"),
    ],
)
def test_bad_tls_settings_are_refused_at_start_naming_the_variable(
    pki: Pki, tmp_path: Path, env: dict[str, str], named: str, says: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text(
        "-----BEGIN CERTIFICATE-----\nSECRET-LOOKING-CONTENT\n-----END CERTIFICATE-----\n"
    )
    encrypted = tmp_path / "encrypted-key.pem"
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"hunter2")))  # fmt: skip
    files = {"server": pki.server_cert, "server-key": pki.server_key, "client-key": pki.client_key, "ca": pki.ca,
             "junk": junk, "encrypted-key": encrypted, "missing": tmp_path / "missing.pem", ".": tmp_path}  # fmt: skip
    with pytest.raises(ConfigError) as failure:
        _config(**{name: str(files[value]) for name, value in env.items()})
    message = str(failure.value)
    assert len(failure.value.problems) == 1, message
    assert failure.value.problems[0].startswith(f"{named}: ") and says in message, message
    assert "SECRET-LOOKING-CONTENT" not in message and "BEGIN" not in message


def test_good_tls_settings_give_tls_or_mtls(pki: Pki) -> None:
    assert TlsSettings.from_config(_config()) is None
    tls = TlsSettings.from_config(_config(**_tls_env(pki)))
    assert tls is not None and tls.mode == "TLS"
    assert tls.uvicorn_options()["ssl_cert_reqs"] == ssl.CERT_NONE
    mutual = TlsSettings.from_config(_config(**_tls_env(pki, mutual=True)))
    assert mutual is not None and mutual.mode == "mTLS"
    assert mutual.uvicorn_options()["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert mutual.uvicorn_options()["ssl_ca_certs"] == str(pki.ca)


def test_serve_exits_with_the_variable_named_and_no_file_contents(pki: Pki, tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_BRIDGE_DATA_DIR": str(tmp_path), "OTEL_BRIDGE_GRPC_LISTEN": "127.0.0.1:0",
           "OTEL_BRIDGE_HTTP_LISTEN": "127.0.0.1:0", CERT: str(pki.server_cert), KEY: str(pki.client_key)}  # fmt: skip
    # A receiver that started anyway would run until the timeout: that fails the test too.
    done = subprocess.run([sys.executable, "-m", "otel_bridge.cli", "serve"], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "OTEL_BRIDGE_TLS_KEY_FILE" in done.stderr and "PRIVATE KEY" not in done.stderr
    assert pki.client_key.read_text().splitlines()[1] not in done.stderr
