"""OTLP/gRPC receiver: TraceService, MetricsService and LogsService Export, plus grpc.health.v1.

The Export methods are registered with raw-bytes deserializers and the bytes are parsed by the
consumer (in an ingest worker): a servicer registered with the generated stubs never sees an
undecodable body (grpc.aio answers UNKNOWN/INTERNAL before the handler runs), and bad data must
get INVALID_ARGUMENT (DESIGN §2).
Oversized requests are refused by grpc itself with RESOURCE_EXHAUSTED before any handler runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from otel_bridge.errors import PermanentError
from otel_bridge.pipeline import Outcome
from otel_bridge.receiver.admission import ExportAdmission
from otel_bridge.receiver.auth import UNAUTHENTICATED_MESSAGE, BearerTokens
from otel_bridge.receiver.status import RetryLog, status_for
from otel_bridge.receiver.tls import TlsSettings
from otel_bridge.telemetry import ReceiverTelemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrpcReceiverSettings:
    listen: str = "127.0.0.1:4317"
    max_request_bytes: int = 16 * 1024 * 1024
    retry_after_s: float = 2.0
    tls: TlsSettings | None = None  # None: plaintext
    reuse_port: bool = False  # share the port with other receivers (`serve --workers`)


@dataclass(frozen=True)
class _Signal:
    service: str
    name: str
    response_type: Any
    partial_type: Any
    rejected_field: str


SIGNALS = {
    "traces": _Signal("opentelemetry.proto.collector.trace.v1.TraceService", "traces",
                      trace_pb.ExportTraceServiceResponse,
                      trace_pb.ExportTracePartialSuccess, "rejected_spans"),
    "metrics": _Signal("opentelemetry.proto.collector.metrics.v1.MetricsService", "metrics",
                       metrics_pb.ExportMetricsServiceResponse,
                       metrics_pb.ExportMetricsPartialSuccess, "rejected_data_points"),
    "logs": _Signal("opentelemetry.proto.collector.logs.v1.LogsService", "logs",
                    logs_pb.ExportLogsServiceResponse,
                    logs_pb.ExportLogsPartialSuccess, "rejected_log_records"),
}  # fmt: skip


def export_response(signal: str, outcome: Outcome) -> Any:
    """The Export response of `signal`, with OTLP partial success when items were rejected (the
    same message over gRPC and HTTP)."""
    spec = SIGNALS[signal]
    response = spec.response_type()
    if outcome.rejected or outcome.message:
        partial = spec.partial_type(error_message=outcome.message)
        setattr(partial, spec.rejected_field, outcome.rejected)
        response.partial_success.CopyFrom(partial)
    return response


class GrpcReceiver:
    def __init__(self, settings: GrpcReceiverSettings, admission: ExportAdmission, tokens: BearerTokens | None = None,
                 telemetry: ReceiverTelemetry | None = None) -> None:  # fmt: skip
        """`admission`: the service's bound on Exports, in front of its pipeline."""
        self.settings = settings
        self._place = admission.place  # taken before the request is read
        self._retry_log = RetryLog(log)
        self._tokens = tokens or BearerTokens(None)
        self._telemetry = telemetry or ReceiverTelemetry()
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self.port: int = 0

    async def start(self) -> None:
        limit = self.settings.max_request_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                # Without BDP probing a connection's window stays small until a handler asks for
                # the message: the bytes of an Export refused unread mostly stay with its sender.
                ("grpc.http2.bdp_probe", 0),
                # Off unless asked: two receivers must not silently split one port's traffic.
                ("grpc.so_reuseport", int(self.settings.reuse_port)),
            ]
        )
        for signal in SIGNALS.values():
            # Client-streaming on our side (the same wire format as unary): the handler runs before
            # the request is read, so admission refuses a flood before it is in memory.
            handler = grpc.stream_unary_rpc_method_handler(
                self._handler(signal),
                request_deserializer=None,
                response_serializer=lambda message: message.SerializeToString(),
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(signal.service, {"Export": handler}),)
            )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        tls = self.settings.tls
        try:
            if tls is None:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                self.port = server.add_secure_port(self.settings.listen, tls.grpc_credentials())
        except RuntimeError:  # grpc's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}: address in use or not available")
        await server.start()
        for signal in SIGNALS.values():
            await self._health.set(signal.service, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("OTLP/gRPC receiver listening on %s (%s)", self.settings.listen.rsplit(":", 1)[0] + f":{self.port}",
                 tls.mode if tls else "plaintext")  # fmt: skip

    async def announce_shutdown(self) -> None:
        """Health checks answer NOT_SERVING from now on, so load balancers move senders away."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let in-flight Exports finish (they answer only after commit), and
        cancel those still running after `grace_s`."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)
        self._server = None

    def _handler(self, signal: _Signal) -> Callable[..., Awaitable[Any]]:
        async def export(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            if self._tokens.enabled:
                metadata = dict(context.invocation_metadata() or ())
                if not self._tokens.allows(metadata.get("authorization")):
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            try:
                async with self._place() as consume:
                    outcome = await consume(signal.name, await _one_message(requests))
            except Exception as exc:  # noqa: BLE001 - every failure becomes an OTLP status
                code, message, trailers = status_for(exc, self.settings.retry_after_s)
                if code == grpc.StatusCode.UNAVAILABLE:
                    self._retry_log.warning(signal.service.rsplit(".", 1)[-1], message)
                else:
                    log.error("%s export refused: %s", signal.service.rsplit(".", 1)[-1], message)
                await context.abort(code, message, trailing_metadata=trailers)
            return export_response(signal.name, outcome)

        return self._telemetry.grpc_export(signal.name, export)


async def _one_message(requests: AsyncIterator[bytes]) -> bytes:
    data: bytes | None = None
    async for message in requests:
        if data is not None:
            raise PermanentError("an Export carries exactly one request message")
        data = message
    return data if data is not None else b""
