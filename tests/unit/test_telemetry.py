"""`otel-bridge stats`' arithmetic: histogram quantiles as Prometheus computes them, the scrape URL
from a listen address, and the summary of a real registry's exposition."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otel_bridge.pipeline import Outcome
from otel_bridge.stats import (
    StatsError,
    default_token,
    default_url,
    format_summary,
    metrics_url,
    quantile,
    summarize,
)
from otel_bridge.telemetry import ReceiverTelemetry


@pytest.mark.parametrize(("q", "expected"), [
    (0.5, 0.0075),  # rank 5 of 10: half-way through the (0.005, 0.01] bucket, which holds ranks 3..7
    (0.2, 0.0025),  # rank 2 sits at the upper bound of the first bucket
    (0.1, 0.00125),  # inside the first bucket: from 0
    (0.99, 0.05),  # rank 9.9 falls in +Inf: the highest finite bound
])  # fmt: skip
def test_quantile_is_prometheus_histogram_quantile(q: float, expected: float) -> None:
    buckets = {0.0025: 2.0, 0.005: 3.0, 0.01: 7.0, 0.05: 9.0, math.inf: 10.0}
    assert quantile(q, buckets) == pytest.approx(expected)


def test_quantile_without_observations_is_none() -> None:
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None and quantile(0.5, {}) is None


@pytest.mark.parametrize(("target", "url"), [
    ("127.0.0.1:4318", "http://127.0.0.1:4318/metrics"),
    ("0.0.0.0:4318", "http://127.0.0.1:4318/metrics"),
    ("[::]:4318", "http://[::1]:4318/metrics"),
    ("https://bridge.example.test", "https://bridge.example.test/metrics"),
    ("http://10.0.0.5:9000/other/metrics", "http://10.0.0.5:9000/other/metrics"),
])  # fmt: skip
def test_metrics_url_from_a_listen_address_or_url(target: str, url: str) -> None:
    assert metrics_url(target) == url


def test_default_url_follows_the_receivers_variables() -> None:
    assert default_url({}) == "http://127.0.0.1:4318/metrics"
    tls = {
        "OTEL_BRIDGE_HTTP_LISTEN": "0.0.0.0:9318",
        "OTEL_BRIDGE_TLS_CERT_FILE": "/certs/bridge.pem",
    }
    assert default_url(tls) == "https://127.0.0.1:9318/metrics"
    assert default_token({"OTEL_BRIDGE_AUTH_TOKENS": " , first ,second"}) == "first"
    assert default_token({}) is None


def test_summary_of_a_registry() -> None:
    telemetry = ReceiverTelemetry()
    counts = {"metric_points_received": 7, "metric_points_ignored": 2, "metric_points_rejected": 1,
              "rows_metric_samples": 4}  # fmt: skip
    telemetry.consumed("metrics", Outcome(1, "rejected 1", counts))
    started = time.perf_counter()
    telemetry.exported("metrics", "http", "OK", started)
    telemetry.exported("metrics", "http", "UNAVAILABLE", started)
    summary = summarize(telemetry.exposition()[0].decode())
    assert summary["items"]["metrics"] == {"accepted": 4, "rejected": 1, "ignored": 2}
    assert summary["items"]["traces"] == {"accepted": 0, "rejected": 0, "ignored": 0}
    assert summary["rows"] == {"metric_samples": 4}
    assert [(e["status"], e["count"]) for e in summary["exports"]] == [
        ("OK", 1),
        ("UNAVAILABLE", 1),
    ]
    assert summary["latency"][0]["count"] == 2 and summary["latency"][0]["p99_s"] is not None
    text = format_summary(summary, "http://x/metrics")
    assert ["metrics", "4", "1", "2"] in [line.split() for line in text.splitlines()]


def test_summarize_refuses_metrics_that_are_not_ours() -> None:
    with pytest.raises(StatsError, match="is this an otel-bridge receiver"):
        summarize("# TYPE up gauge\nup 1\n")


def test_stats_has_help() -> None:
    cli = Path(sys.executable).parent / "otel-bridge"
    result = subprocess.run(
        [str(cli), "stats", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "usage: otel-bridge stats" in result.stdout
    assert "--json" in result.stdout and "OTEL_BRIDGE_AUTH_TOKENS" in result.stdout
