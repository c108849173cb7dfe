"""psycopg through `configure()`: a real Starlette app under uvicorn, a real psycopg_pool on the
embedded PostgreSQL and an async connection, exporting to the real receiver. It runs in its own
process because instrumenting psycopg is process-wide (the receiver in this process uses it too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

APP = """
import json, sys, threading, time

import httpx, psycopg, uvicorn
from otel_bridge.instrumentation import configure

telemetry = configure("cqms-api")

from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from otel_bridge.instrumentation.asgi import instrument_app
from otel_bridge.instrumentation.psycopg import _observe_pools

DB_URL = sys.argv[1]
pool = ConnectionPool(DB_URL, min_size=2, max_size=4, name="cqms-pool", open=True)
pool.wait()
with pool.connection() as conn:
    conn.execute("CREATE TABLE app_audits (id int PRIMARY KEY, score int)")
    conn.execute("INSERT INTO app_audits SELECT g, 80 + g FROM generate_series(1, 5) g")


def audits(request):
    with pool.connection() as conn:
        found = conn.execute("SELECT id, score FROM app_audits WHERE score > %s", (0,)).fetchall()
    return JSONResponse({"audits": len(found)})


def broken(request):
    with pool.connection() as conn:
        conn.execute("SELECT id FROM app_audits WHERE id = %s", (1,))
        conn.execute("SELECT * FROM missing_scorecards")
    return JSONResponse({})


async def rescore(request):
    async with await psycopg.AsyncConnection.connect(DB_URL) as conn:
        cur = await conn.execute("UPDATE app_audits SET score = score + 1 WHERE id <= %s", (3,))
    return JSONResponse({"updated": cur.rowcount})


app = Starlette(routes=[Route("/api/audits", audits), Route("/api/broken", broken),
                        Route("/api/audits/rescore", rescore, methods=["POST"])])
instrument_app(app)
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.05)
base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
who = {"x-user-id": "u-5", "x-user-role": "Auditor"}
with httpx.Client(base_url=base, headers=who, limits=httpx.Limits(max_keepalive_connections=0)) as client:
    assert client.get("/api/audits").json() == {"audits": 5}
    assert client.post("/api/audits/rescore").json() == {"updated": 3}
    assert client.get("/api/broken").status_code == 500
print(json.dumps(sorted([o.attributes["db.client.connection.state"], o.attributes["db.client.connection.pool.name"],
                         o.value] for o in _observe_pools(None))))
server.should_exit = True
thread.join(timeout=10)
pool.close()
"""


def test_psycopg_queries_become_complete_db_rows(bridge: Any, db_url: str, rows: Any, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APM_", "CRASHLYTICS_", "ANALYTICS_"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{bridge.endpoint}", "OTEL_EXPORTER_OTLP_INSECURE": "true"})
    done = subprocess.run([sys.executable, str(app), db_url], capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr
    # The pool metric, as the meter would collect it: two connections, none lent at the end.
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [["idle", "cqms-pool", 2], ["used", "cqms-pool", 0]]

    db = rows(db_url, """
        SELECT query_type, table_name, rows_affected, connection_pool_size, db_system, user_id, user_role
        FROM database_performance_metrics WHERE table_name IN ('app_audits', 'missing_scorecards')
        ORDER BY "timestamp"
    """)  # fmt: skip
    assert db == [
        ("CREATE", "app_audits", None, 2, "postgresql", None, None),  # startup, outside any request
        ("INSERT", "app_audits", 5, 2, "postgresql", None, None),
        ("SELECT", "app_audits", 5, 2, "postgresql", "u-5", "Auditor"),
        ("UPDATE", "app_audits", 3, None, "postgresql", "u-5", "Auditor"),  # not from a pool
        ("SELECT", "app_audits", 1, 2, "postgresql", "u-5", "Auditor"),
        ("SELECT", "missing_scorecards", None, 2, "postgresql", "u-5", "Auditor"),  # failed: no rows
    ]
    # The query breadcrumbs reach the request's error, in order, the failing one marked.
    ((crumbs,),) = rows(db_url, "SELECT breadcrumbs FROM error_logs WHERE error_message LIKE '%missing_scorecards%'")
    assert [(c["category"], c["message"], c["level"]) for c in crumbs] == [
        ("http", "GET /api/broken", "info"),
        ("query", "SELECT id FROM app_audits WHERE id = %s", "info"),
        ("query", "SELECT * FROM missing_scorecards", "error"),
    ]
    assert crumbs[1]["data"]["rows"] == 1 and crumbs[2]["data"]["error"] == "UndefinedTable"


def test_annotation_and_breadcrumb_hooks_never_raise_into_the_query() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otel_bridge.instrumentation.breadcrumbs import current_breadcrumbs
    from otel_bridge.instrumentation.psycopg import _annotate_db_span, _query_breadcrumb

    class BrokenCursor:
        @property
        def rowcount(self) -> int:
            raise RuntimeError("cursor closed")

        connection = None

    class BrokenQuery:
        def as_string(self, _: Any) -> str:
            raise RuntimeError("cannot render")

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("SELECT", kind=trace.SpanKind.CLIENT):
        _annotate_db_span(BrokenCursor())
    with tracer.start_as_current_span("GET /x", kind=trace.SpanKind.SERVER):
        _annotate_db_span(BrokenCursor())  # not a DB span: left alone
        before = len(current_breadcrumbs())
        _query_breadcrumb(BrokenCursor(), BrokenQuery(), 0.0, None)
        assert len(current_breadcrumbs()) == before  # dropped, not raised
    spans = exporter.get_finished_spans()
    assert [dict(s.attributes or {}) for s in spans] == [{}, {}]
