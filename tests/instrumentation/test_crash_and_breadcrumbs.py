"""Crash hooks and breadcrumbs with in-memory exporters, and a process that really dies."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_bridge.instrumentation.breadcrumbs import (
    MAX_BREADCRUMBS,
    breadcrumb,
    current_breadcrumbs,
    new_trail,
    reset_trail,
)
from otel_bridge.instrumentation.crash import CrashReporter


@pytest.fixture
def reporter() -> Any:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    crash = CrashReporter(provider, active_requests=lambda: 3)
    yield crash, exporter
    crash.uninstall()


def records(exporter: Any) -> list[Any]:
    return [r.log_record for r in exporter.get_finished_logs()]


def test_uncaught_exception_is_reported_then_the_previous_hook_runs(reporter: Any) -> None:
    crash, exporter = reporter
    seen = []
    sys.excepthook = lambda *args: seen.append(args[0])
    crash.install()
    token = new_trail()
    breadcrumb("opened audit 7", category="navigation")
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    reset_trail(token)
    (record,) = records(exporter)
    assert record.event_name == "app.crash" and record.severity_number.value == 21
    attrs = record.attributes
    assert attrs["exception.type"] == "RuntimeError" and attrs["exception.message"] == "boom"
    assert attrs["otel_bridge.crash.type"] == "uncaught_exception"
    assert attrs["otel_bridge.crash.memory"]["rss_mb"] > 0
    assert attrs["otel_bridge.crash.performance"]["active_requests"] == 3
    assert json.loads(attrs["otel_bridge.breadcrumbs"][-1])["message"] == "opened audit 7"
    assert seen == [RuntimeError]  # chained to the hook it replaced


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # pytest's hook, chained
def test_thread_and_asyncio_exceptions(reporter: Any) -> None:
    crash, exporter = reporter
    crash.install()
    thread = threading.Thread(target=lambda: 1 / 0)
    thread.start()
    thread.join()
    loop = asyncio.new_event_loop()
    crash.install_loop(loop)
    loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": KeyError("k")})
    loop.close()
    assert [r.attributes["otel_bridge.crash.type"] for r in records(exporter)] == ["thread_exception", "asyncio_exception"]


def test_breadcrumbs_go_to_the_current_span_and_a_bounded_trail() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    token = new_trail()
    with provider.get_tracer("t").start_as_current_span("request"):
        for i in range(MAX_BREADCRUMBS + 20):
            breadcrumb(f"step {i}", category="app", data={"i": i, "obj": object()})
    trail = current_breadcrumbs()
    reset_trail(token)
    assert len(trail) == MAX_BREADCRUMBS and trail[0]["message"] == "step 20"
    (span,) = exporter.get_finished_spans()
    event = span.events[-1]
    assert event.name == "otel_bridge.breadcrumb" and event.attributes["message"] == f"step {MAX_BREADCRUMBS + 19}"


def test_a_process_that_really_dies_leaves_a_crash_report(bridge: Any, db_url: str, rows: Any) -> None:
    script = textwrap.dedent(f"""
        from opentelemetry._logs import set_logger_provider
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
        from otel_bridge.instrumentation.breadcrumbs import breadcrumb
        from otel_bridge.instrumentation.crash import CrashReporter

        provider = LoggerProvider(resource=Resource.create({{"service.name": "worker", "service.version": "9.1"}}))
        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint="{bridge.endpoint}", insecure=True)))
        set_logger_provider(provider)
        CrashReporter().install()
        breadcrumb("loaded 40 audits", category="db")
        def handle():
            raise ValueError("scorecard 12 has no criteria")
        handle()
    """)
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert died.returncode == 1 and "ValueError: scorecard 12 has no criteria" in died.stderr
    ((crash_type, message, release, crumbs),) = rows(
        db_url, "SELECT crash_type, crash_message, release_version, breadcrumbs FROM crash_reports")
    assert (crash_type, message, release) == ("uncaught_exception", "scorecard 12 has no criteria", "9.1")
    assert crumbs[-1]["message"] == "loaded 40 audits" and crumbs[-1]["category"] == "db"
