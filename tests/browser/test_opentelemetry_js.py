"""Upstream opentelemetry-js in real Chromium -> OTLP/HTTP JSON -> the real receiver -> rows.

The page does what an app following the upstream browser READMEs does (`otel_js/entry.js`:
WebTracerProvider + BatchSpanProcessor + OTLPTraceExporter, DocumentLoadInstrumentation and
UserInteractionInstrumentation, a span processor stamping session.id / user.id / user.roles),
is served from its own origin (so every export is a CORS request with a preflight), and two
buttons are clicked. Its `documentLoad` trace must land a page view and its load timings, each
`click` span a user action with its target, and the session a `user_sessions` row.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import HTMLResponse, Response

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Audit reports</title>
  <link rel="icon" href="data:,">
  <script>window.OTEL_JS_TEST = __CONFIG__;</script>
  <script src="/assets/otel-js.js"></script>
</head>
<body>
  <h1>Audit reports</h1>
  <p>Quarterly audit scores by site.</p>
  <button id="refresh" type="button">Refresh</button>
  <button id="export-csv" type="button">Export CSV</button>
  <output id="status"></output>
  <img src="/assets/chart.svg" alt="scores" width="120" height="40">
  <script>
    const status = document.getElementById("status");
    document.getElementById("refresh").addEventListener("click", () => { status.textContent = "refreshed"; });
    document.getElementById("export-csv").addEventListener("click", () => {
      setTimeout(() => { status.textContent = "exported"; }, 10);
    });
  </script>
</body>
</html>
"""

CHART = b'<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40"><rect width="80" height="40"/></svg>'
USER = {"userId": "auditor-17", "roles": ["Auditor"], "serviceName": "cqms-web"}


async def chart(request: Any) -> Response:
    # Like a real page's images: the load event waits for it, so the text paints first and the
    # documentLoad span (collected after `load`) has its firstContentfulPaint event.
    await asyncio.sleep(0.3)
    return Response(CHART, media_type="image/svg+xml")


@dataclass
class Visit:
    url: str
    session: str
    exports: list[tuple[int, str]] = field(default_factory=list)  # (status, OTLP JSON body)

    def spans(self, name: str) -> list[dict[str, Any]]:
        return [span for _, body in self.exports for rs in json.loads(body)["resourceSpans"]
                for ss in rs["scopeSpans"] for span in ss["spans"] if span["name"] == name]  # fmt: skip

    def dump(self) -> None:
        """What upstream sent, printed so that a failure shows it."""
        for status, body in self.exports:
            print(f"--- POST /v1/traces -> {status}\n{body}")


def visit(page: Any, site: Any, bundle: Any, db_url: str, start_bridge: Any, wait_for_rows: Any) -> Visit:
    """Serve the page, point it at a fresh receiver, load it, click both buttons, flush, and
    wait until the session row counts both clicks."""
    config: dict[str, Any] = dict(USER)

    def report_page(request: Any) -> HTMLResponse:
        return HTMLResponse(PAGE.replace("__CONFIG__", json.dumps(config)))

    web = site(files={"/assets/otel-js.js": bundle},
               routes={"/audits/reports.html": report_page, "/assets/chart.svg": chart})  # fmt: skip
    bridge = start_bridge(db_url, OTEL_BRIDGE_CORS_ORIGINS=web.url)
    config["receiver"] = f"http://{bridge.http_endpoint}"

    exports: list[tuple[int, str]] = []
    page.on("response", lambda r: r.request.method == "POST" and r.url.endswith("/v1/traces")
            and exports.append((r.status, r.request.post_data or "")))  # fmt: skip
    url = web.url_for("/audits/reports.html")
    page.goto(url, wait_until="load")
    done = Visit(url, page.evaluate("window.otelJsTest.sessionId"), exports)
    page.click("#refresh")
    page.click("#export-csv")
    page.wait_for_function("document.getElementById('status').textContent === 'exported'")
    page.evaluate("window.otelJsTest.flush()")
    wait_for_rows(db_url, "SELECT actions_count FROM user_sessions", lambda r: r and r[0][0] >= 2)
    done.dump()
    assert exports and all(status == 200 for status, _ in exports), [s for s, _ in exports]
    return done


