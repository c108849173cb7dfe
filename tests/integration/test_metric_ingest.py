"""End to end for metrics: the SDK's OTLPMetricExporter (gRPC) -> receiver (worker processes)
-> `server_performance_metrics`, rates computed from the previous point kept in the database."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource


def test_sdk_metrics_to_server_rows(bridge: Any, db_url: str, rows: Any) -> None:
    resource = Resource.create({"service.name": "cqms-api", "service.instance.id": "pod-7"})
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    system = SystemMetricsInstrumentor()
    system.instrument(meter_provider=provider)
    duration = provider.get_meter("asgi").create_histogram("http.server.request.duration", unit="s")
    exporter = OTLPMetricExporter(endpoint=bridge.endpoint, insecure=True)
    try:
        for batch in range(4):  # four collections; the ingest workers take turns with them
            for _ in range(10):
                duration.record(0.02, {"http.response.status_code": 200, "http.route": "/api/users/{id}"})
            duration.record(0.02, {"http.response.status_code": 503, "http.route": "/api/users/{id}"})
            exporter.export(reader.get_metrics_data())
            time.sleep(0.3)
    finally:
        system.uninstrument()
        exporter.shutdown()
        provider.shutdown()

    found = rows(db_url, "SELECT service_instance_id, memory_usage_mb, cpu_usage, request_rate, error_rate, "
                         "active_handles, timestamp FROM server_performance_metrics ORDER BY timestamp")  # fmt: skip
    assert len(found) == 4
    assert {r[0] for r in found} == {"pod-7"}
    assert all(r[1] > 10 and r[2] is not None and r[5] > 0 for r in found)
    for previous, current in zip(found, found[1:]):
        elapsed = (current[6] - previous[6]).total_seconds()
        assert float(current[3]) == pytest.approx(11 / elapsed, rel=0.05)
        assert float(current[4]) == pytest.approx(1 / elapsed, rel=0.05)
    assert rows(db_url, "SELECT count(*) FROM metric_series_state")[0][0] >= 3
