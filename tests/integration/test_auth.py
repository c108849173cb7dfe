"""Bearer tokens (`OTEL_BRIDGE_AUTH_TOKENS`) with real clients: the OTel SDK's gRPC exporter with
and without the header, and plain HTTP. A refused sender stores nothing; tokens never reach logs."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_bridge.workload import random_requests, spans_for

TOKEN = "tok-4b1d9e0c7f2a"


def test_tokens_are_required_on_grpc_and_http(db_url: str, start_bridge: Any, rows: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    bridge = start_bridge(db_url, OTEL_BRIDGE_AUTH_TOKENS=f"old-token-1234, {TOKEN}")
    spans = spans_for(random_requests(3, seed=2, error_rate=0), stable=True)
    anonymous = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True, timeout=10)
    assert anonymous.export(spans) == SpanExportResult.FAILURE  # UNAUTHENTICATED: not retried
    wrong = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True, timeout=10,
                             headers={"authorization": "Bearer not-the-token"})  # fmt: skip
    assert wrong.export(spans) == SpanExportResult.FAILURE
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics")[0][0] == 0
    allowed = OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True, timeout=10,
                               headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert allowed.export(spans) == SpanExportResult.SUCCESS
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics")[0][0] == 3

    url = f"http://{bridge.http_endpoint}/v1/logs"
    refused = httpx.post(url, json={}, headers={"authorization": f"Bearer {TOKEN}x"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["message"] == "missing or invalid bearer token"
    assert httpx.post(url, json={}, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.get(f"http://{bridge.http_endpoint}/otel-bridge.js").status_code == 200  # public
    assert TOKEN not in caplog.text and "not-the-token" not in caplog.text
    for exporter in (anonymous, wrong, allowed):
        exporter.shutdown()
