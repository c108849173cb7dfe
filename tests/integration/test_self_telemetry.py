"""The receiver's own telemetry with real clients: the OTel SDK's gRPC exporter, raw gRPC calls and
httpx against a running bridge, then exact values from `GET /metrics` and from `otel-bridge stats`.
Multiprocess mode (`serve --workers`) is checked with real processes sharing one
PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.parser import text_string_to_metric_families

from otel_bridge import __version__
from otel_bridge.cli import main
from otel_bridge.stats import summarize
from otel_bridge.workload import export_request, random_requests, spans_for

TOKEN = "tok-metrics-58e1c0"
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = {"content-type": "application/x-protobuf"}
REPO = Path(__file__).resolve().parents[2]


def scrape(bridge: Any, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = httpx.get(f"http://{bridge.http_endpoint}/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}  # fmt: skip


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def logs_body() -> dict[str, Any]:
    """One crash (stored) and one plain log line (ignored), as OTLP JSON."""
    now = str(time.time_ns())
    crash = {"timeUnixNano": now, "severityNumber": 21, "body": {"stringValue": "boom"},
             "attributes": [{"key": "exception.type", "value": {"stringValue": "RuntimeError"}},
                            {"key": "exception.message", "value": {"stringValue": "boom"}}]}  # fmt: skip
    line = {"timeUnixNano": now, "severityNumber": 9, "body": {"stringValue": "just a log line"}}
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "cqms-api"}}]}
    return {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": [crash, line]}]}]}


def span_ending_before_it_starts() -> bytes:
    span = trace_pb2.Span(trace_id=b"\x0a" * 16, span_id=b"\x0b" * 8, name="GET /x", kind=2,
                          start_time_unix_nano=1_790_000_001_000_000_000, end_time_unix_nano=1_790_000_000_000_000_000)  # fmt: skip
    request = trace_pb.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])]
    )
    return request.SerializeToString()


def test_metrics_count_items_rows_and_every_answer(db_url: str, start_bridge: Any, rows: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    bridge = start_bridge(db_url, OTEL_BRIDGE_INGEST_WORKERS="0")
    spans = spans_for(random_requests(3, seed=2, error_rate=0), stable=True, framework_spans=False)
    exporter = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True, timeout=10)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    with grpc.insecure_channel(bridge.endpoint) as channel:
        export = channel.unary_unary(
            TRACE_EXPORT, request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as refused:
            export(b"\xff\xff\xff not protobuf", timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        answer = trace_pb.ExportTraceServiceResponse.FromString(
            export(span_ending_before_it_starts(), timeout=10)
        )
        assert answer.partial_success.rejected_spans == 1
    base = f"http://{bridge.http_endpoint}"
    assert httpx.post(f"{base}/v1/logs", json=logs_body(), timeout=30).status_code == 200
    assert (
        httpx.post(
            f"{base}/v1/logs", content=b"\xff\xff garbage", headers=PROTOBUF, timeout=30
        ).status_code
        == 400
    )

    samples = scrape(bridge)
    items = "otel_bridge_receiver_items_total"
    assert value(samples, items, signal="traces", outcome="accepted") == len(spans)
    assert value(samples, items, signal="traces", outcome="rejected") == 1
    assert value(samples, items, signal="traces", outcome="ignored") == 0
    assert value(samples, items, signal="logs", outcome="accepted") == 1
    assert value(samples, items, signal="logs", outcome="ignored") == 1
    assert value(samples, items, signal="metrics", outcome="accepted") == 0
    stored = {
        dict(labels)["table"]: n
        for (name, labels), n in samples.items()
        if name == "otel_bridge_rows_stored_total"
    }
    assert stored["api_performance_metrics"] == 3 and stored["crash_reports"] == 1
    for table, count in stored.items():  # every counted row is in the database
        assert rows(db_url, f"SELECT count(*) FROM {table}")[0][0] == count, table
    exports = {
        tuple(sorted(labels)): n
        for (name, labels), n in samples.items()
        if name == "otel_bridge_exports_total"
    }
    assert exports == {
        (
            ("signal", "traces"),
            ("status", "OK"),
            ("transport", "grpc"),
        ): 2,  # a partial success is OK
        (("signal", "traces"), ("status", "INVALID_ARGUMENT"), ("transport", "grpc")): 1,
        (("signal", "logs"), ("status", "OK"), ("transport", "http")): 1,
        (("signal", "logs"), ("status", "INVALID_ARGUMENT"), ("transport", "http")): 1,
    }
    duration = "otel_bridge_export_duration_seconds"
    assert value(samples, f"{duration}_count", signal="traces", transport="grpc") == 3
    assert value(samples, f"{duration}_bucket", signal="logs", transport="http", le="+Inf") == 2
    assert value(samples, f"{duration}_sum", signal="logs", transport="http") > 0
    assert value(samples, "otel_bridge_database_errors_total") == 0
    assert (
        value(samples, "otel_bridge_exports_in_flight") == 0
        and value(samples, "otel_bridge_exports_waiting") == 0
    )
    assert value(samples, "otel_bridge_build_info", version=__version__) == 1

    assert main(["stats", "--url", bridge.http_endpoint]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"otel-bridge {__version__} at http://{bridge.http_endpoint}/metrics"
    assert f"traces {len(spans)} 1 0" in {" ".join(line.split()) for line in printed}
    assert {"logs 1 0 1", "api_performance_metrics 3", "crash_reports 1", "traces grpc OK 2",
            "traces grpc INVALID_ARGUMENT 1", "logs http INVALID_ARGUMENT 1", "database errors: 0",
            "exports now: 0 in flight, 0 waiting"} <= {" ".join(line.split()) for line in printed}  # fmt: skip
    latency = next(line.split() for line in printed if line.startswith("traces") and "ms" in line)
    assert (
        latency[:3] == ["traces", "grpc", "3"] and len(latency) == 9
    )  # p50, p95, p99: "2.4 ms" each

    # The installed command, machine-readable.
    done = subprocess.run([sys.executable, "-m", "otel_bridge.cli", "stats", "--json", "--url", bridge.http_endpoint],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    document = json.loads(done.stdout)
    assert document["items"]["traces"] == {"accepted": len(spans), "rejected": 1, "ignored": 0}
    assert document["items"]["logs"] == {"accepted": 1, "rejected": 0, "ignored": 1}
    assert document["rows"] == stored
    assert {"signal": "logs", "transport": "http", "status": "OK", "count": 1} in document[
        "exports"
    ]
    traces_grpc = next(
        e for e in document["latency"] if (e["signal"], e["transport"]) == ("traces", "grpc")
    )
    assert (
        traces_grpc["count"] == 3
        and 0 < traces_grpc["p50_s"] <= traces_grpc["p95_s"] <= traces_grpc["p99_s"] <= 30
    )
    assert (document["database_errors"], document["in_flight"], document["waiting"]) == (0, 0, 0)


def test_metrics_need_the_token_and_refusals_are_counted(db_url: str, start_bridge: Any, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    bridge = start_bridge(
        db_url, OTEL_BRIDGE_AUTH_TOKENS=f"{TOKEN}, older-token-77", OTEL_BRIDGE_INGEST_WORKERS="0"
    )
    metrics_url = f"http://{bridge.http_endpoint}/metrics"
    anonymous = httpx.get(metrics_url, timeout=30)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert (
        httpx.get(
            metrics_url, headers={"authorization": "Bearer older-token-7"}, timeout=30
        ).status_code
        == 401
    )
    assert (
        httpx.post(
            metrics_url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
        ).status_code
        == 405
    )
    spans = spans_for(random_requests(1, seed=4, error_rate=0), stable=True, framework_spans=False)
    exporter = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True, timeout=10)
    assert exporter.export(spans) == SpanExportResult.FAILURE  # UNAUTHENTICATED
    exporter.shutdown()
    assert (
        httpx.post(f"http://{bridge.http_endpoint}/v1/logs", json={}, timeout=30).status_code == 401
    )

    samples = scrape(bridge, authorization=f"Bearer {TOKEN}")
    exports = "otel_bridge_exports_total"
    assert value(samples, exports, signal="traces", transport="grpc", status="UNAUTHENTICATED") == 1
    assert value(samples, exports, signal="logs", transport="http", status="UNAUTHENTICATED") == 1
    assert (
        value(samples, "otel_bridge_receiver_items_total", signal="traces", outcome="accepted") == 0
    )

    monkeypatch.delenv("OTEL_BRIDGE_AUTH_TOKENS", raising=False)
    assert main(["stats", "--url", bridge.http_endpoint]) == 1
    assert "HTTP 401 (pass --token or set OTEL_BRIDGE_AUTH_TOKENS)" in capsys.readouterr().err
    assert main(["stats", "--url", bridge.http_endpoint, "--token", TOKEN]) == 0
    assert "traces grpc UNAUTHENTICATED 1" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setenv("OTEL_BRIDGE_AUTH_TOKENS", f" {TOKEN} ,older-token-77")
    monkeypatch.setenv("OTEL_BRIDGE_HTTP_LISTEN", bridge.http_endpoint)
    assert main(["stats", "--json"]) == 0  # address and token from the receiver's own variables
    assert json.loads(capsys.readouterr().out)["url"] == metrics_url


def test_stats_says_so_when_no_receiver_answers(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert main(["stats", "--url", f"127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err.startswith(
        f"otel-bridge stats: cannot reach http://127.0.0.1:{port}/metrics: "
    )


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def test_database_errors_queue_and_overload_are_counted(db_url: str, start_bridge: Any) -> None:
    """A table lock holds one Export in flight and one waiting; a third is refused (queue full);
    cancelling the blocked statement is a database error. Ingest runs in worker processes, so
    the counts also cross the process boundary."""
    bridge = start_bridge(db_url, OTEL_BRIDGE_MAX_CONCURRENT_EXPORTS="1", OTEL_BRIDGE_MAX_QUEUED_EXPORTS="1",
                          OTEL_BRIDGE_QUEUE_TIMEOUT_S="120", OTEL_BRIDGE_DB_STATEMENT_TIMEOUT_MS="120000",
                          OTEL_BRIDGE_INGEST_WORKERS="1")  # fmt: skip
    request = export_request(
        random_requests(2, seed=5, error_rate=0), stable=True, framework_spans=False
    )
    spans = sum(
        len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
    )
    body = request.SerializeToString()
    url = f"http://{bridge.http_endpoint}/v1/traces"
    answers: list[int] = []

    def post() -> None:
        answers.append(httpx.post(url, content=body, headers=PROTOBUF, timeout=120).status_code)

    def blocked_backends() -> list[int]:
        return [pid for (pid,) in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchall()]  # fmt: skip

    with psycopg.connect(db_url, autocommit=True) as admin, psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE api_performance_metrics IN ACCESS EXCLUSIVE MODE")
        senders = [threading.Thread(target=post) for _ in range(2)]
        for sender in senders:
            sender.start()
        wait_for(lambda: (lambda s: value(s, "otel_bridge_exports_in_flight") == 1
                          and value(s, "otel_bridge_exports_waiting") == 1)(scrape(bridge)), "1 in flight, 1 waiting")  # fmt: skip
        assert (
            httpx.post(url, content=body, headers=PROTOBUF, timeout=30).status_code == 503
        )  # no room to wait
        first = wait_for(blocked_backends, "the Export blocked on the lock")
        admin.execute("SELECT pg_cancel_backend(%s)", (first[0],))
        wait_for(lambda: 503 in answers, "the cancelled Export's answer")
        wait_for(lambda: (lambda s: value(s, "otel_bridge_exports_waiting") == 0
                          and value(s, "otel_bridge_exports_in_flight") == 1)(scrape(bridge)), "the second in flight")  # fmt: skip
        locker.rollback()
        for sender in senders:
            sender.join(timeout=120)
    assert sorted(answers) == [200, 503]

    samples = scrape(bridge)
    assert value(samples, "otel_bridge_database_errors_total") == 1
    assert value(samples, "otel_bridge_exports_refused_total", reason="queue_full") == 1
    assert value(samples, "otel_bridge_exports_refused_total", reason="queue_timeout") == 0
    assert (
        value(
            samples,
            "otel_bridge_exports_total",
            signal="traces",
            transport="http",
            status="UNAVAILABLE",
        )
        == 2
    )
    assert (
        value(samples, "otel_bridge_exports_total", signal="traces", transport="http", status="OK")
        == 1
    )
    assert (
        value(samples, "otel_bridge_receiver_items_total", signal="traces", outcome="accepted")
        == spans
    )  # once
    assert (
        value(samples, "otel_bridge_exports_in_flight") == 0
        and value(samples, "otel_bridge_exports_waiting") == 0
    )


# --- multiprocess mode: what `serve --workers` runs ------------------------------------------------
RECEIVER = """
import asyncio, sys, time
from otel_bridge.pipeline import Outcome
from otel_bridge.receiver.admission import ExportAdmission
from otel_bridge.telemetry import MULTIPROCESS, ReceiverTelemetry

