"""OTLP/HTTP receiver: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`, the browser tracker at
`GET /otel-bridge.js`, and the receiver's own telemetry at `GET /metrics`.

A plain ASGI app served by uvicorn on the service's event loop, with the OTLP/HTTP rules
(https://opentelemetry.io/docs/specs/otlp/#otlphttp): `application/x-protobuf` or
`application/json` (OTLP JSON: hex ids, unknown fields ignored), optional gzip; the answer is in
the request's encoding, errors as `google.rpc.Status`. The body limit counts decompressed bytes
and is enforced while reading, so neither a large body nor a gzip bomb is ever held whole.
Browsers post cross-origin, so CORS (with preflight) is answered for `OTEL_BRIDGE_CORS_ORIGINS`.
The same admission bound and pipeline serve gRPC and HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from otel_bridge.errors import PermanentError, RetryableError
from otel_bridge.receiver.admission import ExportAdmission
from otel_bridge.receiver.auth import UNAUTHENTICATED_MESSAGE, BearerTokens
from otel_bridge.receiver.grpc import export_response
from otel_bridge.receiver.otlp_json import parse_json
from otel_bridge.receiver.status import RetryLog
from otel_bridge.receiver.tls import TlsSettings
from otel_bridge.telemetry import ReceiverTelemetry

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
PATHS = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs"}
TRACKER_PATH = "/otel-bridge.js"
METRICS_PATH = "/metrics"
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class HttpReceiverSettings:
    listen: str = "127.0.0.1:4318"
    max_request_bytes: int = 16 * 1024 * 1024
    retry_after_s: float = 2.0
    cors_origins: tuple[str, ...] = ()  # "*" allows any origin
    tls: TlsSettings | None = None  # None: plaintext
    reuse_port: bool = False  # share the port with other receivers (`serve --workers`)


def parse_origins(text: str | None) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in (text or "").split(",") if o.strip())


class HttpError(Exception):
    def __init__(self, status: int, code: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, list(headers)


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class OtlpHttpApp:
    """The ASGI application; `admission` is the service's bound on Exports, in front of its pipeline."""

    def __init__(self, settings: HttpReceiverSettings, admission: ExportAdmission, tokens: BearerTokens | None = None,
                 telemetry: ReceiverTelemetry | None = None) -> None:  # fmt: skip
        self.settings = settings
        self._place = admission.place  # taken before the request body is read
        self._retry_log = RetryLog(log)
        self._tokens = tokens or BearerTokens(None)
        self._telemetry = telemetry or ReceiverTelemetry()
        self._tracker: bytes | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        cors = self._cors_headers(headers.get("origin"))
        path, method = scope["path"], scope["method"]
        started, code = time.perf_counter(), code_pb2.OK
        try:
            if path == TRACKER_PATH and method in ("GET", "HEAD"):
                await self._tracker_script(send, cors, head=method == "HEAD")
            elif path == METRICS_PATH:
                await self._scrape(method, headers, send)
            elif path not in PATHS:
                raise HttpError(404, code_pb2.NOT_FOUND, f"no such path: {path[:100]}")
            elif method == "OPTIONS":
                await self._preflight(send, headers, cors)
            elif method != "POST":
                raise HttpError(405, code_pb2.UNIMPLEMENTED, f"{method} is not allowed; use POST",
                                [("allow", "POST, OPTIONS")])  # fmt: skip
            elif not self._tokens.allows(headers.get("authorization")):
                raise HttpError(401, code_pb2.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE, [("www-authenticate", "Bearer")])
            else:
                await self._export(PATHS[path], headers, receive, send, cors)
        except HttpError as exc:
            code = exc.code
            await _respond_status(send, exc, _answer_type(headers), cors)
        if method == "POST" and path in PATHS:
            self._telemetry.exported(PATHS[path], "http", code_pb2.Code.Name(code), started)

    # --- Export ----------------------------------------------------------------------------
    async def _export(self, signal: str, headers: dict[str, str], receive: Receive, send: Send,
                      cors: list[tuple[str, str]]) -> None:  # fmt: skip
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in (PROTOBUF, JSON):
            raise HttpError(415, code_pb2.INVALID_ARGUMENT,
                            f"unsupported content-type {content_type or '(none)'!r}; use {PROTOBUF} or {JSON}")  # fmt: skip
        read = False
        try:
            # The admission place is taken before the body is read: a flood is refused unread.
            async with self._place() as consume:
                body = await self._read_body(headers, receive)
                read = True
                # JSON is turned into the protobuf the ingest workers take, off the event loop.
                data = body if content_type == PROTOBUF else await asyncio.to_thread(_json_to_protobuf, signal, body)
                outcome = await consume(signal, data)
        except HttpError:
            raise
        except PermanentError as exc:
            log.error("%s export refused: %s", signal, exc)
            raise HttpError(400, code_pb2.INVALID_ARGUMENT, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - every other failure is retryable (DESIGN §2)
            retry_after = self.settings.retry_after_s
            if isinstance(exc, RetryableError) and exc.retry_after_s is not None:
                retry_after = exc.retry_after_s
            message = str(exc) if isinstance(exc, RetryableError) else f"internal error: {type(exc).__name__}"
            self._retry_log.warning(signal, message)
            if not read:
                # Answer after the body: a sender still writing it would see a reset, not the 503.
                await _discard_body(receive, self.settings.max_request_bytes)
            raise HttpError(503, code_pb2.UNAVAILABLE, message,
                            [("retry-after", str(max(1, math.ceil(retry_after))))]) from None  # fmt: skip
        await _respond(send, 200, _encode(export_response(signal, outcome), content_type), content_type, cors)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        """The (decompressed) body, refused with 413 as soon as it grows past the limit."""
        limit = self.settings.max_request_bytes
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise HttpError(415, code_pb2.INVALID_ARGUMENT, f"unsupported content-encoding {encoding!r}; use gzip")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        inflater = zlib.decompressobj(wbits=31) if encoding == "gzip" else None
        parts: list[bytes] = []
        size = received = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, code_pb2.CANCELLED, "client disconnected")
            chunk, more = message.get("body", b""), message.get("more_body", False)
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            if inflater is None:
                parts.append(chunk)
                size += len(chunk)
                continue
            try:
                while chunk:
                    # max_length bounds what one call may inflate: a bomb stops at the limit.
                    out = inflater.decompress(chunk, limit - size + 1)
                    size += len(out)
                    if size > limit:
                        raise _too_large(limit)
                    parts.append(out)
                    chunk = inflater.unconsumed_tail
            except zlib.error as exc:
                raise HttpError(400, code_pb2.INVALID_ARGUMENT, f"bad gzip body: {exc}") from None
        if inflater is not None and not inflater.eof:
            raise HttpError(400, code_pb2.INVALID_ARGUMENT, "bad gzip body: truncated")
        return b"".join(parts)

    async def _scrape(self, method: str, headers: dict[str, str], send: Send) -> None:
        """`GET /metrics`: the receiver's own telemetry (`otel_bridge.telemetry`), behind the same
        bearer tokens as the Exports: Prometheus sends one with `authorization` in its scrape config."""
        if method not in ("GET", "HEAD"):
            raise HttpError(405, code_pb2.UNIMPLEMENTED, f"{method} is not allowed; use GET", [("allow", "GET, HEAD")])
        if not self._tokens.allows(headers.get("authorization")):
            raise HttpError(401, code_pb2.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE, [("www-authenticate", "Bearer")])
        # Off the event loop: in multiprocess mode this reads every receiver's files.
        body, content_type = await asyncio.to_thread(self._telemetry.exposition, headers.get("accept"))
        await _respond(send, 200, b"" if method == "HEAD" else body, content_type, [("cache-control", "no-store")],
                       content_length=len(body))  # fmt: skip

    # --- CORS and the tracker ---------------------------------------------------------------
    def _cors_headers(self, origin: str | None) -> list[tuple[str, str]]:
        allowed = self.settings.cors_origins
        if not origin or not allowed or ("*" not in allowed and origin.rstrip("/") not in allowed):
            return []
        # Credentials: sendBeacon always sends them, and the browser then needs this to post.
        return [("access-control-allow-origin", origin), ("vary", "Origin"),
                ("access-control-allow-credentials", "true"), ("access-control-expose-headers", "Retry-After")]  # fmt: skip

    async def _preflight(self, send: Send, headers: dict[str, str], cors: list[tuple[str, str]]) -> None:
        if not cors:
            raise HttpError(403, code_pb2.PERMISSION_DENIED,
                            f"origin {headers.get('origin', '(none)')!r} is not in OTEL_BRIDGE_CORS_ORIGINS")  # fmt: skip
        requested = headers.get("access-control-request-headers") or "content-type, content-encoding"
        await _respond(send, 204, b"", None, cors + [
            ("access-control-allow-methods", "POST, OPTIONS"), ("access-control-allow-headers", requested),
            ("access-control-max-age", "7200")])  # fmt: skip

    async def _tracker_script(self, send: Send, cors: list[tuple[str, str]], head: bool) -> None:
        if self._tracker is None:
            tracker = resources.files("otel_bridge.instrumentation").joinpath("browser/otel-bridge.js")
            try:
                self._tracker = await asyncio.to_thread(tracker.read_bytes)
            except OSError:
                raise HttpError(404, code_pb2.NOT_FOUND, "the browser tracker is not installed") from None
        body = self._tracker
        await _respond(send, 200, b"" if head else body, "application/javascript; charset=utf-8",
                       [("cache-control", "public, max-age=300"), ("access-control-allow-origin", "*")],
                       content_length=len(body))  # fmt: skip


