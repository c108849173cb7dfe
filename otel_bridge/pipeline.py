"""The consumer behind the receivers: OTLP request bytes -> parse -> pure mapping -> writer.

Receivers call `consume(signal, data)` and answer the sender with the returned `Outcome` only
after it returns, i.e. after the rows are committed. Each Outcome carries the request's counts
(stored rows, ignored and rejected items) for the service's periodic summary log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_bridge.config import Config
from otel_bridge.errors import PermanentError
from otel_bridge.exporters.analytics import parse_slug_rules
from otel_bridge.exporters.context import Defaults, IpHash, MappingSettings
from otel_bridge.exporters.logs import map_logs
from otel_bridge.exporters.metrics import map_metrics
from otel_bridge.exporters.spans import map_traces

log = logging.getLogger(__name__)

SIGNALS = ("traces", "metrics", "logs")
REQUEST_TYPES: dict[str, Any] = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}


@dataclass(frozen=True)
class Outcome:
    """What goes into the response's partial_success (all zero/empty = full success), plus the
    request's counts for the summary log."""

    rejected: int = 0
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)


Consume = Callable[[str, bytes], Awaitable[Outcome]]


class RowWriter(Protocol):
    async def write(self, rows: Any) -> None: ...

    async def write_metrics(self, rows: Any) -> None: ...


def parse(signal: str, data: bytes) -> Any:
    request_type = REQUEST_TYPES[signal]
    try:
        return request_type.FromString(data)
    except (DecodeError, RuntimeError) as exc:
        raise PermanentError(f"cannot decode {request_type.__name__}: {exc}") from None


class Pipeline:
    def __init__(self, config: Config, writer: RowWriter, ip_hash: IpHash) -> None:
        self._writer = writer
        self._ip_hash = ip_hash
        self._settings = MappingSettings(
            slow_api_ms=config.apm_slow_api_threshold_ms,
            slow_query_ms=config.apm_slow_query_threshold_ms,
            api_error_min_status=config.apm_api_error_min_status,
            defaults=Defaults(config.crashlytics_environment, config.crashlytics_release_version),
            slug_rules=parse_slug_rules(config.page_slug_rules),
        )

    async def consume(self, signal: str, data: bytes) -> Outcome:
        request = parse(signal, data)
        if signal == "traces":
            return await self.consume_traces(request)
        if signal == "metrics":
            return await self.consume_metrics(request)
        return await self.consume_logs(request)

    async def consume_traces(self, request: Any) -> Outcome:
        rows = map_traces(request, self._settings, self._ip_hash)
        if any(rows.event_rows()):
            await self._writer.write(rows)
        return _outcome("spans", rows, rows.spans, rows.ignored)

    async def consume_metrics(self, request: Any) -> Outcome:
        rows = map_metrics(request, self._settings.defaults)
        if rows.samples:
            await self._writer.write_metrics(rows)
        return _outcome("metric_points", rows, rows.points, rows.ignored)

    async def consume_logs(self, request: Any) -> Outcome:
        rows = map_logs(request, self._settings, self._ip_hash)
        if any(rows.event_rows()):
            await self._writer.write(rows)
        return _outcome("log_records", rows, rows.records, rows.ignored)


def _outcome(items: str, rows: Any, received: int, ignored: int) -> Outcome:
    """The response's partial success, and the request's counts: items received, ignored and
    rejected, and rows stored per table."""
    rejected = rows.rejected_count
    counts = {f"{items}_received": received, f"{items}_ignored": ignored, f"{items}_rejected": rejected}
    for table_rows in rows.event_rows():
        if table_rows:
            key = f"rows_{table_rows[0].table}"
            counts[key] = counts.get(key, 0) + len(table_rows)
    if rejected:
        log.warning("%s export: %s", items, rows.rejection_message())
    return Outcome(rejected, rows.rejection_message(), counts)