async def main(accepted: int, rejected: int) -> None:
    assert MULTIPROCESS
    telemetry, release = ReceiverTelemetry(), asyncio.Event()

    async def consume(signal: str, data: bytes) -> Outcome:
        await release.wait()
        return Outcome()

    admission = ExportAdmission(consume, 1, 600.0)
    telemetry.watch(admission)
    held = [asyncio.create_task(admission("traces", b"")) for _ in range(2)]  # 1 in flight, 1 waiting
    counts = {"spans_received": accepted + rejected, "spans_rejected": rejected, "rows_spans": accepted}
    telemetry.consumed("traces", Outcome(rejected, "", counts))
    telemetry.exported("traces", "grpc", "OK", time.perf_counter())
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""
SCRAPER = """
import sys
from otel_bridge.telemetry import ReceiverTelemetry
sys.stdout.write(ReceiverTelemetry().exposition()[0].decode())
"""


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}

    def scrape_all() -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-c", SCRAPER], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=120, check=True)  # fmt: skip
        return summarize(done.stdout)

    receivers = [subprocess.Popen([sys.executable, "-c", RECEIVER, *counts], env=env, cwd=REPO, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                 for counts in (("3", "0"), ("2", "1"))]  # fmt: skip
    try:
        for receiver in receivers:
            assert receiver.stdout is not None and receiver.stdout.readline() == "ready\n"
        # Each process publishes its queue by itself (every second): the scraper sees both.
        summary = wait_for(lambda: (lambda s: s if (s["in_flight"], s["waiting"]) == (2, 2) else None)(scrape_all()),
                           "both processes' gauges")  # fmt: skip
        assert summary["items"]["traces"] == {"accepted": 5, "rejected": 1, "ignored": 0}
        assert summary["rows"] == {"spans": 5}
        assert summary["exports"] == [
            {"signal": "traces", "transport": "grpc", "status": "OK", "count": 2}
        ]
        assert summary["latency"][0]["count"] == 2 and summary["version"] == __version__

        receivers[0].send_signal(signal.SIGKILL)  # a crash: it cannot take its gauges back
        receivers[0].wait(timeout=30)
        assert (scrape_all()["in_flight"]) == 2
        from otel_bridge.telemetry import mark_process_dead

        mark_process_dead(receivers[0].pid, str(directory))
        summary = scrape_all()
        assert (summary["in_flight"], summary["waiting"]) == (1, 1)  # the live one only
        assert summary["items"]["traces"]["accepted"] == 5  # counters keep the dead one's counts
    finally:
        for receiver in receivers:
            if receiver.poll() is None:
                receiver.kill()
            receiver.wait(timeout=30)