async def _discard_body(receive: Receive, limit: int) -> None:
    received, more = 0, True
    while more and received <= limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        more = message.get("more_body", False)


def _json_to_protobuf(signal: str, body: bytes) -> bytes:
    return bytes(parse_json(signal, body).SerializeToString())


def _too_large(limit: int) -> HttpError:
    return HttpError(413, code_pb2.RESOURCE_EXHAUSTED, f"request body exceeds {limit} bytes (after decompression)")


def _answer_type(headers: dict[str, str]) -> str:
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return PROTOBUF if content_type == PROTOBUF else JSON


def _encode(message: Any, content_type: str) -> bytes:
    if content_type == PROTOBUF:
        return message.SerializeToString()
    return json.dumps(json_format.MessageToDict(message)).encode()


async def _respond_status(send: Send, error: HttpError, content_type: str, cors: list[tuple[str, str]]) -> None:
    status = status_pb2.Status(code=error.code, message=error.message)
    await _respond(send, error.status, _encode(status, content_type), content_type, cors + error.headers)


async def _respond(send: Send, status: int, body: bytes, content_type: str | None,
                   headers: Iterable[tuple[str, str]] = (), content_length: int | None = None) -> None:  # fmt: skip
    raw = [(b"content-length", str(len(body) if content_length is None else content_length).encode())]
    if content_type:
        raw.append((b"content-type", content_type.encode()))
    raw += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class HttpReceiver:
    """Serves `OtlpHttpApp` with uvicorn on the running loop (no signal handlers of its own: the
    service owns shutdown)."""

    def __init__(self, settings: HttpReceiverSettings, admission: ExportAdmission,
                 tokens: BearerTokens | None = None, telemetry: ReceiverTelemetry | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.app = OtlpHttpApp(settings, admission, tokens, telemetry)
        self.port = 0
        self._server: Any = None
        self._main_loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import uvicorn

        host, _, port = self.settings.listen.rpartition(":")
        tls = self.settings.tls
        config = uvicorn.Config(self.app, host=host.strip("[]"), port=int(port), lifespan="off", access_log=False,
                                log_level="warning", server_header=False,
                                **(tls.uvicorn_options() if tls else {}))  # fmt: skip
        config.load()
        if tls is not None:
            tls.enforce_minimum_version(config.ssl)
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[_reuse_port_socket(host, int(port))] if self.settings.reuse_port else None)
        except SystemExit:  # uvicorn exits when it cannot bind
            raise OSError(f"cannot listen on {self.settings.listen}") from None
        self._server = server
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self._main_loop = asyncio.create_task(server.main_loop(), name="otlp-http")
        log.info("OTLP/HTTP receiver listening on %s:%d (%s)", host, self.port, tls.mode if tls else "plaintext")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting; in-flight Exports finish (they answer only after commit), and those
        still running after `grace_s` are cancelled."""
        if self._server is None:
            return
        self._server.config.timeout_graceful_shutdown = grace_s
        self._server.should_exit = True
        if self._main_loop is not None:
            await self._main_loop
        await self._server.shutdown()
        self._server = None


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket other receivers on the same address may share (SO_REUSEPORT): uvicorn
    has no option for it, but serves sockets it is given."""
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock
