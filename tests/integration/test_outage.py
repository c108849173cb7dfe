"""Database outage mid-stream: the sender sees UNAVAILABLE with RetryInfo; once the database is
back, the SDK's own retry lands everything, nothing lost and nothing doubled."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_bridge.workload import export_request, random_requests, spans_for

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def test_outage_answers_unavailable_with_retry_info_then_sdk_retry_lands_everything(
    pg_server: Any, db_url: str, start_bridge: Any, rows: Any
) -> None:
    url = db_url
    bridge = start_bridge(url, OTEL_BRIDGE_DB_TIMEOUT_S="1")
    try:
        _outage_scenario(pg_server, bridge, url, rows)
    finally:
        pg_server.start()  # the session's server serves the other tests too


def _outage_scenario(pg_server: Any, bridge: Any, url: str, rows: Any) -> None:
    before = random_requests(20, seed=11, error_rate=0.2)
    exporter = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True, timeout=30)
    before_spans = spans_for(before, stable=True)
    assert exporter.export(before_spans) == SpanExportResult.SUCCESS

    pg_server.stop()
    payload = export_request(random_requests(5, seed=12), stable=True).SerializeToString()
    with grpc.insecure_channel(bridge.endpoint) as channel:
        call = channel.unary_unary(TRACE_EXPORT, request_serializer=None, response_deserializer=None)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            call(payload, timeout=10)
        answered_in = time.monotonic() - started
    error = failure.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert answered_in < 5, "a sender must get its answer well inside its 10 s export timeout"
    trailers = dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry_info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry_info) and retry_info.retry_delay.seconds > 0
    assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]) == retry_info

    # The SDK exporter retries on its own (honouring RetryInfo); bring the database back meanwhile.
    during = random_requests(25, seed=13, error_rate=0.2)
    restarter = threading.Timer(2.5, pg_server.start)
    restarter.start()
    assert exporter.export(spans_for(during, stable=True)) == SpanExportResult.SUCCESS
    restarter.join()
    # A batch the sender could not confirm before the outage is re-sent after it: no doubles.
    assert exporter.export(before_spans) == SpanExportResult.SUCCESS
    exporter.shutdown()

    expected = len(before) + len(during)
    assert rows(url, "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM api_performance_metrics")[0] == (
        expected, expected
    )  # fmt: skip
    failed = [r for r in before + during if r.failure is not None]
    assert rows(url, "SELECT count(*) FROM error_logs")[0][0] == len(failed)
