"""The consumer behind the receivers: parsed OTLP request -> pure mapping -> PostgreSQL writer.

Receivers call `consume_*` and answer the sender with the returned `Outcome` only after it
returns, i.e. after the rows are committed. Counts of what was stored, ignored and rejected are
kept per signal for the periodic summary log.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from otel_bridge.config import Config
from otel_bridge.exporters.context import Defaults, IpHash
from otel_bridge.exporters.spans import SpanMappingSettings, map_traces

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What goes into the response's partial_success (all zero/empty = full success)."""

    rejected: int = 0
    message: str = ""


class TraceWriter(Protocol):
    async def write_traces(self, rows: Any) -> None: ...


def _count_points(request: Any) -> int:
    total = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def _count_log_records(request: Any) -> int:
    return sum(
        len(scope_logs.log_records)
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
    )


class Pipeline:
    def __init__(self, config: Config, writer: TraceWriter, ip_hash: IpHash) -> None:
        self._writer = writer
        self._ip_hash = ip_hash
        self._span_settings = SpanMappingSettings(
            slow_api_ms=config.apm_slow_api_threshold_ms,
            slow_query_ms=config.apm_slow_query_threshold_ms,
            api_error_min_status=config.apm_api_error_min_status,
            defaults=Defaults(config.crashlytics_environment, config.crashlytics_release_version),
        )
        self.counts: Counter[str] = Counter()

    async def consume_traces(self, request: Any) -> Outcome:
        rows = map_traces(request, self._span_settings, self._ip_hash)
        if any(rows.event_rows()):
            await self._writer.write_traces(rows)
        rejected = rows.rejected_count
        self.counts.update(
            spans_received=rows.spans,
            spans_ignored=rows.ignored,
            spans_rejected=rejected,
            rows_api_performance=len(rows.api_performance),
            rows_api_errors=len(rows.api_errors),
            rows_db_performance=len(rows.db_performance),
            rows_errors=len(rows.errors),
        )
        if rejected:
            log.warning("trace export: %s", rows.rejection_message())
        return Outcome(rejected, rows.rejection_message())

    async def consume_metrics(self, request: Any) -> Outcome:
        points = _count_points(request)
        self.counts.update(metric_points_ignored=points)
        if not points:
            return Outcome()
        return Outcome(0, f"{points} data points accepted but ignored: metrics are not mapped to tables yet")

    async def consume_logs(self, request: Any) -> Outcome:
        records = _count_log_records(request)
        self.counts.update(log_records_ignored=records)
        if not records:
            return Outcome()
        return Outcome(0, f"{records} log records accepted but ignored: logs are not mapped to tables yet")
