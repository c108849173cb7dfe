"""Log record mapping (crashes and exceptions) fed with records made by the real Python SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_bridge.exporters.logs import MappingSettings, event_name, map_logs
from otel_bridge.workload import make_failure

SETTINGS = MappingSettings()
RESOURCE = Resource.create({"service.name": "cqms-api", "service.version": "2.4.1",
                            "deployment.environment.name": "staging", "os.type": "linux"})  # fmt: skip


def logs_request(emit: Callable[[Any, trace.Tracer], None]) -> Any:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    emit(provider.get_logger("otel_bridge.instrumentation"), TracerProvider().get_tracer("t"))
    provider.shutdown()
    return encode_logs(exporter.get_finished_logs())


def ip_hash(ip: str | None) -> str | None:
    return f"h({ip})" if ip else None


def test_app_crash_becomes_a_crash_report() -> None:
    def emit(logger: Any, _: Any) -> None:
        logger.emit(
            event_name="app.crash", severity_number=SeverityNumber.FATAL,
            exception=make_failure("app", "5"), timestamp=1_790_000_000_000_000_000,
            attributes={"otel_bridge.crash.type": "thread_exception", "user.id": "u-1",
                        "user.roles": ("Auditor",), "session.id": "s-1",
                        "otel_bridge.crash.memory": {"rss_mb": 120.5, "peak_rss_mb": 130.0},
                        "otel_bridge.crash.performance": {"uptime_s": 42, "active_requests": 3},
                        "otel_bridge.breadcrumbs": ['{"category": "http", "message": "GET /x"}']},
        )  # fmt: skip

    rows = map_logs(logs_request(emit), SETTINGS, ip_hash)
    (crash,) = rows.crashes
    assert (crash.crash_type, crash.exception_type) == ("thread_exception", "otel_bridge.workload.AuditNotFound")
    assert crash.crash_message == "audit 5 not found" and "raise AuditNotFound" in crash.crash_stack
    assert crash.memory_info == {"rss_mb": 120.5, "peak_rss_mb": 130.0}
    assert crash.performance_info == {"uptime_s": 42, "active_requests": 3}
    assert (crash.release_version, crash.environment) == ("2.4.1", "staging")
    assert (crash.user_id, crash.user_role, crash.session_id) == ("u-1", "Auditor", "s-1")
    assert crash.device_info["os.type"] == "linux"
    assert crash.breadcrumbs == [{"category": "http", "message": "GET /x"}]
    assert crash.crash_timestamp.timestamp() == pytest.approx(1_790_000_000.0)
    assert rows.errors == []


def test_fatal_record_with_exception_is_a_crash_without_an_event_name() -> None:
    def emit(logger: Any, _: Any) -> None:
        logger.emit(severity_number=SeverityNumber.FATAL, body="worker died", exception=make_failure("app", "6"))

    (crash,) = map_logs(logs_request(emit), SETTINGS, ip_hash).crashes
    assert crash.crash_type == "fatal_log"


def test_exception_logged_twice_in_one_trace_is_one_error_row() -> None:
    failure = make_failure("app", "7")

    def emit(logger: Any, tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("request"):
            logger.emit(event_name="exception", severity_number=SeverityNumber.ERROR, exception=failure,
                        attributes={"url.full": "https://app.example.com/audits/7", "otel_bridge.page.slug": "audit-form"})
            logger.emit(severity_number=SeverityNumber.ERROR, exception=failure, body="request failed")
        logger.emit(event_name="exception", severity_number=SeverityNumber.ERROR, exception=failure)

    rows = map_logs(logs_request(emit), SETTINGS, ip_hash)
    assert len(rows.errors) == 2  # once in the trace, once outside any trace
    in_trace = next(e for e in rows.errors if e.trace_id)
    assert (in_trace.error_type, in_trace.error_message) == ("Application", "audit 7 not found")
    assert (in_trace.page_slug, in_trace.url) == ("audit-form", "https://app.example.com/audits/7")
    assert in_trace.context["event.name"] == "exception"


def test_http_server_request_exception_is_an_api_error_too() -> None:
    def emit(logger: Any, _: Any) -> None:
        logger.emit(event_name="http.server.request.exception", severity_number=SeverityNumber.ERROR,
                    exception=make_failure("db", "8"),
                    attributes={"http.request.method": "POST", "http.route": "/api/audits",
                                "http.response.status_code": 500, "client.address": "198.51.100.4",
                                "password": "hunter2"})  # fmt: skip

    rows = map_logs(logs_request(emit), SETTINGS, ip_hash)
    (error,) = rows.errors
    assert error.error_type == "API" and error.context["password"] == "[Filtered]"
    (api_error,) = rows.api_errors
    assert (api_error.endpoint_path, api_error.http_method, api_error.status_code) == ("/api/audits", "POST", 500)
    assert api_error.ip_address == "h(198.51.100.4)"


def test_event_name_resolution_order() -> None:
    class Record:
        event_name = ""

    assert event_name(Record(), {"event.name": "exception", "otel.event.name": "x"}) == "exception"
    assert event_name(Record(), {"otel.event.name": "app.crash"}) == "app.crash"
    Record.event_name = "browser.navigation"
    assert event_name(Record(), {"event.name": "exception"}) == "browser.navigation"


def test_plain_logs_are_ignored_and_bad_records_rejected() -> None:
    def emit(logger: Any, _: Any) -> None:
        logger.emit(severity_number=SeverityNumber.INFO, body={"msg": "user logged in", "n": 1})
        logger.emit(event_name="browser.web_vital", attributes={"browser.web_vital.name": "lcp"})

    request = logs_request(emit)
    bad = request.resource_logs[0].scope_logs[0].log_records.add(time_unix_nano=5)
    bad.trace_id = b"\x01\x02\x03"
    rows = map_logs(request, SETTINGS, ip_hash)
    assert rows.ignored == 1
    assert rows.rejected_count == 2 and "invalid trace_id" in rows.rejection_message()
    assert "browser.web_vital without session.id" in rows.rejection_message()
    assert not any(rows.event_rows())


def test_same_request_twice_gives_the_same_ids() -> None:
    def emit(logger: Any, _: Any) -> None:
        logger.emit(event_name="exception", exception=make_failure("app", "9"), timestamp=1_790_000_000_000_000_000)

    request = logs_request(emit)
    assert map_logs(request, SETTINGS, ip_hash).errors[0].id == map_logs(request, SETTINGS, ip_hash).errors[0].id
