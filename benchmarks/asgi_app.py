"""The app and requests `asgi_overhead.py` times: a small Starlette app, the three ways it is
wrapped, browser-like ASGI requests, and the loop that serves a chunk of them in-process."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_bridge.instrumentation.asgi import instrument_app

ORDER_ROUTE = "/api/orders/{order_id}"


USER_ID = "u-4711"


PAGE_VIEW_ID = "pv-8f14e45f"


ITEMS = [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]


async def get_order(request: Request) -> Response:
    order_id = request.path_params["order_id"]
    return JSONResponse({"id": order_id, "status": "shipped", "total": 129.9, "currency": "EUR",
                         "items": ITEMS})  # fmt: skip


async def create_order(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"id": "o-1001", "items": len(body["items"])}, status_code=201)


async def list_orders(request: Request) -> Response:
    return JSONResponse([])


async def get_customer(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["customer_id"]})


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


def make_app() -> Starlette:
    """A fresh app per variant: `instrument_app` adds middleware to the Starlette object itself,
    so sharing one would instrument the `none` and `upstream` variants too."""
    # Unrequested routes come first on purpose: ours matches the route table a second time to find
    # the template, so the requested routes should not all sit at the head of the list.
    return Starlette(routes=[
        Route("/api/customers/{customer_id}", get_customer, methods=["GET"]),
        Route("/api/orders", list_orders, methods=["GET"]),
        Route("/api/orders", create_order, methods=["POST"]),
        Route(ORDER_ROUTE, get_order, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])  # fmt: skip


class DiscardSpanExporter(SpanExporter):
    """Ends the span pipeline without I/O; counts spans so the report can show spans/request."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def providers(
    name: str, exporter: SpanExporter
) -> tuple[TracerProvider, MeterProvider, InMemoryMetricReader]:
    resource = Resource.create({"service.name": f"bench-{name}"})
    tracer_provider = TracerProvider(resource=resource)
    # Simple rather than Batch: no background thread competing for the GIL at random moments and
    # no queue that drops spans under load, so both variants pay the same deterministic per-span
    # cost. The same processor is used for both instrumented variants.
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, MeterProvider(metric_readers=[reader], resource=resource), reader


def build(name: str, tp: TracerProvider | None, mp: MeterProvider | None) -> ASGIApp:
    app = make_app()
    if name == "none":
        return app
    if name == "upstream":
        return OpenTelemetryMiddleware(app, tracer_provider=tp, meter_provider=mp)
    if name == "ours":
        return instrument_app(app, tracer_provider=tp, meter_provider=mp)
    raise ValueError(name)


@dataclass(frozen=True)
class RequestTemplate:
    scope: dict[str, Any]
    headers: list[tuple[bytes, bytes]]
    body: bytes
    expected_status: int


def browser_headers(extra: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """What a signed-in browser page sends to its API: the user-agent and accept family, the
    identity headers `default_identity` reads, a session cookie, the W3C trace context and the
    page view baggage of the browser instrumentation, and a bearer token."""
    headers = [
        ("host", "shop.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/126.0.0.0 Safari/537.36"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.9,de;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("origin", "https://shop.example.com"),
        ("referer", "https://shop.example.com/orders"),
        ("cookie", "sid=8b1a9953c4611296a827abf8c47804d7; theme=dark"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTQ3MTEifQ.c2lnbmF0dXJl"),
        ("x-user-id", USER_ID),
        ("x-user-role", "customer"),
        ("x-session-id", "sess-2f6c0a"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("baggage", f"otel_bridge.page_view.id={PAGE_VIEW_ID}"),
        *extra,
    ]  # fmt: skip
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def request_template(
    method: str, path: str, body: bytes = b"", expected_status: int = 200
) -> RequestTemplate:
    body_headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    headers = browser_headers(body_headers if body else [])
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode("ascii"),
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("10.0.3.17", 51234), "server": ("10.0.0.5", 8000),
    }  # fmt: skip
    return RequestTemplate(scope, headers, body, expected_status)


def request_mix(count: int) -> list[RequestTemplate]:
    """60% GET /api/orders/{id} (97 distinct ids, as real paths carry), 20% POST, 20% health."""
    post_body = json.dumps({"customer": "c-77", "items": ITEMS}).encode()
    post = request_template("POST", "/api/orders", post_body, 201)
    health_check = request_template("GET", "/health")
    mix: list[RequestTemplate] = []
    for i in range(count):
        slot = i % 5
        if slot == 2:
            mix.append(post)
        elif slot == 4:
            mix.append(health_check)
        else:
            mix.append(request_template("GET", f"/api/orders/{10_000 + i % 97}"))
    return mix


def make_receive(body: bytes) -> Receive:
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:  # nothing should ask twice; answering beats hanging the benchmark
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class Recorder:
    """The `send` callable: keeps only what the checks need, so it costs every variant alike."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body = message.get("body", b"")


async def call(app: ASGIApp, template: RequestTemplate, recorder: Recorder) -> None:
    # A fresh scope per request: Starlette and the middleware write into it (route, app, state).
    scope: Scope = {**template.scope, "headers": list(template.headers)}
    await app(scope, make_receive(template.body), recorder.send)


async def run_chunk(app: ASGIApp, requests: list[RequestTemplate]) -> int:
    """Nanoseconds for `requests` in order; raises if any response has an unexpected status."""
    recorder = Recorder()
    send: Send = recorder.send
    bad = 0
    start = time.perf_counter_ns()
    for template in requests:
        scope: Scope = {**template.scope, "headers": list(template.headers)}
        await app(scope, make_receive(template.body), send)
        bad += recorder.status != template.expected_status
    elapsed = time.perf_counter_ns() - start
    if bad:
        raise SystemExit(f"{bad} of {len(requests)} requests got an unexpected status")
    return elapsed
