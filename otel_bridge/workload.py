"""A realistic app workload made with the real OpenTelemetry Python SDK.

It emits what an instrumented ASGI app with psycopg produces for the seed's endpoints: a SERVER
span per request with the attribute set of `opentelemetry-instrumentation-asgi` (old names, or
stable ones with `OTEL_SEMCONV_STABILITY_OPT_IN=http,database`), ASGI's internal send/receive
spans, identity on a middleware span (not the SERVER span, as real frameworks do), psycopg CLIENT
spans, and failures recorded twice (handler span and SERVER span). Used by `otel-bridge demo`,
the tests and the benchmark; needs the `dev` or `instrumentation` extra.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROLES = ("General User", "Employee", "Quality Analyst", "Auditor", "Quality Supervisor", "Manager",
         "Admin", "Super Admin")  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    method: str
    route: str
    queries: tuple[tuple[str, str], ...]  # (SQL, table)
    base_ms: float


ENDPOINTS = (
    Endpoint("POST", "/api/auth/login", (("SELECT id, password_hash FROM users WHERE email = %s", "users"),
                                          ("INSERT INTO auth_sessions (user_id, expires_at) VALUES (%s, %s)", "auth_sessions")), 45),
    Endpoint("GET", "/api/auth/session", (("SELECT * FROM auth_sessions WHERE id = %s", "auth_sessions"),), 8),
    Endpoint("GET", "/api/audits/{audit_id}", (("SELECT * FROM audits WHERE id = %s", "audits"),
                                                ("SELECT * FROM audit_scores WHERE audit_id = %s", "audit_scores")), 30),
    Endpoint("POST", "/api/audits", (("INSERT INTO audits (agent_id, scorecard_id, created_by) VALUES (%s, %s, %s)", "audits"),), 60),
    Endpoint("GET", "/api/users/{user_id}", (("SELECT id, name, role FROM users WHERE id = %s", "users"),), 12),
    Endpoint("PUT", "/api/users/{user_id}/role", (("UPDATE users SET role = %s WHERE id = %s", "users"),), 25),
    Endpoint("GET", "/api/dashboard/summary", (("SELECT status, count(*) FROM audits WHERE created_at > %s GROUP BY status", "audits"),), 120),
    Endpoint("GET", "/api/reports/{report_id}/export", (("SELECT * FROM audit_scores WHERE audit_id IN (%s, %s, %s)", "audit_scores"),), 400),
    Endpoint("GET", "/api/notifications", (("SELECT * FROM notifications WHERE user_id = %s ORDER BY created_at DESC LIMIT 50", "notifications"),), 15),
    Endpoint("POST", "/api/notifications/{notification_id}/read", (("UPDATE notifications SET read_at = now() WHERE id = %s", "notifications"),), 10),
)  # fmt: skip


class AuditNotFound(LookupError):
    pass


@dataclass
class Request:
    endpoint: Endpoint
    path_id: str
    status: int
    duration_ms: float
    user_id: str
    role: str
    session_id: str
    client_ip: str
    failure: Exception | None = None
    db_failure: bool = False
    start_ns: int = field(default_factory=time.time_ns)

    @property
    def path(self) -> str:
        route = self.endpoint.route
        return route.split("{")[0] + self.path_id + route.split("}")[1] if "{" in route else route


def _raise_in_handler(kind: str, audit_id: str) -> None:
    def load() -> None:
        if kind == "db":
            raise RuntimeError(f'duplicate key value violates unique constraint "audits_pkey" (id={audit_id})')
        raise AuditNotFound(f"audit {audit_id} not found")

    load()


def make_failure(kind: str, audit_id: str) -> Exception:
    """A real exception with a real traceback, as an app would raise it."""
    try:
        _raise_in_handler(kind, audit_id)
    except Exception as exc:  # noqa: BLE001 - we want the object, traceback included
        return exc
    raise AssertionError("unreachable")


def http_attributes(req: Request, stable: bool) -> dict[str, Any]:
    if stable:
        attrs: dict[str, Any] = {
            "http.request.method": req.endpoint.method, "url.path": req.path, "url.scheme": "http",
            "server.address": "api.example.com", "server.port": 443, "network.protocol.version": "1.1",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
            "client.address": req.client_ip, "client.port": 51234,
            "http.response.status_code": req.status, "http.route": req.endpoint.route,
        }  # fmt: skip
        if req.status >= 500:
            attrs["error.type"] = str(req.status)
    else:
        attrs = {
            "http.method": req.endpoint.method, "http.target": req.path, "http.scheme": "http",
            "http.host": "api.example.com:443", "net.host.port": 443, "http.flavor": "1.1",
            "http.user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
            "net.peer.ip": req.client_ip, "net.peer.port": 51234, "http.status_code": req.status,
            "http.route": req.endpoint.route, "http.server_name": "api.example.com",
            "http.url": f"http://api.example.com{req.path}",
        }  # fmt: skip
    attrs["http.request.header.authorization"] = ("Bearer s3cr3t-token",)
    attrs["http.request.header.x_request_id"] = (str(uuid.uuid4()),)
    return attrs


def db_attributes(sql: str, stable: bool) -> dict[str, Any]:
    if stable:
        return {"db.system.name": "postgresql", "db.namespace": "cqms", "db.query.text": sql,
                "server.address": "db.internal", "server.port": 5432}  # fmt: skip
    return {"db.system": "postgresql", "db.name": "cqms", "db.statement": sql, "db.user": "app",
            "net.peer.name": "db.internal", "net.peer.port": 5432}  # fmt: skip


def identity_attributes(req: Request, stable: bool) -> dict[str, Any]:
    if stable:
        return {"user.id": req.user_id, "user.roles": (req.role,), "session.id": req.session_id}
    return {"enduser.id": req.user_id, "enduser.role": req.role, "session.id": req.session_id}


def emit(tracer: trace.Tracer, req: Request, stable: bool, framework_spans: bool = True) -> None:
    """The spans of one HTTP request, timed as the request says. With `framework_spans=False`
    only the SERVER and database CLIENT spans are made (identity then sits on the SERVER span):
    the dense payload of the ingest benchmark."""
    start, end = req.start_ns, req.start_ns + int(req.duration_ms * 1e6)
    name = f"{req.endpoint.method} {req.endpoint.route}"
    server = tracer.start_span(name, kind=trace.SpanKind.SERVER, start_time=start,
                               attributes=http_attributes(req, stable))  # fmt: skip
    ctx = trace.set_span_in_context(server)
    handler = server
    if framework_spans:
        receive = tracer.start_span(f"{name} http receive", context=ctx, start_time=start)
        receive.set_attribute("asgi.event.type", "http.request")
        receive.end(start + 50_000)
        auth = tracer.start_span("auth_middleware", context=ctx, start_time=start + 60_000)
        auth.set_attributes(identity_attributes(req, stable))
        handler = tracer.start_span(f"handler {req.endpoint.route}", context=trace.set_span_in_context(auth),
                                    start_time=start + 100_000)  # fmt: skip
    else:
        server.set_attributes(identity_attributes(req, stable))
    handler.add_event("otel_bridge.breadcrumb", {"category": "http", "message": f"{name} started",
                                                 "level": "info"}, timestamp=start + 110_000)  # fmt: skip
    step = (end - start - 400_000) // (len(req.endpoint.queries) + 1)
    t = start + 200_000
    hctx = trace.set_span_in_context(handler)
    for i, (sql, _table) in enumerate(req.endpoint.queries):
        db = tracer.start_span(sql.split()[0], kind=trace.SpanKind.CLIENT, context=hctx, start_time=t,
                               attributes=db_attributes(sql, stable))  # fmt: skip
        if req.db_failure and i == len(req.endpoint.queries) - 1 and req.failure is not None:
            db.set_attribute("db.response.status_code", "23505")
            db.record_exception(req.failure, timestamp=t + step // 2)
            db.set_status(trace.StatusCode.ERROR)
        db.end(t + step)
        t += step
    if req.failure is not None:
        # Recorded on the handler span and again on the SERVER span, as frameworks do.
        if framework_spans:
            handler.record_exception(req.failure, timestamp=end - 150_000)
            handler.set_status(trace.StatusCode.ERROR)
        server.record_exception(req.failure, timestamp=end - 100_000)
        server.set_status(trace.StatusCode.ERROR)
    if framework_spans:
        handler.end(end - 100_000)
        auth.end(end - 90_000)
        send = tracer.start_span(f"{name} http send", context=ctx, start_time=end - 80_000)
        send.set_attribute("asgi.event.type", "http.response.start")
        send.end(end - 10_000)
    server.end(end)


def random_requests(count: int, seed: int = 7, error_rate: float = 0.1) -> list[Request]:
    rng = random.Random(seed)
    users = [(str(uuid.UUID(int=rng.getrandbits(128))), rng.choice(ROLES)) for _ in range(40)]
    now = time.time_ns()
    out = []
    for i in range(count):
        endpoint = rng.choice(ENDPOINTS)
        user_id, role = rng.choice(users)
        failure: Exception | None = None
        status, db_failure = 200 if endpoint.method == "GET" else 201, False
        roll = rng.random()
        if roll < error_rate * 0.5:
            failure, status = make_failure("app", str(rng.randint(1, 10**6))), 500
        elif roll < error_rate:
            failure, status, db_failure = make_failure("db", str(rng.randint(1, 10**6))), 500, True
        elif roll < error_rate + 0.05:
            status = 404
        out.append(Request(
            endpoint, str(rng.randint(1, 99999)), status,
            endpoint.base_ms * rng.lognormvariate(0, 0.5), user_id, role,
            f"sess-{user_id[:8]}", f"203.0.113.{rng.randint(1, 254)}", failure, db_failure,
            now - (count - i) * 50_000_000,
        ))  # fmt: skip
    return out


def provider(
    exporter: SpanExporter, service: str = "cqms-api", environment: str = "production", batch: bool = False
) -> TracerProvider:
    """An SDK TracerProvider exporting to `exporter`: synchronously for tests, batched (as real
    apps do) with `batch=True`."""
    resource = Resource.create({"service.name": service, "service.version": "2.4.1",
                                "deployment.environment.name": environment})  # fmt: skip
    tp = TracerProvider(resource=resource)
    processor = BatchSpanProcessor(exporter, max_queue_size=100_000) if batch else SimpleSpanProcessor(exporter)
    tp.add_span_processor(processor)
    return tp


def spans_for(
    requests: Sequence[Request], stable: bool, framework_spans: bool = True
) -> tuple[ReadableSpan, ...]:
    """Finished SDK spans for these requests (in memory, nothing sent)."""
    exporter = InMemorySpanExporter()
    tp = provider(exporter)
    tracer = tp.get_tracer("opentelemetry.instrumentation.asgi")
    for req in requests:
        emit(tracer, req, stable, framework_spans)
    tp.shutdown()
    return exporter.get_finished_spans()


def export_request(requests: Sequence[Request], stable: bool, framework_spans: bool = True) -> Any:
    """The ExportTraceServiceRequest the SDK's OTLP exporter would send for these requests."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans_for(requests, stable, framework_spans))


