"""Property tests: any well-formed OTLP request, however odd its values, maps without raising;
what cannot be mapped is counted, never thrown."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_bridge.exporters.context import MappingSettings
from otel_bridge.exporters.logs import map_logs
from otel_bridge.exporters.metrics import apply_rates, map_metrics
from otel_bridge.exporters.spans import map_traces
from otel_bridge.workload import any_value

KEYS = st.sampled_from([
    "session.id", "user.id", "user.roles", "enduser.role", "otel_bridge.page_view.id", "url.full",
    "url.path", "http.route", "http.request.method", "http.method", "http.response.status_code",
    "http.status_code", "db.system", "db.system.name", "db.statement", "db.query.text",
    "exception.type", "exception.message", "exception.stacktrace", "otel_bridge.breadcrumbs",
    "otel_bridge.crash.memory", "browser.web_vital.name", "browser.web_vital.value",
    "browser.navigation_timing.load_event_end", "browser.resource_timing.duration",
    "otel_bridge.page.time_on_page_ms", "otel_bridge.page.scroll_depth", "otel_bridge.action.context",
    "browser.element.attributes", "client.address", "http.request.header.authorization", "x",
])  # fmt: skip
EVENTS = st.sampled_from([
    "", "exception", "app.crash", "http.server.request.exception", "db.client.operation.exception",
    "browser.navigation", "browser.page_view", "browser.user_action.click", "otel_bridge.user_action",
    "otel_bridge.page_leave", "browser.web_vital", "browser.navigation_timing", "browser.resource_timing",
])  # fmt: skip
SCALARS = st.one_of(st.text(max_size=30), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True),
                    st.booleans())  # fmt: skip
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)  # fmt: skip
ATTRS = st.dictionaries(KEYS, VALUES, max_size=8)
IDS = st.sampled_from([b"", bytes(8), bytes(16), b"\x01" * 8, b"\x02" * 16, b"\x03" * 3])
TIMES = st.integers(0, 2**63 - 1)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fill(container: Any, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        container.add(key=key, value=any_value(value))


@FAST
@given(st.lists(st.tuples(EVENTS, ATTRS, TIMES, IDS, IDS, st.integers(0, 24), VALUES), max_size=6), ATTRS)
def test_any_log_request_maps_without_raising(records: list[Any], resource: dict[str, Any]) -> None:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    fill(resource_logs.resource.attributes, resource)
    scope = resource_logs.scope_logs.add()
    for name, attrs, at, trace_id, span_id, severity, body in records:
        record = scope.log_records.add(event_name=name, time_unix_nano=at, severity_number=severity)
        record.trace_id, record.span_id = trace_id, span_id
        record.body.CopyFrom(any_value(body))
        fill(record.attributes, attrs)
    rows = map_logs(request, MappingSettings(), lambda ip: ip and "h")
    assert rows.records == len(records)
    assert rows.rejected_count + rows.ignored <= len(records)


@FAST
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5]), st.text(max_size=10), ATTRS, TIMES, TIMES,
                          IDS, IDS, EVENTS, ATTRS), max_size=6), ATTRS)  # fmt: skip
def test_any_trace_request_maps_without_raising(spans: list[Any], resource: dict[str, Any]) -> None:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    fill(resource_spans.resource.attributes, resource)
    scope = resource_spans.scope_spans.add()
    for kind, name, attrs, start, end, trace_id, span_id, event_name, event_attrs in spans:
        span = scope.spans.add(kind=kind, name=name, start_time_unix_nano=start, end_time_unix_nano=end)
        span.trace_id, span.span_id = trace_id, span_id
        fill(span.attributes, attrs)
        fill(span.events.add(name=event_name or "exception", time_unix_nano=end).attributes, event_attrs)
    rows = map_traces(request, MappingSettings(), lambda ip: ip and "h")
    assert rows.spans == len(spans)


METRIC_NAMES = st.sampled_from([
    "process.cpu.utilization", "process.cpu.time", "process.memory.usage", "process.runtime.cpython.memory",
    "otel_bridge.event_loop.lag", "nodejs.eventloop.delay.p99", "process.thread.count",
    "http.server.active_requests", "process.uptime", "http.server.request.duration", "http.server.duration",
    "other.metric",
])  # fmt: skip


@FAST
@given(st.lists(st.tuples(METRIC_NAMES, st.sampled_from(["gauge", "sum", "histogram"]), st.integers(0, 2),
                          st.lists(st.tuples(TIMES, TIMES, st.floats(allow_nan=True), st.integers(0, 2**40), ATTRS),
                                   max_size=3)), max_size=5), ATTRS)  # fmt: skip
def test_any_metric_request_maps_without_raising(metrics: list[Any], resource: dict[str, Any]) -> None:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    fill(resource_metrics.resource.attributes, resource)
    scope = resource_metrics.scope_metrics.add()
    for name, kind, temporality, points in metrics:
        metric = scope.metrics.add(name=name, unit="s")
        data = getattr(metric, kind)
        if kind != "gauge":
            data.aggregation_temporality = temporality
        for at, start, value, count, attrs in points:
            point = data.data_points.add(time_unix_nano=at, start_time_unix_nano=start)
            if kind == "histogram":
                point.count = count
            else:
                point.as_double = value
            fill(point.attributes, attrs)
    rows = map_metrics(request)
    apply_rates(rows, {})
    assert all(row.service_name for row in rows.rows)
