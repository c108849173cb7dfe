"""What the real `opentelemetry-instrumentation-asgi` emits, in both semconv modes, maps right.

The semconv mode is read once per process, so each mode runs the instrumented ASGI app in its own
interpreter and hands back the encoded ExportTraceServiceRequest the OTLP exporter would send.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_bridge.exporters.context import MappingSettings
from otel_bridge.exporters.spans import map_traces

APP = r'''
import asyncio, sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

exporter = InMemorySpanExporter()
provider = TracerProvider(resource=Resource.create({"service.name": "asgi-app"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))

async def app(scope, receive, send):
    await receive()
    if scope["path"].startswith("/boom"):
        raise ValueError("boom 42")
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

middleware = OpenTelemetryMiddleware(app, tracer_provider=provider)

async def call(path):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"page=2",
             "headers": [(b"host", b"api.example.com"), (b"user-agent", b"test-agent/1.0"),
                         (b"authorization", b"Bearer secret")],
             "client": ("203.0.113.7", 5555), "server": ("api.example.com", 8000)}
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}
    async def send(message):
        pass
    try:
        await middleware(scope, receive, send)
    except ValueError:
        pass

asyncio.run(call("/api/audits/8f14e45f-ceea-467f-a0a1-1a2b3c4d5e6f/scores/17"))
asyncio.run(call("/boom/9"))
sys.stdout.buffer.write(encode_spans(exporter.get_finished_spans()).SerializeToString())
'''


def asgi_export(semconv_opt_in: str | None) -> ExportTraceServiceRequest:
    env = {k: v for k, v in os.environ.items() if k != "OTEL_SEMCONV_STABILITY_OPT_IN"}
    if semconv_opt_in:
        env["OTEL_SEMCONV_STABILITY_OPT_IN"] = semconv_opt_in
    env["OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"] = "authorization,user-agent"
    result = subprocess.run([sys.executable, "-c", APP], env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return ExportTraceServiceRequest.FromString(result.stdout)


@pytest.mark.parametrize("opt_in", [None, "http,database"], ids=["default-old-names", "stable-names"])
def test_real_asgi_spans_map_to_api_and_error_rows(opt_in: str | None) -> None:
    rows = map_traces(asgi_export(opt_in), MappingSettings(), lambda ip: f"h({ip})" if ip else None)
    ok, failed = sorted(rows.api_performance, key=lambda r: r.status_code or 999)
    # Plain ASGI has no http.route: the raw path is templated, never stored as is.
    assert ok.endpoint_path == "/api/audits/:id/scores/:id"
    assert (ok.http_method, ok.status_code) == ("POST", 201)
    assert ok.ip_address == "h(203.0.113.7)" and ok.user_agent == "test-agent/1.0"
    assert ok.service_name == "asgi-app" and ok.response_time_ms > 0
    # The app raised before responding: an API error with the exception, once.
    assert failed.endpoint_path == "/boom/:id"
    (api_error,) = rows.api_errors
    assert (api_error.status_code, api_error.error_message, api_error.exception_type) == (500, "boom 42", "ValueError")
    assert api_error.request_headers["authorization"] == "[Filtered]"
    (error,) = rows.errors
    assert (error.error_type, error.exception_type) == ("API", "ValueError")
    assert error.error_stack.endswith('in app\nValueError: boom 42\n')
    # The middleware's `http receive`/`http send` child spans are skipped, not rejected.
    assert rows.ignored >= 2 and rows.rejected_count == 0
