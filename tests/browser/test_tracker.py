"""otel-bridge.js in real Chromium -> OTLP/HTTP JSON -> the real receiver -> rows.

The page loads the tracker from the receiver (`GET /otel-bridge.js`, as a customer would), the
user scrolls, clicks annotated buttons, starts a form and leaves it for another view (history
API), calls a same-origin API served by an instrumented ASGI app, hits a JavaScript error, and
leaves. Every table the browser feeds is checked.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from otel_bridge.instrumentation.asgi import instrument_app

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8"><title>Audit reports</title><link rel="icon" href="data:,">
  <script src="__RECEIVER__/otel-bridge.js"></script>
  <script>
    otelBridge.identify("auditor-17", "Auditor");
    otelBridge.init({endpoint: "__RECEIVER__", serviceName: "cqms-web", release: "2.4.1",
                     environment: "test", batchIntervalMs: 300});
  </script>
  <style>main { height: 4000px; }</style>
</head>
<body><main>
  <h1>Audit reports</h1>
  <button id="export-csv" data-otel-action="export" data-otel-target="export-csv" data-otel-format="csv">Export</button>
  <button id="filter-open" data-otel-action="filter" data-otel-target="status-filter" data-otel-status="open">Open</button>
  <form id="audit-form"><input name="agent" required><input name="score" type="number" required>
    <button type="submit">Save</button></form>
  <a id="to-dashboard" href="/dashboard">Dashboard</a>
  <button id="load-audit" type="button">Load audit</button>
  <button id="crash" type="button">Recalculate</button>
  <output id="status"></output>
  <script>
    document.getElementById("to-dashboard").addEventListener("click", (e) => {
      e.preventDefault(); history.pushState({}, "", "/dashboard");
    });
    document.getElementById("load-audit").addEventListener("click", async () => {
      const r = await fetch("/api/audits/7");
      document.getElementById("status").textContent = "loaded " + (await r.json()).id;
    });
    document.getElementById("crash").addEventListener("click", () => { window.audit.recalculate(); });
  </script>
</main></body>
</html>
"""


def test_tracker_lands_every_browser_table(page: Any, site: Any, db_url: str, start_bridge: Any,
                                           wait_for_rows: Any, rows: Any) -> None:  # fmt: skip
    bridge = start_bridge(db_url, OTEL_BRIDGE_CORS_ORIGINS="*")
    receiver = f"http://{bridge.http_endpoint}"

    async def audit(request: Any) -> JSONResponse:
        return JSONResponse({"id": request.path_params["audit_id"]})

    provider = TracerProvider(resource=Resource.create({"service.name": "cqms-api"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True)))
    api = instrument_app(Starlette(routes=[Route("/api/audits/{audit_id}", audit)]), tracer_provider=provider)
    html = PAGE.replace("__RECEIVER__", receiver)
    web = site(routes={"/audits/reports": lambda request: HTMLResponse(html)}, app=api)

    page.set_viewport_size({"width": 1200, "height": 800})
    page.goto(web.url_for("/audits/reports"), wait_until="load")
    page.evaluate("(() => window.scrollTo(0, document.documentElement.scrollHeight * 0.75 - innerHeight))()")
    page.click("#export-csv")
    page.click("#filter-open")
    page.fill("input[name=agent]", "Jane")
    page.wait_for_timeout(1200)  # time on the first page: over a second
    page.click("#to-dashboard")  # SPA navigation: leaves the first view, abandons the form
    page.click("#load-audit")
    page.wait_for_function("document.getElementById('status').textContent === 'loaded 7'")
    page.click("#crash")  # TypeError: window.audit is undefined
    page.goto("about:blank")  # leaving: pagehide flushes with keepalive

    views = wait_for_rows(db_url, "SELECT page_slug, page_path, referrer, time_on_page, scroll_depth, "
                                  "interactions_count, page_view_id, user_id, user_role "
                                  "FROM user_page_views ORDER BY view_timestamp",
                          lambda r: len(r) == 2 and r[1][3] is not None, timeout=15)  # fmt: skip
    (first, second) = views
    assert first[:3] == ("reports", "/audits/reports", None)
    assert second[:3] == ("dashboard", "/dashboard", web.url_for("/audits/reports"))
    assert first[3] >= 1 and 70 <= first[4] <= 80 and first[5] >= 3, first  # seconds, %, interactions
    assert first[7:] == second[7:] == ("auditor-17", "Auditor")

    actions = rows(db_url, "SELECT action_type, action_target, page_slug, action_context FROM user_actions "
                           "ORDER BY action_timestamp")  # fmt: skip
    by_target = {target: (kind, slug, context) for kind, target, slug, context in actions}
    assert by_target["export-csv"][:2] == ("export", "reports") and by_target["export-csv"][2] == {"format": "csv"}
    assert by_target["status-filter"][:2] == ("filter", "reports")
    kind, slug, context = by_target["audit-form"]
    assert (kind, slug, context["fields_filled"], context["fields_total"]) == ("form_abandon", "reports", 1, 2)
    assert by_target["load-audit"][:2] == ("click", "dashboard") and "crash" in by_target

    ((pages, actions_count, agent),) = rows(db_url, "SELECT pages_visited, actions_count, user_agent FROM user_sessions")
    assert pages == ["reports", "dashboard"] and actions_count == len(actions) and "Chrome" in agent

    perf = rows(db_url, "SELECT page_slug, time_to_first_byte, first_contentful_paint, page_load_time, "
                        "resource_load_times IS NOT NULL FROM frontend_performance_metrics WHERE page_view_id = %s",
                (first[6],))  # fmt: skip
    ((slug, ttfb, fcp, load, has_resources),) = perf
    assert slug == "reports" and None not in (ttfb, fcp, load) and has_resources, perf

    errors = wait_for_rows(db_url, "SELECT error_type, exception_type, page_slug, breadcrumbs, user_id "
                                   "FROM error_logs", timeout=5)  # fmt: skip
    ((error_type, exception_type, error_slug, crumbs, user_id),) = errors
    assert (error_type, exception_type, error_slug, user_id) == ("JavaScript", "TypeError", "dashboard", "auditor-17")
    messages = [c["message"] for c in crumbs]
    assert any("export-csv" in m for m in messages) and any("status-filter" in m for m in messages), messages
    assert any(m.startswith("GET /api/audits/7") for m in messages), json.dumps(crumbs)

    api = wait_for_rows(db_url, "SELECT endpoint_path, page_view_id, status_code FROM api_performance_metrics")
    assert api == [("/api/audits/{audit_id}", second[6], 200)]  # joins back to the dashboard view
    provider.shutdown()
