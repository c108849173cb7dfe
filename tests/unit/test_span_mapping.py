"""Span mapping fed with protobuf produced by the real OTel SDK, in both semconv modes."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_bridge.exporters.context import MappingSettings
from otel_bridge.exporters.spans import map_traces
from otel_bridge.workload import ENDPOINTS, Request, export_request, make_failure, provider

SETTINGS = MappingSettings(slow_api_ms=500, slow_query_ms=100, api_error_min_status=500)


def ip_hash(ip: str | None) -> str | None:
    return f"hashed:{ip}" if ip else None


def request(endpoint: int = 2, **overrides: Any) -> Request:
    values: dict[str, Any] = dict(
        endpoint=ENDPOINTS[endpoint], path_id="4711", status=200, duration_ms=42.5,
        user_id="user-1", role="Auditor", session_id="sess-1", client_ip="203.0.113.9",
        start_ns=1_790_000_000_000_000_000,
    )  # fmt: skip
    values.update(overrides)
    return Request(**values)


@pytest.fixture(params=[False, True], ids=["old-semconv", "stable-semconv"])
def stable(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_server_span_becomes_api_row(stable: bool) -> None:
    rows = map_traces(export_request([request()], stable), SETTINGS, ip_hash)
    (api,) = rows.api_performance
    assert api.endpoint_path == "/api/audits/{audit_id}"
    assert api.http_method == "GET"
    assert api.status_code == 200
    assert api.response_time_ms == pytest.approx(42.5)
    assert api.request_timestamp.timestamp() == pytest.approx(1_790_000_000.0)
    # Identity sits on a middleware span, not the SERVER span (DESIGN §5 rule 1).
    assert (api.user_id, api.user_role, api.session_id) == ("user-1", "Auditor", "sess-1")
    assert api.ip_address == "hashed:203.0.113.9"
    assert api.user_agent.startswith("Mozilla/5.0")
    assert (api.service_name, api.service_version, api.environment) == ("cqms-api", "2.4.1", "production")
    assert api.slow_request is False
    assert len(api.trace_id) == 32 and len(api.span_id) == 16
    assert rows.api_errors == [] and rows.errors == []
    # ASGI's send/receive spans and the middleware/handler spans are ignored, not rejected.
    assert rows.ignored == 4 and rows.rejected_count == 0


def test_db_spans_become_db_rows_and_query_patterns(stable: bool) -> None:
    rows = map_traces(export_request([request(endpoint=2, duration_ms=900)], stable), SETTINGS, ip_hash)
    assert [(r.query_type, r.table_name) for r in rows.db_performance] == [
        ("SELECT", "audits"), ("SELECT", "audit_scores")
    ]  # fmt: skip
    first = rows.db_performance[0]
    assert first.db_system == "postgresql" and first.db_namespace == "cqms"
    assert first.slow_query is True  # ~300 ms >= 100 ms threshold
    assert first.user_id == "user-1" and first.user_role == "Auditor"
    pattern = rows.query_patterns[first.query_hash]
    assert pattern.normalized_query == "select * from audits where id = ?"
    assert pattern.table_name == "audits"


def test_one_failure_recorded_twice_is_one_error_row(stable: bool) -> None:
    failure = make_failure("app", "123")
    rows = map_traces(export_request([request(status=500, failure=failure)], stable), SETTINGS, ip_hash)
    (error,) = rows.errors
    assert error.error_type == "API"  # it failed a request (also seen on the SERVER span)
    assert error.exception_type == "otel_bridge.workload.AuditNotFound"
    assert error.error_message == "audit 123 not found"
    assert "raise AuditNotFound" in error.error_stack
    assert error.user_id == "user-1" and error.session_id == "sess-1"
    assert error.breadcrumbs[0]["message"] == "GET /api/audits/{audit_id} started"
    assert error.user_agent.startswith("Mozilla/5.0")
    (api_error,) = rows.api_errors
    assert api_error.status_code == 500
    assert api_error.error_message == "audit 123 not found"
    assert api_error.request_headers["authorization"] == "[Filtered]"
    assert "x-request-id" in api_error.request_headers


def test_database_failure_is_a_database_error_with_sqlstate(stable: bool) -> None:
    failure = make_failure("db", "9")
    req = request(endpoint=3, status=500, failure=failure, db_failure=True)
    rows = map_traces(export_request([req], stable), SETTINGS, ip_hash)
    (error,) = rows.errors
    assert error.error_type == "Database"
    assert error.error_code == "23505"
    assert error.context["query"].startswith("insert into audits")
    assert len(rows.api_errors) == 1


def test_status_500_without_exception_is_an_api_error_only() -> None:
    rows = map_traces(export_request([request(status=503)], stable=True), SETTINGS, ip_hash)
    (api_error,) = rows.api_errors
    assert api_error.error_message == "HTTP 503" and api_error.status_code == 503
    assert rows.errors == []


def test_client_error_below_threshold_is_not_an_api_error() -> None:
    rows = map_traces(export_request([request(status=404)], stable=True), SETTINGS, ip_hash)
    assert rows.api_errors == [] and rows.api_performance[0].status_code == 404


def _raw_spans(build: Any) -> Any:
    exporter = InMemorySpanExporter()
    tp = provider(exporter)
    build(tp.get_tracer("test"))
    tp.shutdown()
    return encode_spans(exporter.get_finished_spans())


def test_missing_route_templates_the_raw_path() -> None:
    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("GET /api/users/12345/audits/8f14e45f-ceea-467f-a0a1-1a2b3c4d5e6f",
                                          kind=trace.SpanKind.SERVER) as span:  # fmt: skip
            span.set_attributes({"http.method": "GET", "http.target": "/api/users/12345/audits/8f14e45f-ceea-467f-a0a1-1a2b3c4d5e6f?x=1",
                                 "http.status_code": 200})  # fmt: skip

    rows = map_traces(_raw_spans(build), SETTINGS, ip_hash)
    assert rows.api_performance[0].endpoint_path == "/api/users/:id/audits/:id"


def test_sql_without_operation_or_table_is_parsed() -> None:
    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("postgresql", kind=trace.SpanKind.CLIENT) as span:
            span.set_attributes({"db.system": "postgresql",
                                 "db.statement": "/* app */ UPDATE public.users SET name = 'x' WHERE id = 7",
                                 "db.response.returned_rows": 1})  # fmt: skip

    (row,) = map_traces(_raw_spans(build), SETTINGS, ip_hash).db_performance
    assert (row.query_type, row.table_name, row.rows_affected) == ("UPDATE", "public.users", 1)


def test_invalid_spans_are_counted_and_the_rest_kept() -> None:
    export = export_request([request(), request(endpoint=4)], stable=True)
    spans = export.resource_spans[0].scope_spans[0].spans
    servers = [s for s in spans if s.kind == trace.SpanKind.SERVER.value + 1]
    servers[0].end_time_unix_nano = servers[0].start_time_unix_nano - 1
    spans[0].span_id = b""
    rows = map_traces(export, SETTINGS, ip_hash)
    assert rows.rejected_count == 2
    assert "ending before they start" in rows.rejection_message()
    assert "invalid span_id" in rows.rejection_message()
    assert len(rows.api_performance) == 1


def test_ids_are_deterministic_and_time_ordered() -> None:
    export = export_request([request(), request(start_ns=1_790_000_001_000_000_000)], stable=True)
    first = map_traces(export, SETTINGS, ip_hash)
    again = map_traces(export, SETTINGS, ip_hash)
    assert [r.id for r in first.api_performance] == [r.id for r in again.api_performance]
    ids = sorted(first.api_performance, key=lambda r: r.request_timestamp)
    assert ids[0].id < ids[1].id and ids[0].id.version == 7


def test_nul_characters_are_removed_and_odd_types_reject_only_their_span() -> None:
    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("GET /a", kind=trace.SpanKind.SERVER) as span:
            span.set_attributes({"http.request.method": "GET", "http.route": "/a\x00b",
                                 "http.response.status_code": 200, "user.id": "u\x001"})  # fmt: skip
        with tracer.start_as_current_span("GET /b", kind=trace.SpanKind.SERVER) as span:
            # A method that is not a string, and a status that is not a number.
            span.set_attributes({"http.request.method": "GET", "http.route": ["/b"],
                                 "http.response.status_code": "teapot"})  # fmt: skip

    rows = map_traces(_raw_spans(build), SETTINGS, ip_hash)
    first = rows.api_performance[0]
    assert first.endpoint_path == "/ab" and first.user_id == "u1"
    # The odd one is stored with what can be read; never an exception for the whole request.
    second = rows.api_performance[1]
    assert second.endpoint_path == "/b" and second.status_code is None


class UndefinedTable(Exception):
    pass


def _query(sql: str) -> None:
    raise UndefinedTable(f'relation "{sql}" does not exist')


def test_failure_reraised_with_a_fresh_traceback_is_still_one_error() -> None:
    """psycopg re-raises with `with_traceback(None)`: the SERVER span's copy has another innermost
    frame than the DB span's, but it is the same failure. A sibling span's own failure with the
    same message is not."""

    def build(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("GET /api/broken", kind=trace.SpanKind.SERVER) as server:
            server.set_attributes({"http.request.method": "GET", "http.route": "/api/broken",
                                   "http.response.status_code": 500})  # fmt: skip
            try:
                try:
                    with tracer.start_as_current_span("SELECT", kind=trace.SpanKind.CLIENT) as db:
                        db.set_attributes({"db.system.name": "postgresql", "db.query.text": "SELECT * FROM missing"})
                        _query("missing")
                except UndefinedTable as exc:
                    raise exc.with_traceback(None)
            except UndefinedTable as exc:
                server.record_exception(exc)
            with tracer.start_as_current_span("retry", kind=trace.SpanKind.INTERNAL):
                pass
            with tracer.start_as_current_span("other job", kind=trace.SpanKind.INTERNAL) as other:
                try:
                    _query("missing")
                except UndefinedTable as exc:
                    other.record_exception(UndefinedTable(str(exc)))  # no traceback: another place

    rows = map_traces(_raw_spans(build), SETTINGS, ip_hash)
    assert sorted(e.error_type for e in rows.errors) == ["Application", "Database"]
    assert len(rows.api_errors) == 1
