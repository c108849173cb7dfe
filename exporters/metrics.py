"""OTLP metrics -> `server_performance_metrics`, one row per service instance and collection time.

Pure: the mapping yields a sample per (instance, time) plus the counters whose rates need the
previous point of the same series; `apply_rates` turns those into per-second rates given the
previous points, which the writer reads from (and saves to) the database inside the request's
transaction, so rates stay right with several worker processes or receivers. Delta points are
used as they are. Names come from both the old and the new Python system-metrics
instrumentation (research/semconv.md §6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from otel_bridge.exporters.attributes import as_int, decode_attributes
from otel_bridge.exporters.context import Defaults, resource_context
from otel_bridge.exporters.rejections import Rejections
from otel_bridge.exporters.rows import ServerMetricsRow, row_id, timestamp

AGGREGATION_TEMPORALITY_DELTA = 1
_INT4 = 2**31 - 1
MIB = 1024 * 1024

# Gauge-like values: metric name -> (column, how to turn the summed value into the column's unit).
_GAUGES: dict[str, tuple[str, float]] = {
    "process.cpu.utilization": ("cpu_usage", 100.0),  # ratio of all CPUs -> %
    "process.runtime.cpython.cpu.utilization": ("cpu_usage", 100.0),
    "process.memory.usage": ("memory_usage_mb", 1 / MIB),
    "process.runtime.cpython.memory": ("memory_usage_mb", 1 / MIB),  # attribute type=rss only
    "otel_bridge.event_loop.lag": ("event_loop_lag_ms", 1.0),  # unit-scaled below
    "nodejs.eventloop.delay.p99": ("event_loop_lag_ms", 1.0),
    "process.open_file_descriptor.count": ("active_handles", 1.0),
    "process.unix.file_descriptor.count": ("active_handles", 1.0),
    "process.thread.count": ("threads", 1.0),
    "process.runtime.cpython.thread_count": ("threads", 1.0),
    "http.server.active_requests": ("active_requests", 1.0),
    "process.uptime": ("uptime_seconds", 1.0),
}
# Counters turned into per-second rates: metric name -> rate name.
_DURATION_HISTOGRAMS = ("http.server.request.duration", "http.server.duration")
_CPU_TIME = ("process.cpu.time", "process.runtime.cpython.cpu_time")

_UNIT_TO_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 1e-6}


@dataclass
class CounterPoint:
    """A cumulative (or delta) count whose per-second rate becomes a column."""

    series: str  # instance + what is counted: the key of its previous point
    sample_key: tuple[str, int]  # (instance, time) of the row the rate goes into
    column: str
    value: float
    time_unix_nano: int
    start_time_unix_nano: int
    delta: bool


@dataclass
class _Sample:
    service_name: str
    service_version: str | None
    environment: str | None
    instance: str
    time_unix_nano: int
    values: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # column -> the metric that fills it


@dataclass
class MetricRows(Rejections):

    items = "data points"
    samples: dict[tuple[str, int], _Sample] = field(default_factory=dict)
    counters: list[CounterPoint] = field(default_factory=list)
    points: int = 0
    ignored: int = 0
    rows: list[ServerMetricsRow] = field(default_factory=list)  # filled by apply_rates
    query_patterns: dict[str, Any] = field(default_factory=dict)  # the writer's interface



    def event_rows(self) -> list[list[Any]]:
        return [self.rows]


def _sample(out: MetricRows, res: Any, instance: str, time_ns: int) -> _Sample:
    sample = out.samples.get((instance, time_ns))
    if sample is None:
        sample = _Sample(res.service_name, res.service_version, res.environment, instance, time_ns)
        out.samples[(instance, time_ns)] = sample
    return sample


def _attribute_key(attrs: dict[str, Any]) -> str:
    return "\x1e".join(f"{k}={attrs[k]}" for k in sorted(attrs))


def _instance(res_attrs: dict[str, Any]) -> str:
    return str(res_attrs.get("service.instance.id") or res_attrs.get("host.name") or "")


def _point_value(point: Any) -> float | None:
    if "value" not in point.DESCRIPTOR.oneofs_by_name:  # a histogram where a number was expected
        return None
    kind = point.WhichOneof("value")
    if kind == "as_double":
        return point.as_double if math.isfinite(point.as_double) else None
    if kind == "as_int":
        return float(point.as_int)
    return None


def _is_error(attrs: dict[str, Any]) -> bool:
    """A failed request: `error.type`, a 5xx status, or no status at all. Semconv sets the status
    if and only if a response was sent; without one the app raised before responding (the ASGI
    instrumentation records Starlette's unhandled exceptions that way; the server's error
    middleware answers 500 outside it), as the span mapping infers a 500 for them too."""
    status = as_int(attrs.get("http.response.status_code") or attrs.get("http.status_code"))
    return bool(attrs.get("error.type")) or status is None or status >= 500


def map_metrics(request: Any, defaults: Defaults = Defaults()) -> MetricRows:
    """Collect the server-health values of a parsed ExportMetricsServiceRequest."""
    out = MetricRows()
    for resource_metrics in request.resource_metrics:
        res = resource_context(decode_attributes(resource_metrics.resource.attributes), defaults)
        instance = _instance(res.attrs)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                points = getattr(metric, kind).data_points if kind else ()
                out.points += len(points)
                name = metric.name
                if name not in _GAUGES and name not in _DURATION_HISTOGRAMS and name not in _CPU_TIME:
                    out.ignored += len(points)
                    continue
                delta = kind in ("sum", "histogram") and getattr(metric, kind).aggregation_temporality == AGGREGATION_TEMPORALITY_DELTA
                totals: dict[tuple[int, str], float] = {}
                for point in points:
                    if point.time_unix_nano == 0:
                        out.reject("without a timestamp")
                        continue
                    attrs = decode_attributes(point.attributes)
                    sample = _sample(out, res, instance, point.time_unix_nano)
                    if name in _DURATION_HISTOGRAMS or name in _CPU_TIME:
                        # One series per attribute set: each has its own start time and history.
                        if name in _DURATION_HISTOGRAMS:
                            count = getattr(point, "count", None)  # a number where a histogram was expected
                            value = float(count) if count is not None else None
                        else:
                            value = _point_value(point)
                        if value is None:
                            out.reject("of the wrong kind for their metric")
                            continue
                        series = f"{res.service_name}\x1f{instance}\x1f{name}\x1f{_attribute_key(attrs)}"
                        columns = ("cpu_time",) if name in _CPU_TIME else (
                            ("request_rate", "error_rate") if _is_error(attrs) else ("request_rate",)
                        )  # fmt: skip
                        for column in columns:
                            if sample.sources.setdefault(column, name) == name:
                                out.counters.append(CounterPoint(
                                    f"{series}\x1f{column}", (instance, point.time_unix_nano), column, value,
                                    point.time_unix_nano, point.start_time_unix_nano, delta or kind == "gauge",
                                ))  # fmt: skip
                        continue
                    value = _point_value(point)
                    if value is None:
                        out.reject("without a finite number value")
                        continue
                    if name == "process.runtime.cpython.memory" and attrs.get("type") != "rss":
                        continue
                    k = (point.time_unix_nano, _GAUGES[name][0])
                    totals[k] = totals.get(k, 0.0) + value
                for (time_ns, column), value in totals.items():
                    sample = out.samples[(instance, time_ns)]
                    scale = _GAUGES[name][1]
                    if column == "event_loop_lag_ms":
                        scale = _UNIT_TO_MS.get(metric.unit, 1000.0 if name.startswith("nodejs.") else 1.0)
                    # The first instrument to give a column wins (old and new names may both come).
                    if sample.sources.setdefault(column, name) == name:
                        sample.values[column] = value * scale
    return out


@dataclass(frozen=True)
class PreviousPoint:
    value: float
    time_unix_nano: int
    start_time_unix_nano: int


def apply_rates(out: MetricRows, previous: dict[str, PreviousPoint]) -> dict[str, PreviousPoint]:
    """Turn counters into per-second rates and build the rows; returns the points to remember.

    Cumulative: (value - previous) / elapsed, with the previous point of the same series; a
    series that restarted (new start time, or a value that went down) counts from its start.
    Delta: value / the point's own interval."""
    remember: dict[str, PreviousPoint] = {}
    for point in sorted(out.counters, key=lambda p: p.time_unix_nano):
        prev = remember.get(point.series) or previous.get(point.series)
        rate: float | None = None
        if point.delta:
            elapsed = (point.time_unix_nano - point.start_time_unix_nano) / 1e9
            rate = point.value / elapsed if elapsed > 0 else None
        elif (
            prev is not None
            and prev.time_unix_nano < point.time_unix_nano
            and prev.start_time_unix_nano == point.start_time_unix_nano
            and point.value >= prev.value
        ):
            rate = (point.value - prev.value) / ((point.time_unix_nano - prev.time_unix_nano) / 1e9)
        elif point.start_time_unix_nano and point.time_unix_nano > point.start_time_unix_nano:
            rate = point.value / ((point.time_unix_nano - point.start_time_unix_nano) / 1e9)
        if not point.delta and (prev is None or point.time_unix_nano > prev.time_unix_nano):
            remember[point.series] = PreviousPoint(point.value, point.time_unix_nano, point.start_time_unix_nano)
        if rate is not None:
            sample = out.samples[point.sample_key]
            # CPU seconds per second of one process: percent of one core. Rates of the series of
            # one metric (routes, statuses, CPU modes) add up.
            column, value = ("cpu_time_rate", rate * 100) if point.column == "cpu_time" else (point.column, rate)
            sample.values[column] = sample.values.get(column, 0.0) + value
    for sample in out.samples.values():
        # process.cpu.utilization, when sent, is already normalized; the CPU time rate is the fallback.
        if "cpu_time_rate" in sample.values:
            sample.values.setdefault("cpu_usage", sample.values.pop("cpu_time_rate"))
        # Each collection reports every series; requests without an error series had no errors.
        if "request_rate" in sample.values:
            sample.values.setdefault("error_rate", 0.0)
    out.rows = [_row(sample) for sample in out.samples.values() if sample.values]
    return remember


def _row(sample: _Sample) -> ServerMetricsRow:
    v = sample.values

    # Clamped to the columns' ranges: one absurd value must not fail the whole request.
    def whole(name: str) -> int | None:
        x = v.get(name)
        return int(round(max(-_INT4, min(_INT4, x)))) if x is not None and math.isfinite(x) else None

    def decimal(name: str, limit: float) -> Decimal | None:
        x = v.get(name)
        return Decimal(f"{max(-limit, min(limit, x)):.2f}") if x is not None and math.isfinite(x) else None

    handles = whole("active_handles")
    return ServerMetricsRow(
        row_id(sample.time_unix_nano, sample.service_name.encode(), sample.instance.encode(), b"server"),
        sample.instance or None, decimal("cpu_usage", 9999.99), whole("memory_usage_mb"),
        whole("event_loop_lag_ms"), handles if handles is not None else whole("threads"),
        whole("active_requests"), whole("uptime_seconds"), decimal("request_rate", 99_999_999.99),
        decimal("error_rate", 99_999_999.99), timestamp(sample.time_unix_nano), sample.service_name,
        sample.service_version, sample.environment,
    )  # fmt: skip
