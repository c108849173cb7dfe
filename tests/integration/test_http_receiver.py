"""OTLP/HTTP against the real receiver with plain httpx: both encodings, gzip, the limits, CORS,
the error statuses, and a database outage. Rows are checked where something should be stored."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from otel_bridge.workload import export_request, random_requests

DATA = Path(__file__).parent.parent / "data" / "browser"
PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}


@pytest.fixture
def http_bridge(db_url: str, start_bridge: Any) -> Any:
    return start_bridge(db_url, OTEL_BRIDGE_MAX_REQUEST_BYTES=str(256 * 1024),
                        OTEL_BRIDGE_CORS_ORIGINS="http://app.example.test, http://127.0.0.1:8000")  # fmt: skip


def url(bridge: Any, path: str) -> str:
    return f"http://{bridge.http_endpoint}{path}"


def test_protobuf_and_json_exports_are_stored(http_bridge: Any, db_url: str, rows: Any) -> None:
    requests = random_requests(6, seed=3, error_rate=0)
    body = export_request(requests, stable=True).SerializeToString()
    answer = httpx.post(url(http_bridge, "/v1/traces"), content=body, headers=PROTOBUF)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-protobuf"
    assert trace_pb.ExportTraceServiceResponse.FromString(answer.content) == trace_pb.ExportTraceServiceResponse()
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics")[0][0] == 6

    logs = (DATA / "otel-browser-logs.json").read_bytes()
    answer = httpx.post(url(http_bridge, "/v1/logs"), content=gzip.compress(logs),
                        headers={**JSON, "content-encoding": "gzip"})  # fmt: skip
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert rows(db_url, "SELECT page_slug FROM user_page_views") == [("reports",)]
    traces = (DATA / "opentelemetry-js-traces.json").read_bytes()  # hex ids, as opentelemetry-js sends them
    assert httpx.post(url(http_bridge, "/v1/traces"), content=traces, headers=JSON).status_code == 200
    assert rows(db_url, "SELECT count(*) FROM user_page_views")[0][0] == 2
    # A re-sent body stores nothing twice.
    assert httpx.post(url(http_bridge, "/v1/traces"), content=traces, headers=JSON).status_code == 200
    assert rows(db_url, "SELECT count(*) FROM user_page_views")[0][0] == 2


def test_partial_success_is_reported_in_json(http_bridge: Any) -> None:
    span = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "GET /x",
            "kind": 2, "startTimeUnixNano": "1790000001000000000", "endTimeUnixNano": "1790000000000000000",
            "attributes": [{"key": "http.request.method", "value": {"stringValue": "GET"}}]}  # fmt: skip
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}], "someFutureField": 1}]}
    answer = httpx.post(url(http_bridge, "/v1/traces"), json=body)
    assert answer.status_code == 200
    partial = answer.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "end" in partial["errorMessage"]


def status_of(answer: httpx.Response) -> Any:
    if answer.headers["content-type"] == "application/x-protobuf":
        return status_pb2.Status.FromString(answer.content)
    document = answer.json()
    return status_pb2.Status(code=document.get("code", 0), message=document.get("message", ""))


@pytest.mark.parametrize(("path", "headers", "body", "status", "code"), [
    ("/v1/traces", JSON, b"{not json", 400, code_pb2.INVALID_ARGUMENT),
    ("/v1/traces", JSON, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', 400,
     code_pb2.INVALID_ARGUMENT),
    ("/v1/logs", PROTOBUF, b"\xff\xff\xff garbage", 400, code_pb2.INVALID_ARGUMENT),
    ("/v1/logs", {"content-type": "text/plain"}, b"hello", 415, code_pb2.INVALID_ARGUMENT),
    ("/v1/logs", {**JSON, "content-encoding": "br"}, b"{}", 415, code_pb2.INVALID_ARGUMENT),
    ("/v1/logs", {**JSON, "content-encoding": "gzip"}, b"not gzip at all", 400, code_pb2.INVALID_ARGUMENT),
    ("/v1/logs", JSON, b"[" * 300_000, 413, code_pb2.RESOURCE_EXHAUSTED),
    ("/v1/logs", {**JSON, "content-encoding": "gzip"}, gzip.compress(b" " * 50_000_000), 413,
     code_pb2.RESOURCE_EXHAUSTED),  # a gzip bomb: about 50 KB that inflates to 50 MB
    ("/v2/traces", JSON, b"{}", 404, code_pb2.NOT_FOUND),
])  # fmt: skip
def test_bad_requests_get_the_right_status_and_the_server_stays_up(
    http_bridge: Any, path: str, headers: dict[str, str], body: bytes, status: int, code: int
) -> None:
    answer = httpx.post(url(http_bridge, path), content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert status_of(answer).code == code and status_of(answer).message
    assert answer.headers["content-type"] == ("application/x-protobuf" if headers is PROTOBUF else "application/json")
    assert httpx.post(url(http_bridge, "/v1/logs"), json={}).status_code == 200  # still serving


def test_other_methods_get_405(http_bridge: Any) -> None:
    answer = httpx.get(url(http_bridge, "/v1/traces"))
    assert answer.status_code == 405 and answer.headers["allow"] == "POST, OPTIONS"


def test_cors_preflight_and_response_headers(http_bridge: Any) -> None:
    preflight = httpx.options(url(http_bridge, "/v1/logs"), headers={
        "origin": "http://app.example.test", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})  # fmt: skip
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://app.example.test"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type"
    refused = httpx.options(url(http_bridge, "/v1/logs"), headers={"origin": "http://evil.test",
                                                                    "access-control-request-method": "POST"})  # fmt: skip
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    posted = httpx.post(url(http_bridge, "/v1/logs"), json={}, headers={"origin": "http://127.0.0.1:8000"})
    assert posted.headers["access-control-allow-origin"] == "http://127.0.0.1:8000"
    assert "retry-after" in posted.headers["access-control-expose-headers"].lower()
    assert posted.headers["access-control-allow-credentials"] == "true"  # sendBeacon sends credentials


def test_tracker_script_is_served(http_bridge: Any) -> None:
    answer = httpx.get(url(http_bridge, "/otel-bridge.js"))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/javascript")
    assert "otelBridge" in answer.text and answer.headers["access-control-allow-origin"] == "*"


def test_database_outage_answers_503_with_retry_after(pg_server: Any, db_url: str, start_bridge: Any,
                                                      rows: Any) -> None:  # fmt: skip
    bridge = start_bridge(db_url, OTEL_BRIDGE_DB_TIMEOUT_S="1")
    logs = json.loads((DATA / "otel-browser-logs.json").read_text())
    pg_server.stop()
    try:
        started = time.monotonic()
        answer = httpx.post(url(bridge, "/v1/logs"), json=logs, timeout=10)
        assert time.monotonic() - started < 5
        assert answer.status_code == 503 and int(answer.headers["retry-after"]) >= 1
        assert status_of(answer).code == code_pb2.UNAVAILABLE
    finally:
        pg_server.start()
    deadline = time.monotonic() + 15  # the pool heals; the sender's retry is stored once
    while (answer := httpx.post(url(bridge, "/v1/logs"), json=logs, timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.5)
    assert rows(db_url, "SELECT count(*) FROM user_page_views")[0][0] == 1
