"""End to end: the real OTel SDK exporter -> real gRPC receiver on 127.0.0.1 -> real PostgreSQL."""

from __future__ import annotations

import gzip
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_bridge.exporters.rows import timestamp
from otel_bridge.workload import export_request, random_requests, spans_for

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def raw_call(endpoint: str, method: str, payload: bytes, **kwargs: Any) -> Any:
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return call(payload, timeout=10, **kwargs)


def counts(rows: Any, url: str) -> dict[str, int]:
    tables = ["api_performance_metrics", "api_error_logs", "database_performance_metrics", "error_logs"]
    return {t: rows(url, f"SELECT count(*) FROM {t}")[0][0] for t in tables}


def test_sdk_exporter_to_rows(bridge: Any, db_url: str, rows: Any) -> None:
    requests = random_requests(60, seed=3, error_rate=0.2)
    exporter = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True)
    assert exporter.export(spans_for(requests, stable=False)) == SpanExportResult.SUCCESS
    exporter.shutdown()

    failed = [r for r in requests if r.failure is not None]
    stored = counts(rows, db_url)
    assert stored["api_performance_metrics"] == 60
    assert stored["error_logs"] == len(failed)  # one row per failure, though recorded 2-3 times
    assert stored["api_error_logs"] == len([r for r in requests if r.status >= 500])
    assert stored["database_performance_metrics"] == sum(len(r.endpoint.queries) for r in requests)

    first = requests[0]
    (api,) = rows(db_url, "SELECT endpoint_path, http_method, status_code, response_time_ms, user_id, "
                          "user_role, ip_address, service_name FROM api_performance_metrics "
                          "WHERE request_timestamp = %s", (timestamp(first.start_ns),))  # fmt: skip
    assert api[:3] == (first.endpoint.route, first.endpoint.method, first.status)
    assert api[3] == pytest.approx(first.duration_ms, rel=1e-6)
    assert api[4:6] == (first.user_id, first.role)
    assert api[6] and first.client_ip not in api[6]  # keyed hash, never the raw IP
    assert api[7] == "cqms-api"
    headers = rows(db_url, "SELECT request_headers->>'authorization' FROM api_error_logs")
    assert headers and {h[0] for h in headers} == {"[Filtered]"}
    patterns = rows(db_url, "SELECT count(*) FROM query_patterns")[0][0]
    assert patterns == len({q for r in requests for q, _ in r.endpoint.queries})


