"""The demo's example app: a slice of the CQMS platform of the seed plan, instrumented the way a
customer would do it (`configure()` + `instrument_app()`, nothing else).

Server-rendered pages call `track_page_view`, API handlers call `track_action`; the data lives
in PostgreSQL behind a `psycopg_pool.AsyncConnectionPool`. It has the bugs a real app has, so the
crowd finds them: scoring an audit without criteria divides by zero, a double-submitted audit
violates a unique constraint, and the report export runs a slow query.

    python -m otel_bridge.demo.cqms_app --database-url postgresql://... [--port 0]

prints `listening on http://127.0.0.1:PORT` once it serves; SIGTERM stops it and flushes.
"""

from __future__ import annotations

import argparse
import html
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from otel_bridge.workload import ROLES

SERVICE = "cqms-api"
VERSION = "2.4.1"


@dataclass(frozen=True)
class Page:
    slug: str
    path: str
    title: str
    query: str  # what rendering the page reads


PAGES = (
    Page("home", "/", "Home", "SELECT count(*) FROM notifications WHERE user_id = %(user)s AND read_at IS NULL"),
    Page("dashboard", "/dashboard", "Auditors' Dashboard", "SELECT status, count(*) FROM audits GROUP BY status"),
    Page("audit-distribution", "/audits/distribution", "Audit Distribution",
         "SELECT auditor_id, count(*) FROM audits GROUP BY auditor_id ORDER BY 2 DESC LIMIT 10"),
    Page("create-audit", "/audits/new", "Create Audit", "SELECT id, name FROM scorecards ORDER BY name"),
    Page("audit-reports", "/audits/reports", "Audit Reports",
         "SELECT id, reference, score FROM audits WHERE status = 'scored' ORDER BY id DESC LIMIT 20"),
    Page("reversal", "/reversal", "Reversal", "SELECT id, reference FROM audits WHERE status = 'disputed' LIMIT 20"),
    Page("event-management", "/events", "Event Management", "SELECT count(*) FROM audits WHERE created_at > now() - interval '7 days'"),
    Page("calibration", "/improvement/calibration", "Improvement Corner", "SELECT id, name FROM scorecards"),
    Page("user-management", "/settings/users", "User Management", "SELECT id, role FROM users ORDER BY id LIMIT 50"),
    Page("help", "/help", "Help", "SELECT 1"),
)  # fmt: skip
PAGE_BY_PATH = {page.path: page for page in PAGES}
REPORT_DELAY_S = 1.05  # above the receiver's default 1000 ms slow-query threshold

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id text PRIMARY KEY, name text NOT NULL, role text NOT NULL);
CREATE TABLE IF NOT EXISTS scorecards (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS audits (
    id serial PRIMARY KEY, reference text UNIQUE NOT NULL, auditor_id text NOT NULL,
    scorecard_id int NOT NULL, status text NOT NULL DEFAULT 'open', score numeric,
    criteria int[] NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS notifications (
    id serial PRIMARY KEY, user_id text NOT NULL, body text NOT NULL, read_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now());
"""


def user_ids() -> list[tuple[str, str]]:
    """The demo's users, three per seed role: (user id, role)."""
    return [(f"u-{index * 3 + n + 1:03d}", role) for index, role in enumerate(ROLES) for n in range(3)]


def setup_database(url: str) -> None:
    """Schema and seed data, once (a rerun of the demo finds them in place)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        if conn.execute("SELECT count(*) FROM users").fetchone() != (0,):
            return
        rng = random.Random(11)
        users = user_ids()
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO users VALUES (%s, %s, %s)", [(u, f"User {u}", r) for u, r in users])
            cur.executemany("INSERT INTO scorecards (name) VALUES (%s)", [(n,) for n in ("Calls", "Chats", "Email", "Back office")])
            # Every ninth audit has no criteria yet: scoring it is the app's bug.
            cur.executemany(
                "INSERT INTO audits (reference, auditor_id, scorecard_id, status, score, criteria) VALUES (%s, %s, %s, %s, %s, %s)",
                [(f"AUD-{i:05d}", rng.choice(users)[0], rng.randint(1, 4), rng.choice(("open", "scored", "disputed")),
                  rng.randint(60, 100), [] if i % 9 == 0 else [rng.randint(1, 5) for _ in range(rng.randint(3, 8))])
                 for i in range(1, 201)],
            )  # fmt: skip
            cur.executemany("INSERT INTO notifications (user_id, body) VALUES (%s, %s)",
                            [(u, f"Audit {i} needs review") for i, (u, _) in enumerate(users * 3)])  # fmt: skip


def build_app(database_url: str) -> Any:
    """The Starlette app, its pool opened and closed by the lifespan."""
    from contextlib import asynccontextmanager

    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from otel_bridge.instrumentation.analytics import track_action, track_page_view
    from otel_bridge.instrumentation.asgi import default_identity, instrument_app
    from otel_bridge.instrumentation.breadcrumbs import breadcrumb

    pool = AsyncConnectionPool(database_url, min_size=2, max_size=6, open=False, name="cqms",
                               kwargs={"row_factory": dict_row})  # fmt: skip

    def who(request: Request) -> dict[str, Any]:
        identity = default_identity(request.scope)
        if identity is None or not identity.session_id:
            return {"session_id": "anonymous"}
        return {"session_id": identity.session_id, "user_id": identity.user_id, "roles": list(identity.roles)}

    def page_view_id(request: Request) -> str | None:
        for item in request.headers.get("baggage", "").split(","):
            key, _, value = item.strip().partition("=")
            if key == "otel_bridge.page_view.id":
                return value
        return None

    async def fetch(sql: str, params: Mapping[str, Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        async with pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    async def page(request: Request) -> Response:
        view = PAGE_BY_PATH[request.url.path]
        identity = who(request)
        view_id = track_page_view(view.path, slug=view.slug, referrer=request.headers.get("referer"), **identity)
        found = await fetch(view.query, {"user": identity.get("user_id")})
        body = f"<h1>{html.escape(view.title)}</h1><p>{len(found)} rows</p>"
        return HTMLResponse(body, headers={"x-page-view-id": view_id or ""})

    async def login(request: Request) -> Response:
        form = await request.json()
        rows = await fetch("SELECT id, role FROM users WHERE id = %s", (form.get("user_id"),))
        if not rows:
            return JSONResponse({"error": "unknown user"}, status_code=401)
        track_action("submit", "login-form", path="/", slug="home", **who(request))
        return JSONResponse({"user": rows[0]})

    async def dashboard_summary(request: Request) -> Response:
        rows = await fetch("SELECT status, count(*) AS n FROM audits GROUP BY status")
        return JSONResponse({r["status"]: r["n"] for r in rows})

    async def list_audits(request: Request) -> Response:
        search, status = request.query_params.get("search"), request.query_params.get("status")
        identity, view = who(request), page_view_id(request)
        if search:
            track_action("search", "audit-search", context={"query_length": len(search)}, page_view_id=view, **identity)
        if status:
            track_action("filter", "status-filter", context={"status": status}, page_view_id=view, **identity)
        rows = await fetch(
            "SELECT id, reference, status, score FROM audits WHERE (%(s)s::text IS NULL OR reference ILIKE %(s)s) "
            "AND (%(st)s::text IS NULL OR status = %(st)s) ORDER BY id DESC LIMIT 25",
            {"s": f"%{search}%" if search else None, "st": status},
        )  # fmt: skip
        return JSONResponse([{**r, "score": float(r["score"] or 0)} for r in rows])

    async def get_audit(request: Request) -> Response:
        rows = await fetch("SELECT id, reference, status FROM audits WHERE id = %s", (request.path_params["audit_id"],))
        return JSONResponse(rows[0]) if rows else JSONResponse({"error": "not found"}, status_code=404)

    async def score_audit(request: Request) -> Response:
        audit_id = request.path_params["audit_id"]
        (audit,) = await fetch("SELECT id, criteria FROM audits WHERE id = %s", (audit_id,)) or [None]
        if audit is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        breadcrumb(f"scoring audit {audit_id}", category="scoring", data={"criteria": len(audit["criteria"])})
        score = sum(audit["criteria"]) * 20 / len(audit["criteria"])  # the bug: no criteria yet
        await fetch("UPDATE audits SET score = %s, status = 'scored' WHERE id = %s", (score, audit_id))
        return JSONResponse({"id": audit_id, "score": score})

    async def create_audit(request: Request) -> Response:
        form = await request.json()
        identity = who(request)
        breadcrumb("audit form submitted", category="ui", data={"reference": form["reference"]})
        # A double submit hits the unique reference: the app does not handle it (yet).
        rows = await fetch(
            "INSERT INTO audits (reference, auditor_id, scorecard_id, criteria) VALUES (%s, %s, %s, %s) RETURNING id",
            (form["reference"], identity.get("user_id") or "anonymous", form.get("scorecard_id", 1), form.get("criteria", [])),
        )  # fmt: skip
        # The form's submit is the browser's to report (with its metrics); the server records the outcome.
        track_action("create", "audit", context={"criteria": len(form.get("criteria", []))},
                     page_view_id=page_view_id(request), **identity)  # fmt: skip
        return JSONResponse({"id": rows[0]["id"]}, status_code=201)

    async def get_user(request: Request) -> Response:
        rows = await fetch("SELECT id, name, role FROM users WHERE id = %s", (request.path_params["user_id"],))
        return JSONResponse(rows[0]) if rows else JSONResponse({"error": "not found"}, status_code=404)

    async def notifications(request: Request) -> Response:
        rows = await fetch("SELECT id, body FROM notifications WHERE user_id = %s ORDER BY created_at DESC LIMIT 10",
                           (who(request).get("user_id"),))  # fmt: skip
        return JSONResponse(rows)

    async def read_notification(request: Request) -> Response:
        await fetch("UPDATE notifications SET read_at = now() WHERE id = %s", (request.path_params["notification_id"],))
        return Response(status_code=204)

    async def export_report(request: Request) -> Response:
        track_action("export", "reports-export", context={"format": "csv"}, page_view_id=page_view_id(request),
                     **who(request))  # fmt: skip
        rows = await fetch("SELECT pg_sleep(%s), count(*) AS n FROM audits WHERE status = 'scored'", (REPORT_DELAY_S,))
        return JSONResponse({"rows": rows[0]["n"]})

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await pool.open(wait=True)
        yield
        await pool.close()

    routes = [Route(p.path, page) for p in PAGES] + [
        Route("/api/auth/login", login, methods=["POST"]),
        Route("/api/dashboard/summary", dashboard_summary),
        Route("/api/audits", list_audits),
        Route("/api/audits", create_audit, methods=["POST"]),
        Route("/api/audits/{audit_id:int}", get_audit),
        Route("/api/audits/{audit_id:int}/score", score_audit, methods=["POST"]),
        Route("/api/users/{user_id}", get_user),
        Route("/api/notifications", notifications),
        Route("/api/notifications/{notification_id:int}/read", read_notification, methods=["POST"]),
        Route("/api/reports/export", export_report, methods=["POST"]),
    ]
    return instrument_app(Starlette(routes=routes, lifespan=lifespan))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otel_bridge.demo.cqms_app",
                                     description="The otel-bridge demo's example CQMS app, instrumented.")  # fmt: skip
    parser.add_argument("--database-url", required=True, help="PostgreSQL URL of the app's own database")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    args = parser.parse_args(argv)

    from otel_bridge.instrumentation import configure

    configure(SERVICE, service_version=VERSION, environment="demo")
    import uvicorn

    setup_database(args.database_url)
    server = uvicorn.Server(uvicorn.Config(build_app(args.database_url), host="127.0.0.1", port=args.port,
                                           log_level="warning", lifespan="on"))  # fmt: skip
    original_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        await original_startup(sockets)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"listening on http://127.0.0.1:{port}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