def test_document_load_and_clicks_land_rows(page: Any, site: Any, otel_js_bundle: Any, db_url: str,
                                            start_bridge: Any, wait_for_rows: Any, rows: Any) -> None:  # fmt: skip
    seen = visit(page, site, otel_js_bundle, db_url, start_bridge, wait_for_rows)
    session = seen.session

    views = rows(db_url, "SELECT session_id, user_id, user_role, page_slug, page_path, url, service_name, "
                         "service_version, environment, page_view_id, trace_id FROM user_page_views")  # fmt: skip
    assert len(views) == 1, views
    (view,) = views
    assert view[:9] == (session, "auditor-17", "Auditor", "reports", "/audits/reports.html", seen.url,
                        "cqms-web", "1.2.3", "test")  # fmt: skip
    (load_span,) = seen.spans("documentLoad")
    assert view[9] == view[10] == load_span["traceId"]  # the documentLoad trace is the page view

    actions = rows(db_url, "SELECT session_id, user_id, user_role, page_slug, action_type, action_target "
                           "FROM user_actions ORDER BY action_timestamp")  # fmt: skip
    assert actions == [
        (session, "auditor-17", "Auditor", "reports", "click", '//*[@id="refresh"]'),
        (session, "auditor-17", "Auditor", "reports", "click", '//*[@id="export-csv"]'),
    ]

    perf = rows(db_url, "SELECT session_id, user_id, page_slug, page_view_id, time_to_interactive, "
                        "dom_content_loaded, page_load_time, first_contentful_paint "
                        "FROM frontend_performance_metrics")  # fmt: skip
    assert len(perf) == 1, perf
    (session_id, user_id, slug, view_id, tti, dcl, load, fcp) = perf[0]
    assert (session_id, user_id, slug, view_id) == (session, "auditor-17", "reports", view[9])
    assert None not in (tti, dcl, load, fcp), perf
    assert 0 <= tti <= dcl <= load < 10_000, perf  # a local page: milliseconds, in order
    assert 0 <= fcp <= load, perf  # painted while the image was still loading

    sessions = rows(db_url, "SELECT session_id, user_id, user_role, pages_visited, actions_count, user_agent "
                            "FROM user_sessions")  # fmt: skip
    ((sid, user_id, role, pages, actions_count, agent),) = sessions
    assert (sid, user_id, role, pages, actions_count) == (session, "auditor-17", "Auditor", ["reports"], 2)
    assert agent is not None and "Chrome" in agent


def test_time_to_first_byte_comes_from_the_document_fetch_span(
    page: Any, site: Any, otel_js_bundle: Any, db_url: str, start_bridge: Any, wait_for_rows: Any, rows: Any
) -> None:
    """instrumentation-document-load puts `responseStart` on the `documentFetch` child span, not
    on `documentLoad` (whose events are fetchStart, unloadEvent*, domInteractive,
    domContentLoadedEvent*, domComplete, loadEvent* and the paint events): the page view's TTFB
    is that span's responseStart - fetchStart."""
    seen = visit(page, site, otel_js_bundle, db_url, start_bridge, wait_for_rows)
    (fetch_span,) = seen.spans("documentFetch")
    times = {event["name"]: int(event["timeUnixNano"]) for event in fetch_span["events"]}
    expected = (times["responseStart"] - times["fetchStart"]) / 1e6

    ((ttfb,),) = wait_for_rows(db_url, "SELECT time_to_first_byte FROM frontend_performance_metrics",
                               lambda r: r and r[0][0] is not None, timeout=3)  # fmt: skip
    assert ttfb is not None, "documentFetch's responseStart was not mapped to time_to_first_byte"
    assert abs(ttfb - expected) <= 2, (ttfb, expected)
    # Each resourceFetch child is one entry of the page's resource load times.
    ((resources,),) = rows(db_url, "SELECT resource_load_times FROM frontend_performance_metrics")
    fetched = {r["url"].rsplit("/", 1)[-1]: r for r in resources}
    assert len(seen.spans("resourceFetch")) == len(resources) and any(n.endswith(".js") for n in fetched), fetched
    assert all(r["duration_ms"] >= 0 for r in resources), resources