def test_same_export_twice_stores_each_row_once(bridge: Any, db_url: str, rows: Any) -> None:
    payload = export_request(random_requests(30, seed=5, error_rate=0.3), stable=True).SerializeToString()
    raw_call(bridge.endpoint, TRACE_EXPORT, payload)
    once = counts(rows, db_url)
    raw_call(bridge.endpoint, TRACE_EXPORT, payload, compression=grpc.Compression.Gzip)
    assert counts(rows, db_url) == once
    assert once["api_performance_metrics"] == 30 and once["error_logs"] > 0


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"\xff\xff\xff\xff garbage", grpc.StatusCode.INVALID_ARGUMENT),
        (export_request(random_requests(3), stable=True).SerializeToString()[:-7], grpc.StatusCode.INVALID_ARGUMENT),
        (b"\x0a" * 20 * 1024 * 1024, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=["garbage", "truncated", "over-size-limit"],
)
def test_bad_input_gets_the_right_status_and_server_keeps_serving(
    bridge: Any, db_url: str, rows: Any, payload: bytes, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        raw_call(bridge.endpoint, TRACE_EXPORT, payload)
    assert failure.value.code() == code
    assert bridge.counts["spans_received"] == 0  # refused before mapping
    # Still serving: a good request after the bad one is stored.
    raw_call(bridge.endpoint, TRACE_EXPORT, export_request(random_requests(2), stable=True).SerializeToString())
    assert counts(rows, db_url)["api_performance_metrics"] == 2


def test_gzip_bomb_is_refused_before_the_handler(bridge: Any) -> None:
    bomb = gzip.compress(b"\x00" * 64 * 1024 * 1024)
    with grpc.insecure_channel(bridge.endpoint) as channel:
        call = channel.unary_unary(TRACE_EXPORT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as failure:
            call(gzip.decompress(bomb), timeout=30, compression=grpc.Compression.Gzip)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_empty_request_is_a_full_success(bridge: Any) -> None:
    response = trace_pb.ExportTraceServiceResponse.FromString(raw_call(bridge.endpoint, TRACE_EXPORT, b""))
    assert not response.HasField("partial_success")


def test_partial_success_counts_rejected_spans(bridge: Any, db_url: str, rows: Any) -> None:
    export = export_request(random_requests(4, seed=9, error_rate=0), stable=True)
    servers = [s for s in export.resource_spans[0].scope_spans[0].spans if s.kind == 2]
    servers[0].trace_id = b"\x00" * 16
    response = trace_pb.ExportTraceServiceResponse.FromString(
        raw_call(bridge.endpoint, TRACE_EXPORT, export.SerializeToString())
    )
    assert response.partial_success.rejected_spans == 1
    assert "invalid trace_id" in response.partial_success.error_message
    assert counts(rows, db_url)["api_performance_metrics"] == 3


def test_metric_and_log_rejections_in_partial_success(bridge: Any) -> None:
    metrics = metrics_pb.ExportMetricsServiceRequest()
    gauge = metrics.resource_metrics.add().scope_metrics.add().metrics.add(name="process.cpu.utilization")
    gauge.gauge.data_points.add(as_double=0.5, time_unix_nano=1)
    gauge.gauge.data_points.add(as_double=0.5, time_unix_nano=0)  # no timestamp: rejected
    orders = metrics.resource_metrics[0].scope_metrics[0].metrics.add(name="orders.placed")
    orders.sum.data_points.add(as_int=3, time_unix_nano=1)  # not server health: ignored quietly
    response = metrics_pb.ExportMetricsServiceResponse.FromString(
        raw_call(bridge.endpoint, METRICS_EXPORT, metrics.SerializeToString())
    )
    assert response.partial_success.rejected_data_points == 1
    assert "without a timestamp" in response.partial_success.error_message
    assert bridge.counts["rows_server_performance_metrics"] == 1 and bridge.counts["metric_points_ignored"] == 1

    logs = logs_pb.ExportLogsServiceRequest()
    records = logs.resource_logs.add().scope_logs.add().log_records
    records.add(time_unix_nano=1).body.string_value = "a plain log line"
    records.add(time_unix_nano=2, event_name="browser.web_vital")  # no session.id: rejected
    response = logs_pb.ExportLogsServiceResponse.FromString(
        raw_call(bridge.endpoint, LOGS_EXPORT, logs.SerializeToString())
    )
    assert response.partial_success.rejected_log_records == 1
    assert "browser.web_vital without session.id" in response.partial_success.error_message
    assert bridge.counts["log_records_ignored"] == 1  # the plain log line, quietly
    with pytest.raises(grpc.RpcError) as failure:
        raw_call(bridge.endpoint, LOGS_EXPORT, b"\xff garbage")
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_service_reports_serving(bridge: Any) -> None:
    with grpc.insecure_channel(bridge.endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "opentelemetry.proto.collector.trace.v1.TraceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_exports_beyond_the_concurrency_bound_get_unavailable(db_url: str, start_bridge: Any, rows: Any) -> None:
    import concurrent.futures

    import psycopg

    bridge = start_bridge(db_url, OTEL_BRIDGE_MAX_CONCURRENT_EXPORTS="1", OTEL_BRIDGE_QUEUE_TIMEOUT_S="0.5")
    first = export_request(random_requests(3, seed=21), stable=True).SerializeToString()
    second = export_request(random_requests(3, seed=22), stable=True).SerializeToString()
    with psycopg.connect(db_url) as locker, concurrent.futures.ThreadPoolExecutor(2) as pool:
        # The first export takes the only slot and waits on this lock; the second cannot start.
        locker.execute("LOCK TABLE api_performance_metrics IN ACCESS EXCLUSIVE MODE")
        held = pool.submit(raw_call, bridge.endpoint, TRACE_EXPORT, first)
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as failure:
            raw_call(bridge.endpoint, TRACE_EXPORT, second)
        locker.rollback()
        held.result(timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "overloaded" in failure.value.details()
    assert "google.rpc.retryinfo-bin" in dict(failure.value.trailing_metadata())
    assert counts(rows, db_url)["api_performance_metrics"] == 3


def test_a_killed_ingest_worker_is_replaced_and_nothing_is_lost(bridge: Any, db_url: str, rows: Any) -> None:
    import os
    import signal

    import psutil

    workers = [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) >= 1, "the default runs ingest in worker processes"
    os.kill(workers[0].pid, signal.SIGKILL)
    workers[0].wait(timeout=10)
    payload = export_request(random_requests(5, seed=31), stable=True).SerializeToString()
    statuses = []
    for _ in range(5):  # what a sender's retry loop does
        try:
            raw_call(bridge.endpoint, TRACE_EXPORT, payload)
            statuses.append(grpc.StatusCode.OK)
            break
        except grpc.RpcError as exc:
            statuses.append(exc.code())
            time.sleep(0.5)
    assert statuses[-1] == grpc.StatusCode.OK
    assert set(statuses[:-1]) <= {grpc.StatusCode.UNAVAILABLE}  # retryable, never a data error
    assert counts(rows, db_url)["api_performance_metrics"] == 5


def test_one_failure_split_over_two_exports_is_one_error_row(bridge: Any, db_url: str, rows: Any) -> None:
    from otel_bridge.workload import make_failure

    request = random_requests(1, seed=41, error_rate=0)[0]
    request.failure, request.status = make_failure("app", "77"), 500
    spans = spans_for([request], stable=True)
    server = [s for s in spans if s.kind.name == "SERVER"]
    rest = [s for s in spans if s.kind.name != "SERVER"]
    exporter = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True)
    # A batching SDK exports the handler's spans first and the SERVER span in a later batch.
    assert exporter.export(rest) == SpanExportResult.SUCCESS
    assert exporter.export(server) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert rows(db_url, "SELECT count(*), min(error_message) FROM error_logs")[0] == (1, "audit 77 not found")
    assert counts(rows, db_url)["api_error_logs"] == 1
