"""Distinct pre-encoded Export payloads per signal for `ingest.py`, and what each signal needs
to be sent, mapped, written and counted. A few payloads are made with `otel_bridge.workload` or
the OTel SDK; the rest are clones with new ids and shifted times, so no payload is ever resent
and the writer's idempotent dedupe never flatters the result."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from otel_bridge.conventions import PAGE_VIEW_ID
from otel_bridge.exporters.context import MappingSettings
from otel_bridge.exporters.logs import map_logs
from otel_bridge.exporters.metrics import MetricRows, map_metrics
from otel_bridge.exporters.postgres import PostgresWriter
from otel_bridge.exporters.spans import map_traces
from otel_bridge.privacy import IpHasher

ITEMS_PER_PAYLOAD = 512  # spans or log records exactly; metric data points about
BASE_PAYLOADS = 8  # made with the workload or the SDK (slow); the rest of the pool are clones


@dataclass
class Pool:
    base: list[bytes]  # the payloads clones are made of (used for the mapping summary)
    payloads: list[bytes]  # all distinct; sent in order
    items: int  # spans, log records or data points in every payload


# --- traces ---------------------------------------------------------------------------------------
def trace_base(count: int, seed: int) -> list[bytes]:
    """`count` payloads of exactly 512 spans cut from one SDK export, in which each request's
    spans are contiguous: at most one trace per payload boundary is split."""
    from otel_bridge.workload import export_request, random_requests

    needed = count * ITEMS_PER_PAYLOAD
    # Dense payloads as the issue describes them: HTTP SERVER spans (~15 attributes, 10% failing
    # with exception events) and their DB CLIENT spans, no framework-internal spans.
    requests = random_requests(needed // 2 + 50, seed=seed, error_rate=0.1)
    export = export_request(requests, stable=True, framework_spans=False)
    (resource_spans,) = export.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    spans = list(scope_spans.spans)
    assert len(spans) >= needed, (len(spans), needed)
    out = []
    for i in range(count):
        req = trace_pb.ExportTraceServiceRequest()
        rs = req.resource_spans.add(resource=resource_spans.resource, schema_url=resource_spans.schema_url)
        ss = rs.scope_spans.add(scope=scope_spans.scope, schema_url=scope_spans.schema_url)
        ss.spans.extend(spans[i * ITEMS_PER_PAYLOAD : (i + 1) * ITEMS_PER_PAYLOAD])
        out.append(req.SerializeToString())
    return out


def trace_clone(payload: bytes, variant: int, shift_ns: int) -> bytes:
    """The same spans as new traces: trace ids XORed with the variant, times shifted forward."""
    if variant == 0:
        return payload
    req = trace_pb.ExportTraceServiceRequest.FromString(payload)
    mask, shift = variant << 96, variant * shift_ns
    for span in req.resource_spans[0].scope_spans[0].spans:
        span.trace_id = (int.from_bytes(span.trace_id, "big") ^ mask).to_bytes(16, "big")
        span.start_time_unix_nano += shift
        span.end_time_unix_nano += shift
        for event in span.events:
            event.time_unix_nano += shift
    return req.SerializeToString()


def trace_pool(count: int, seed: int) -> Pool:
    base = trace_base(BASE_PAYLOADS, seed)
    shift_ns = 120 * 10**9  # more than the ~40 s the base requests span
    payloads = [trace_clone(base[i % len(base)], i // len(base), shift_ns) for i in range(count)]
    return Pool(base, payloads, ITEMS_PER_PAYLOAD)


# --- logs -------------------------------------------------------------------------------------------
ERROR_EVERY = 100  # one `exception` record per 99 browser records: 1% errors
ID_KEYS = ("session.id", PAGE_VIEW_ID)


def _error_record(scope: Any, after: Any, n: int) -> None:
    """An `exception` log record in the session (and page view) of the record before it."""
    record = scope.log_records.add(time_unix_nano=after.time_unix_nano + 1_000_000, event_name="exception",
                                   severity_number=17, severity_text="ERROR")  # fmt: skip
    kind = ("TypeError", "RangeError", "NetworkError")[n % 3]
    attrs = {"exception.type": kind, "exception.message": f"{kind}: cannot read 'score' of undefined ({n % 7})",
             "exception.stacktrace": f"{kind}: cannot read 'score' of undefined\n    at AuditForm.render "
             f"(https://cqms.example.com/static/app.{n % 5}.js:1:{1000 + n % 97})\n    at commitRoot (react-dom.js:2:3)"}
    attrs.update({a.key: a.value.string_value for a in after.attributes if a.key in (*ID_KEYS, "url.full", "user.id")})
    for key, value in attrs.items():
        record.attributes.add(key=key).value.string_value = value


def log_base(count: int, seed: int) -> list[bytes]:
    """`count` payloads of exactly 512 log records: `browser_export` sessions (page views, web
    vitals, actions, page leaves) with an `exception` record after every 99th of them."""
    from otel_bridge.workload import browser_export

    needed = count * ITEMS_PER_PAYLOAD
    export = browser_export(needed // 20 + 20, seed)  # about 25 records per session
    (resource_logs,) = export.resource_logs
    (scope_logs,) = resource_logs.scope_logs
    mixed = logs_pb.ExportLogsServiceRequest().resource_logs.add().scope_logs.add()
    for n, record in enumerate(scope_logs.log_records):
        mixed.log_records.append(record)
        if n % (ERROR_EVERY - 1) == ERROR_EVERY - 2:
            _error_record(mixed, record, n)
    records = list(mixed.log_records)
    assert len(records) >= needed, (len(records), needed)
    out = []
    for i in range(count):
        req = logs_pb.ExportLogsServiceRequest()
        rl = req.resource_logs.add(resource=resource_logs.resource)
        sl = rl.scope_logs.add(scope=scope_logs.scope)
        sl.log_records.extend(records[i * ITEMS_PER_PAYLOAD : (i + 1) * ITEMS_PER_PAYLOAD])
        out.append(req.SerializeToString())
    return out


def log_clone(payload: bytes, number: int, shift_ns: int) -> bytes:
    """Payload `number`: its own session and page view ids (suffixed), times shifted."""
    req = logs_pb.ExportLogsServiceRequest.FromString(payload)
    suffix = f"-p{number}"
    for record in req.resource_logs[0].scope_logs[0].log_records:
        record.time_unix_nano += shift_ns
        for attr in record.attributes:
            if attr.key in ID_KEYS:
                attr.value.string_value += suffix
    return req.SerializeToString()


def log_pool(count: int, seed: int) -> Pool:
    base = log_base(BASE_PAYLOADS, seed)
    shift_ns = 60 * 10**9  # ids make clones distinct already; times move on as new sessions would
    payloads = [log_clone(base[i % len(base)], i, (i // len(base)) * shift_ns) for i in range(count)]
    return Pool(base, payloads, ITEMS_PER_PAYLOAD)


# --- metrics ----------------------------------------------------------------------------------------
def metric_resource(seed: int) -> Any:
    """One SDK collection (system metrics plus an HTTP duration histogram) as ResourceMetrics."""
    import random

    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader()
    resource = Resource.create({"service.name": "cqms-api", "service.version": "2.4.1",
                                "deployment.environment.name": "production", "service.instance.id": "bench"})  # fmt: skip
    provider = MeterProvider(metric_readers=[reader], resource=resource)
    instrumentor = SystemMetricsInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        duration = provider.get_meter("bench").create_histogram("http.server.request.duration", unit="s")
        rng = random.Random(seed)
        for _ in range(500):
            route = rng.choice(("/api/audits/{audit_id}", "/api/users/{user_id}", "/api/dashboard/summary"))
            status = rng.choices((200, 404, 500), (90, 7, 3))[0]
            duration.record(rng.uniform(0.005, 0.5), {"http.request.method": "GET", "http.route": route,
                                                      "http.response.status_code": status})  # fmt: skip
        (resource_metrics,) = encode_metrics(reader.get_metrics_data()).resource_metrics
        return resource_metrics
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def _points(resource_metrics: Any) -> list[Any]:
    return [point for scope in resource_metrics.scope_metrics for metric in scope.metrics
            for point in getattr(metric, metric.WhichOneof("data")).data_points]  # fmt: skip


def metric_payload(template: Any, per_payload: int, number: int, shift_ns: int) -> bytes:
    """`per_payload` copies of the collection, each a service instance of its own, times shifted."""
    req = metrics_pb.ExportMetricsServiceRequest()
    for r in range(per_payload):
        rm = req.resource_metrics.add()
        rm.CopyFrom(template)
        for attr in rm.resource.attributes:
            if attr.key == "service.instance.id":
                attr.value.string_value = f"bench-{number}-{r}"
        for point in _points(rm):
            point.time_unix_nano += shift_ns
            point.start_time_unix_nano += shift_ns
    return req.SerializeToString()


def metric_pool(count: int, seed: int) -> Pool:
    template = metric_resource(seed)
    per_payload = max(1, round(ITEMS_PER_PAYLOAD / len(_points(template))))
    shift_ns = 10 * 10**9  # a collection interval
    payloads = [metric_payload(template, per_payload, i, i * shift_ns) for i in range(count)]
    return Pool(payloads[:BASE_PAYLOADS], payloads, per_payload * len(_points(template)))


# --- what differs per signal ------------------------------------------------------------------------
def _mapper(parse: Callable[[bytes], Any], mapper: Callable[..., Any], settings: Any) -> Callable[..., Any]:
    def map_payloads(payloads: list[bytes], ip_key: str) -> list[Any]:
        hasher = IpHasher(ip_key.encode())
        return [mapper(parse(p), settings, hasher) for p in payloads]

    map_payloads.__name__ = mapper.__name__  # for the log
    return map_payloads


def map_metric_payloads(payloads: list[bytes], ip_key: str) -> list[MetricRows]:
    return [map_metrics(metrics_pb.ExportMetricsServiceRequest.FromString(p)) for p in payloads]


map_metric_payloads.__name__ = "map_metrics"  # for the log


def table_rows(mapped: Any) -> Counter[str]:
    """Rows per table one mapped payload stores (metrics: one row per instance and time)."""
    if isinstance(mapped, MetricRows):
        return Counter({"server_performance_metrics": len(mapped.samples)})
    return Counter(type(row).table for rows in mapped.event_rows() for row in rows)


@dataclass(frozen=True)
class Signal:
    export: str  # gRPC method path
    response: Any  # its response message class
    rejected_field: str  # in the response's partial_success
    item: str  # singular, for "items/s" and "CPU/item"
    origin: str  # how the base payloads are made, for the log
    expected_max_items_per_s: int  # sizes the default pool so the timed window never runs dry
    build: Callable[[int, int], Pool]  # (count, seed)
    map: Callable[[list[bytes], str], list[Any]]  # (payloads, ip key) -> mapped rows
    write: Callable[[PostgresWriter, Any], Awaitable[None]]
    tables: tuple[str, ...]  # rows counted end to end and in the baseline
    derived_tables: tuple[str, ...] = ()  # also truncated before the baseline


SIGNALS = {
    "traces": Signal(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export", trace_pb.ExportTraceServiceResponse,
        "rejected_spans", "span", f"{BASE_PAYLOADS} made with the SDK, the rest clones of them", 30_000,
        trace_pool, _mapper(trace_pb.ExportTraceServiceRequest.FromString, map_traces, MappingSettings()),
        PostgresWriter.write,
        ("api_performance_metrics", "api_error_logs", "database_performance_metrics", "error_logs"),
    ),
    "logs": Signal(
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export", logs_pb.ExportLogsServiceResponse,
        "rejected_log_records", "record",
        f"{BASE_PAYLOADS} cut from workload.browser_export plus 1% exceptions, the rest clones", 20_000,
        log_pool, _mapper(logs_pb.ExportLogsServiceRequest.FromString, map_logs, MappingSettings()),
        PostgresWriter.write,
        ("user_page_views", "user_actions", "user_page_leaves", "frontend_perf_events", "error_logs",
         "crash_reports"),
        ("user_sessions", "frontend_performance_metrics"),
    ),
    "metrics": Signal(
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", metrics_pb.ExportMetricsServiceResponse,
        "rejected_data_points", "point",
        "one SDK collection (system metrics + HTTP histogram), each resource a new service.instance.id",
        120_000, metric_pool, map_metric_payloads, PostgresWriter.write_metrics,
        ("server_performance_metrics",), ("metric_series_state",),
    ),
}  # fmt: skip
