"""Server health from metrics made by the real SDK (system-metrics instrumentation and HTTP server
duration histograms), in both temporalities."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from otel_bridge.exporters.metrics import apply_rates, map_metrics

RESOURCE = Resource.create({"service.name": "cqms-api", "service.instance.id": "pod-1",
                            "deployment.environment.name": "production"})  # fmt: skip


class App:
    """An SDK MeterProvider with the system-metrics instrumentation and an HTTP duration histogram."""

    def __init__(self, temporality: AggregationTemporality, stable: bool) -> None:
        self.reader = InMemoryMetricReader(preferred_temporality={Histogram: temporality})
        self.provider = MeterProvider(resource=RESOURCE, metric_readers=[self.reader])
        self.system = SystemMetricsInstrumentor()
        self.system.instrument(meter_provider=self.provider)
        meter = self.provider.get_meter("opentelemetry.instrumentation.asgi")
        self.stable = stable
        if stable:
            self.duration = meter.create_histogram("http.server.request.duration", unit="s")
        else:
            self.duration = meter.create_histogram("http.server.duration", unit="ms")

    def requests(self, ok: int, failed: int, unanswered: int = 0) -> None:
        status_key = "http.response.status_code" if self.stable else "http.status_code"
        for status, n in ((200, ok), (500, failed)):
            for _ in range(n):
                self.duration.record(0.05, {status_key: status, "http.route": "/api/audits"})
        for _ in range(unanswered):  # raised before responding: the instrumentation records no status
            self.duration.record(0.05, {"http.route": "/api/audits"})

    def collect(self) -> Any:
        return encode_metrics(self.reader.get_metrics_data())

    def close(self) -> None:
        self.system.uninstrument()
        self.provider.shutdown()


@pytest.mark.parametrize("temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA])
@pytest.mark.parametrize("stable", [False, True], ids=["old-names", "stable-names"])
def test_server_health_row_per_collection_with_rates(temporality: AggregationTemporality, stable: bool) -> None:
    app = App(temporality, stable)
    try:
        app.requests(ok=8, failed=1, unanswered=1)
        first = map_metrics(app.collect())
        remembered = apply_rates(first, {})
        time.sleep(0.5)
        app.requests(ok=24, failed=4, unanswered=2)
        second_started = time.time_ns()
        second = map_metrics(app.collect())
        apply_rates(second, remembered)
    finally:
        app.close()
    (row,) = second.rows
    assert row.service_name == "cqms-api" and row.service_instance_id == "pod-1"
    assert row.environment == "production"
    assert 10 < row.memory_usage_mb < 4096  # RSS of this test process
    assert row.active_handles and row.active_handles > 0
    assert row.cpu_usage is not None and row.cpu_usage >= 0
    # 30 requests (6 failed) between the two collections, about 0.5 s apart.
    (first_row,) = first.rows
    elapsed = (row.timestamp - first_row.timestamp).total_seconds()
    assert elapsed >= 0.5 and abs(row.timestamp.timestamp() - second_started / 1e9) < 5
    assert float(row.request_rate) == pytest.approx(30 / elapsed, rel=0.05)
    assert float(row.error_rate) == pytest.approx(6 / elapsed, rel=0.05)


def test_restarted_series_counts_from_its_new_start() -> None:
    app = App(AggregationTemporality.CUMULATIVE, stable=True)
    try:
        app.requests(ok=100, failed=0)
        first = map_metrics(app.collect())
        remembered = apply_rates(first, {})
    finally:
        app.close()
    # A new process: its counter starts again from a later start time.
    app = App(AggregationTemporality.CUMULATIVE, stable=True)
    try:
        time.sleep(0.2)
        app.requests(ok=5, failed=0)
        second = map_metrics(app.collect())
        apply_rates(second, remembered)
    finally:
        app.close()
    assert second.rows[0].request_rate is not None and float(second.rows[0].request_rate) > 0
    assert second.rows[0].error_rate == 0  # no error series: none failed (not unknown)


def test_unknown_metrics_are_ignored() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    provider.get_meter("m").create_counter("orders.placed").add(3)
    out = map_metrics(encode_metrics(reader.get_metrics_data()))
    provider.shutdown()
    apply_rates(out, {})
    assert (out.points, out.ignored, out.rows) == (1, 1, [])