# --- browser traffic (what otel-bridge.js sends, as OTLP log records) ----------------------------
PAGES = (("home", "/home"), ("dashboard", "/dashboard"), ("audit-form", "/audits/new"),
         ("audit-reports", "/audits/reports"), ("user-management", "/settings/users"))  # fmt: skip


def any_value(value: Any) -> Any:
    """A Python value as an OTLP AnyValue (maps and arrays included)."""
    from opentelemetry.proto.common.v1 import common_pb2

    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
            values=[common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in value.items()]))  # fmt: skip
    if isinstance(value, list | tuple):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    return common_pb2.AnyValue(string_value=str(value))


def browser_export(sessions: int, seed: int = 7) -> Any:
    """An ExportLogsServiceRequest of browser sessions: page views, clicks and filters, page
    leaves and web vitals, with the attribute names of semconv and DESIGN §6."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    rng = random.Random(seed)
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in {"service.name": "cqms-web", "service.version": "2.4.1", "telemetry.sdk.language": "webjs",
                       "deployment.environment.name": "production", "browser.platform": "Windows",
                       "user_agent.original": "Mozilla/5.0 (Windows NT 10.0) Chrome/126.0"}.items():  # fmt: skip
        resource_logs.resource.attributes.add(key=key, value=any_value(value))
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "otel-bridge.js"
    now = time.time_ns()

    def event(name: str, at: int, attrs: dict[str, Any]) -> None:
        record = scope.log_records.add(time_unix_nano=at, event_name=name, severity_number=9)
        for key, value in attrs.items():
            record.attributes.add(key=key, value=any_value(value))

    for s in range(sessions):
        who = {"session.id": f"demo-session-{seed}-{s}", "user.id": f"user-{rng.randint(1, 30)}",
               "user.roles": [rng.choice(ROLES)], "client.address": f"198.51.100.{rng.randint(1, 254)}"}  # fmt: skip
        at = now - rng.randint(600, 3600) * 10**9
        for v in range(rng.randint(1, 5)):
            slug, path = rng.choice(PAGES)
            view_id = f"pv-{seed}-{s}-{v}"
            page = {**who, "otel_bridge.page_view.id": view_id, "url.full": f"https://cqms.example.com{path}",
                    "otel_bridge.page.slug": slug}  # fmt: skip
            event("browser.navigation", at, page)
            for vital, value in (("ttfb", rng.uniform(80, 400)), ("fcp", rng.uniform(300, 1500)),
                                 ("lcp", rng.uniform(800, 4000)), ("cls", rng.uniform(0, 0.3)),
                                 ("inp", rng.uniform(40, 400))):  # fmt: skip
                event("browser.web_vital", at + int(value * 1e6),
                      {**page, "browser.web_vital.name": vital, "browser.web_vital.value": round(value, 4)})
            for _ in range(rng.randint(0, 3)):
                at += rng.randint(2, 40) * 10**9
                kind = rng.choice(("click", "filter", "export", "search", "tab_switch"))
                event("otel_bridge.user_action", at, {**page, "otel_bridge.action.type": kind,
                                                      "otel_bridge.action.target": f"{kind}-button"})  # fmt: skip
            stay = rng.randint(5, 120)
            event("otel_bridge.page_leave", at + stay * 10**9, {**page, "otel_bridge.page.time_on_page_ms": stay * 1000,
                                                                 "otel_bridge.page.scroll_depth": rng.randint(10, 100),
                                                                 "otel_bridge.page.interactions": rng.randint(0, 9)})  # fmt: skip
            at += (stay + 1) * 10**9
    return request
