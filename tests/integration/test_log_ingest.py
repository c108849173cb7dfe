"""End to end for logs: the SDK's OTLPLogExporter (gRPC) -> receiver -> crash and error rows."""

from __future__ import annotations

from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_bridge.workload import make_failure

RESOURCE = Resource.create({"service.name": "cqms-api", "service.version": "3.0.0",
                            "deployment.environment.name": "production"})  # fmt: skip


def providers(endpoint: str) -> tuple[LoggerProvider, TracerProvider]:
    logs = LoggerProvider(resource=RESOURCE)
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True)))
    traces = TracerProvider(resource=RESOURCE)
    traces.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    return logs, traces


def test_crash_and_exception_records_to_rows(bridge: Any, db_url: str, rows: Any) -> None:
    logs, traces = providers(bridge.endpoint)
    logger = logs.get_logger("app")
    logger.emit(event_name="app.crash", severity_number=SeverityNumber.FATAL, exception=make_failure("app", "1"),
                attributes={"otel_bridge.crash.type": "uncaught_exception", "user.id": "u-9",
                            "otel_bridge.crash.memory": {"rss_mb": 99.5}})  # fmt: skip
    logger.emit(severity_number=SeverityNumber.INFO, body="just a log line")
    failure = make_failure("app", "2")
    tracer = traces.get_tracer("app")
    with tracer.start_as_current_span("handler") as span:
        # Recorded as a span event AND as a log record (logs/dup style): one error row.
        span.record_exception(failure)
        logger.emit(event_name="exception", severity_number=SeverityNumber.ERROR, exception=failure)
    logs.shutdown()
    traces.shutdown()

    crash = rows(db_url, "SELECT crash_type, crash_message, release_version, environment, user_id, "
                         "memory_info->>'rss_mb' FROM crash_reports")  # fmt: skip
    assert crash == [("uncaught_exception", "audit 1 not found", "3.0.0", "production", "u-9", "99.5")]
    errors = rows(db_url, "SELECT error_type, error_message, exception_type FROM error_logs")
    assert errors == [("Application", "audit 2 not found", "otel_bridge.workload.AuditNotFound")]
    assert bridge.counts["log_records_received"] == 3 and bridge.counts["log_records_ignored"] == 1
