"""Runtime metrics -> the receiver -> server_performance_metrics, event-loop lag included."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from otel_bridge.instrumentation.runtime_metrics import EventLoopLagMonitor, install_runtime_metrics


def test_blocked_loop_shows_as_lag_in_server_rows(bridge: Any, db_url: str, rows: Any) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": "api", "service.instance.id": "i-1"}),
                             metric_readers=[reader])  # fmt: skip
    monitor = EventLoopLagMonitor(interval_s=0.05)
    instrumentor = install_runtime_metrics(provider, monitor)

    async def app() -> None:
        monitor.start()
        await asyncio.sleep(0.1)
        time.sleep(0.4)  # blocking code on the loop
        await asyncio.sleep(0.1)
        monitor.stop()

    asyncio.run(app())
    exporter = OTLPMetricExporter(endpoint=bridge.endpoint, insecure=True)
    try:
        exporter.export(reader.get_metrics_data())
    finally:
        exporter.shutdown()
        instrumentor.uninstrument()
        provider.shutdown()
    ((lag, rss, cpu, handles, uptime),) = rows(
        db_url, "SELECT event_loop_lag_ms, memory_usage_mb, cpu_usage, active_handles, uptime_seconds "
                "FROM server_performance_metrics")  # fmt: skip
    assert 350 <= lag <= 1000
    assert rss > 10 and cpu is not None and handles > 0 and uptime >= 0
