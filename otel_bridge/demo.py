"""`otel-bridge demo`: the whole path on this machine in one command.

Starts the (embedded, by default) database and the receiver, sends a realistic workload for the
seed's endpoints through the real OpenTelemetry SDK and OTLP/gRPC exporter, then prints what
each table got and the latency per endpoint.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from datetime import datetime, timezone

import psycopg

from otel_bridge.config import Config
from otel_bridge.database import redact_url
from otel_bridge.service import ThreadedService

TABLES = ("api_performance_metrics", "api_error_logs", "database_performance_metrics", "error_logs",
          "query_patterns", "crash_reports", "server_performance_metrics", "user_page_views",
          "user_actions", "user_sessions", "frontend_performance_metrics")  # fmt: skip
DEMO_SERVICE = "cqms-api"

LATENCY_SQL = """
SELECT endpoint_path, http_method, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY response_time_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms),
       count(*) FILTER (WHERE status_code >= 500)
FROM api_performance_metrics
WHERE service_name = %s AND created_at >= %s
GROUP BY 1, 2 ORDER BY 1, 2
"""


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}  # type: ignore[index]


def _send(endpoint: str, requests: int) -> int:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    from otel_bridge.workload import emit, provider, random_requests

    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    tracer_provider = provider(exporter, service=DEMO_SERVICE, batch=True)
    tracer = tracer_provider.get_tracer("opentelemetry.instrumentation.asgi")
    workload = random_requests(requests, seed=int(time.time()), error_rate=0.08)
    for i, request in enumerate(workload, 1):
        emit(tracer, request, stable=i % 2 == 0)
        if i % 100 == 0:
            print(f"  sent {i}/{len(workload)} requests", flush=True)
    tracer_provider.shutdown()  # flushes: every span is exported before we count rows
    return len(workload)


def _send_logs_and_metrics(endpoint: str) -> None:
    """A crash report and exception records (logs), and two collections of server health
    (the system-metrics instrumentation plus HTTP server durations)."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    from otel_bridge.workload import ROLES, make_failure

    resource = Resource.create({"service.name": DEMO_SERVICE, "service.version": "2.4.1",
                                "deployment.environment.name": "production"})  # fmt: skip
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True)))
    logger = logs.get_logger("otel_bridge.demo")
    logger.emit(event_name="app.crash", severity_number=SeverityNumber.FATAL, exception=make_failure("app", "crash"),
                attributes={"otel_bridge.crash.type": "uncaught_exception", "user.id": "demo-user",
                            "user.roles": (ROLES[3],), "otel_bridge.crash.memory": {"rss_mb": 182.4}})  # fmt: skip
    for i in range(3):
        logger.emit(event_name="exception", severity_number=SeverityNumber.ERROR,
                    exception=make_failure("app", f"log-{i}"))  # fmt: skip
    logs.shutdown()

    reader = InMemoryMetricReader()
    meters = MeterProvider(resource=resource, metric_readers=[reader])
    system = SystemMetricsInstrumentor()
    system.instrument(meter_provider=meters)
    duration = meters.get_meter("opentelemetry.instrumentation.asgi").create_histogram(
        "http.server.request.duration", unit="s"
    )
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True)
    for collection in range(2):
        for i in range(50):
            duration.record(0.03, {"http.route": "/api/audits", "http.response.status_code": 500 if i % 10 == 0 else 200})
        exporter.export(reader.get_metrics_data())
        if collection == 0:
            time.sleep(1)
    system.uninstrument()
    exporter.shutdown()
    meters.shutdown()


def _send_browser_sessions(endpoint: str, sessions: int) -> None:
    """What otel-bridge.js sends from browsers: page views, actions, page leaves, web vitals."""
    import grpc

    from otel_bridge.workload import browser_export

    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                                     request_serializer=None, response_deserializer=None)  # fmt: skip
        export(browser_export(sessions, seed=int(time.time())).SerializeToString(), timeout=30)


def run_demo(config: Config, requests: int = 400) -> int:
    print("otel-bridge demo")
    print(f"  data directory: {config.data_path}" if not config.database_url else "  external database")
    started_at = time.time()
    # Listen on a free port so the demo never collides with a running `otel-bridge serve`.
    bridge = ThreadedService(replace(config, grpc_listen="127.0.0.1:0"))
    try:
        url = bridge.service.database_url
        print(f"  database: {redact_url(url)}")
        print(f"  receiver: OTLP/gRPC on {bridge.endpoint}")
        before = _counts(url)
        print(f"  sending {requests} HTTP requests' worth of spans with the OpenTelemetry SDK ...")
        _send(bridge.endpoint, requests)
        print("  sending a crash, exception log records and two collections of server metrics ...")
        _send_logs_and_metrics(bridge.endpoint)
        print("  sending 25 browser sessions (page views, actions, web vitals) ...")
        _send_browser_sessions(bridge.endpoint, 25)
        after = _counts(url)
        with psycopg.connect(url) as conn:
            since = datetime.fromtimestamp(started_at - 1, tz=timezone.utc)
            latency = conn.execute(LATENCY_SQL, (DEMO_SERVICE, since)).fetchall()
            health = conn.execute(
                "SELECT cpu_usage, memory_usage_mb, request_rate, error_rate FROM server_performance_metrics "
                "WHERE service_name = %s ORDER BY timestamp DESC LIMIT 1", (DEMO_SERVICE,)
            ).fetchone()
    finally:
        bridge.stop()

    print("\nrows stored (this run / total):")
    for table in TABLES:
        print(f"  {table:<30} {after[table] - before[table]:>7} / {after[table]}")
    print("\nlatency per endpoint (this run):")
    print(f"  {'endpoint':<42} {'method':<6} {'count':>5} {'p50 ms':>8} {'p95 ms':>8} {'5xx':>4}")
    for endpoint, method, count, p50, p95, errors in latency:
        print(f"  {endpoint:<42} {method:<6} {count:>5} {p50:>8.1f} {p95:>8.1f} {errors:>4}")
    if health:
        print(f"\nserver health (latest): cpu {health[0]}%, rss {health[1]} MB, "
              f"{health[2]} requests/s, {health[3]} errors/s")
    stored = after["api_performance_metrics"] - before["api_performance_metrics"]
    if stored != requests:
        print(f"\nexpected {requests} API rows, stored {stored}", file=sys.stderr)
        return 1
    print("\nQuery them yourself: psql \"<database URL above>\" -c 'SELECT * FROM error_logs LIMIT 5'")
    return 0
