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
          "query_patterns")  # fmt: skip
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
        after = _counts(url)
        with psycopg.connect(url) as conn:
            since = datetime.fromtimestamp(started_at - 1, tz=timezone.utc)
            latency = conn.execute(LATENCY_SQL, (DEMO_SERVICE, since)).fetchall()
    finally:
        bridge.stop()

    print("\nrows stored (this run / total):")
    for table in TABLES:
        print(f"  {table:<30} {after[table] - before[table]:>7} / {after[table]}")
    print("\nlatency per endpoint (this run):")
    print(f"  {'endpoint':<42} {'method':<6} {'count':>5} {'p50 ms':>8} {'p95 ms':>8} {'5xx':>4}")
    for endpoint, method, count, p50, p95, errors in latency:
        print(f"  {endpoint:<42} {method:<6} {count:>5} {p50:>8.1f} {p95:>8.1f} {errors:>4}")
    stored = after["api_performance_metrics"] - before["api_performance_metrics"]
    if stored != requests:
        print(f"\nexpected {requests} API rows, stored {stored}", file=sys.stderr)
        return 1
    print("\nQuery them yourself: psql \"<database URL above>\" -c 'SELECT * FROM error_logs LIMIT 5'")
    return 0
