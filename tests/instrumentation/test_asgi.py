"""A real Starlette app under uvicorn on 127.0.0.1, instrumented with `instrument_app`, driven
by httpx, exporting to the real receiver: the rows are checked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from otel_bridge.instrumentation.asgi import UserIdentity, instrument_app
from otel_bridge.instrumentation.breadcrumbs import breadcrumb


async def audit(request: Any) -> JSONResponse:
    breadcrumb("loaded audit", category="db", data={"id": request.path_params["audit_id"]})
    return JSONResponse({"id": request.path_params["audit_id"], "score": 92})


async def boom(request: Any) -> JSONResponse:
    breadcrumb("about to fail", category="app")
    raise ValueError(f"scorecard {request.path_params['n']} is broken")


@pytest.fixture
def served(bridge: Any, uvicorn_serving: Any) -> Iterator[tuple[str, TracerProvider]]:
    provider = TracerProvider(resource=Resource.create({"service.name": "cqms-api"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True)))

    def broken_identity(scope: Any) -> UserIdentity:
        if scope["path"].endswith("/hook-fails"):
            raise RuntimeError("identity backend down")
        headers = dict(scope["headers"])
        return UserIdentity(headers.get(b"x-user-id", b"").decode() or None, ["Auditor"], "sess-42")

    app = Starlette(routes=[Route("/api/audits/{audit_id}", audit), Route("/api/boom/{n:int}", boom),
                            Route("/api/audits/{audit_id}/hook-fails", audit)])  # fmt: skip
    instrument_app(app, identity=broken_identity, tracer_provider=provider)
    with uvicorn_serving(app) as base:
        yield base, provider
    provider.shutdown()


def test_instrumented_app_rows(served: tuple[str, TracerProvider], db_url: str, rows: Any) -> None:
    base, provider = served
    # No keep-alive: uvicorn closes a connection whose request raised.
    with httpx.Client(base_url=base, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        ok = client.get("/api/audits/8812", headers={"x-user-id": "u-7", "authorization": "Bearer secret",
                                                     "baggage": "otel_bridge.page_view.id=pv-9"})  # fmt: skip
        assert ok.status_code == 200
        assert client.get("/api/boom/3").status_code == 500
        assert client.get("/api/audits/1/hook-fails").status_code == 200  # a failing hook breaks nothing
    deadline = time.monotonic() + 10  # the last span is exported as its response goes out
    while time.monotonic() < deadline and rows(db_url, "SELECT count(*) FROM api_performance_metrics")[0][0] < 3:
        time.sleep(0.1)
    api = rows(db_url, "SELECT endpoint_path, status_code, user_id, user_role, session_id, page_view_id, "
                       "response_size_bytes > 0 FROM api_performance_metrics ORDER BY request_timestamp")  # fmt: skip
    assert api == [
        ("/api/audits/{audit_id}", 200, "u-7", "Auditor", "sess-42", "pv-9", True),
        ("/api/boom/{n}", 500, None, "Auditor", "sess-42", None, None),  # no response of its own
        ("/api/audits/{audit_id}/hook-fails", 200, None, None, None, None, True),
    ]
    ((message, headers),) = rows(db_url, "SELECT error_message, request_headers FROM api_error_logs")
    assert message == "scorecard 3 is broken"
    assert set(headers) == {"user-agent"} and headers["user-agent"].startswith("python-httpx/")  # captured, nothing else
    ((error_type, crumbs),) = rows(db_url, "SELECT error_type, breadcrumbs FROM error_logs")
    assert error_type == "API"
    assert [c["message"] for c in crumbs] == ["GET /api/boom/3", "about to fail"]


def test_fastapi_gets_one_server_span_with_its_route(uvicorn_serving: Any) -> None:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI()

    @app.get("/api/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    assert instrument_app(app, tracer_provider=provider) is app  # inside FastAPI's own stack
    with uvicorn_serving(app) as base:
        assert httpx.get(f"{base}/api/users/42", headers={"x-user-id": "u-1"}).status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not exporter.get_finished_spans():
            time.sleep(0.05)
    (span,) = exporter.get_finished_spans()  # one request, one span: nothing counted twice
    assert span.name == "GET /api/users/{user_id}"
    assert (span.attributes["http.route"], span.attributes["user.id"]) == ("/api/users/{user_id}", "u-1")


def test_in_flight_requests_are_counted_for_crash_reports(uvicorn_serving: Any) -> None:
    from otel_bridge.instrumentation.asgi import active_requests

    async def inside(request: Any) -> JSONResponse:
        return JSONResponse({"active": active_requests()})

    app = Starlette(routes=[Route("/api/inside", inside)])
    instrument_app(app, tracer_provider=TracerProvider())
    with uvicorn_serving(app) as base:
        assert httpx.get(f"{base}/api/inside").json() == {"active": 1}
    assert active_requests() == 0
