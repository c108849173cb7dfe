"""The demo's scripted crowd: users of every seed role browsing the example app over real HTTP.

Each user logs in, walks a journey of pages typical for the role, calls the page's APIs with the
page view id as W3C baggage (as otel-bridge.js does), and does what people do: search, filter,
create audits (sometimes twice), score them, export reports. The browser's own telemetry of each
page (web vitals, the page leave with time on page and scroll depth) is sent the way the browser
tracker sends it: OTLP log records from a `cqms-web` resource.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from otel_bridge.demo.cqms_app import PAGES, user_ids

JOURNEYS: dict[str, tuple[str, ...]] = {
    "General User": ("home", "help", "home"),
    "Employee": ("home", "reversal", "help"),
    "Quality Analyst": ("home", "dashboard", "calibration", "audit-reports"),
    "Auditor": ("home", "dashboard", "create-audit", "audit-reports", "create-audit"),
    "Quality Supervisor": ("dashboard", "audit-distribution", "audit-reports", "calibration"),
    "Manager": ("dashboard", "audit-distribution", "audit-reports", "event-management"),
    "Admin": ("home", "user-management", "audit-reports", "dashboard"),
    "Super Admin": ("user-management", "event-management", "audit-distribution"),
}
EXPORTERS = frozenset({"Manager", "Quality Supervisor", "Admin"})
PATH_BY_SLUG = {page.slug: page.path for page in PAGES}
SITE = "https://cqms.example.com"


@dataclass
class CrowdResult:
    users: int = 0
    page_views: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


class Progress:
    """One line redrawn in place on a terminal; a line per quarter otherwise (CI logs)."""

    def __init__(self, total_users: int, out: Any = sys.stderr) -> None:
        self.total, self.out, self.tty = total_users, out, out.isatty()
        self._lock = threading.Lock()
        self._drawn = 0.0
        self._quarter = 0

    def update(self, result: CrowdResult, force: bool = False) -> None:
        with self._lock:
            done = result.users / self.total if self.total else 1.0
            errors = sum(n for status, n in result.statuses.items() if status >= 500)
            line = (f"  crowd [{'#' * int(done * 30):<30}] {result.users}/{self.total} users · "
                    f"{result.requests} requests · {errors} server errors")  # fmt: skip
            if self.tty:
                if force or time.monotonic() - self._drawn > 0.1:
                    self.out.write("\r" + line + ("\n" if done >= 1 else ""))
                    self.out.flush()
                    self._drawn = time.monotonic()
            elif int(done * 4) > self._quarter or (force and done >= 1 and self._quarter < 4):
                self._quarter = int(done * 4)
                print(line, file=self.out, flush=True)


class Visitor:
    """One user's session against the app."""

    def __init__(self, base_url: str, user_id: str, role: str, seed: int, browser: Any,
                 on_request: Callable[[int], None]) -> None:  # fmt: skip
        import httpx

        self.rng = random.Random(seed)
        self.user_id, self.role = user_id, role
        self.session_id = f"sess-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:16]}"
        self.identity = {"x-user-id": user_id, "x-user-role": role, "x-session-id": self.session_id}
        self.client = httpx.Client(base_url=base_url, headers=self.identity, timeout=30,
                                   limits=httpx.Limits(max_keepalive_connections=0))  # fmt: skip
        self.browser = browser
        self.on_request = on_request
        self.page_views = 0

    def call(self, method: str, path: str, view_id: str | None = None, **kwargs: Any) -> Any:
        headers = {"baggage": f"otel_bridge.page_view.id={view_id}"} if view_id else {}
        response = self.client.request(method, path, headers=headers, **kwargs)
        self.on_request(response.status_code)
        return response

    def run(self) -> int:
        try:
            self.call("POST", "/api/auth/login", json={"user_id": self.user_id})
            referrer = None
            for slug in JOURNEYS[self.role]:
                path = PATH_BY_SLUG[slug]
                headers = {"referer": f"{SITE}{referrer}"} if referrer else {}
                opened = time.time_ns()
                response = self.client.get(path, headers=headers)
                self.on_request(response.status_code)
                view_id = response.headers.get("x-page-view-id") or None
                self.page_views += 1
                self.browser_page(slug, path, view_id, opened)
                interactions = self.page_apis(slug, view_id)
                time.sleep(self.rng.uniform(0.05, 0.25))  # reading the page
                self.browser_leave(slug, path, view_id, opened, interactions)
                referrer = path
        finally:
            self.client.close()
        return self.page_views

    def page_apis(self, slug: str, view_id: str | None) -> int:
        rng, calls = self.rng, 0

        def call(method: str, path: str, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return self.call(method, path, view_id, **kwargs)

        if slug == "home":
            found = call("GET", "/api/notifications").json()
            if found:
                call("POST", f"/api/notifications/{found[0]['id']}/read")
        elif slug == "dashboard":
            call("GET", "/api/dashboard/summary")
            call("GET", "/api/audits", params={"status": rng.choice(("open", "scored", "disputed"))})
        elif slug == "audit-distribution":
            call("GET", "/api/audits", params={"status": "scored"})
            call("GET", f"/api/users/{self.user_id}")
        elif slug == "create-audit":
            # A fresh reference on every run: the app's database outlives the demo.
            audit = {"reference": f"AUD-{uuid.uuid4().hex[:10]}",
                     "scorecard_id": rng.randint(1, 4), "criteria": [rng.randint(1, 5) for _ in range(4)]}  # fmt: skip
            started = time.monotonic()
            if rng.random() < 0.25:  # filled half the form, then left: the tracker reports the abandon
                self.browser_form("form_abandon", view_id, {"time_spent_ms": rng.randint(4000, 40000),
                                  "fields_filled": 2, "fields_total": 4, "validation_errors": rng.randint(0, 2),
                                  "draft_saves": 0})  # fmt: skip
                return calls
            call("POST", "/api/audits", json=audit)
            self.browser_form("submit", view_id, {"time_to_complete_ms": int((time.monotonic() - started) * 1000)
                              + rng.randint(20000, 180000), "fields_filled": 4, "fields_total": 4,
                              "validation_errors": rng.randint(0, 2), "draft_saves": rng.randint(0, 1)})  # fmt: skip
            if rng.random() < 0.3:  # an impatient double click
                call("POST", "/api/audits", json=audit)
        elif slug == "audit-reports":
            call("GET", "/api/audits", params={"search": f"AUD-00{rng.randint(0, 1)}"})
            # Quality analysts open audits nobody has set criteria for yet (every ninth): the bug.
            audit_id = 9 * rng.randint(1, 22) if self.role == "Quality Analyst" else rng.randint(1, 200)
            call("POST", f"/api/audits/{audit_id}/score")
            if self.role in EXPORTERS and rng.random() < 0.6:
                call("POST", "/api/reports/export")
        elif slug == "reversal":
            call("GET", f"/api/audits/{rng.randint(1, 200)}")
            call("GET", f"/api/audits/{rng.randint(5000, 6000)}")  # a stale link: 404
        return calls

    def browser_form(self, kind: str, view_id: str | None, context: dict[str, Any]) -> None:
        """The audit form's metrics, as otel-bridge.js reports a submit or an abandon."""
        if view_id is None:
            return
        self.browser_event("otel_bridge.user_action", "create-audit", PATH_BY_SLUG["create-audit"], view_id,
                           time.time_ns(), {"otel_bridge.action.type": kind,
                                            "otel_bridge.action.target": "create-audit-form",
                                            "otel_bridge.action.context": context})  # fmt: skip

    def browser_page(self, slug: str, path: str, view_id: str | None, opened: int) -> None:
        if view_id is None:
            return
        rng = self.rng
        for vital, value in (("TTFB", rng.uniform(60, 300)), ("FCP", rng.uniform(300, 1400)),
                             ("LCP", rng.uniform(700, 3500)), ("CLS", rng.uniform(0, 0.25)),
                             ("INP", rng.uniform(40, 350))):  # fmt: skip
            self.browser_event("browser.web_vital", slug, path, view_id, opened + int(value * 1e6),
                               {"browser.web_vital.name": vital, "browser.web_vital.value": round(value, 4)})  # fmt: skip
        # The page's navigation timing, in ms from its start, as the tracker sends it after `load`.
        response = rng.uniform(40, 250)
        interactive = response + rng.uniform(150, 900)
        loaded = interactive + rng.uniform(100, 1500)
        timing = {"response_start": response, "dom_interactive": interactive,
                  "dom_content_loaded_event_end": interactive + rng.uniform(5, 60), "load_event_end": loaded}  # fmt: skip
        self.browser_event("browser.navigation_timing", slug, path, view_id, opened + int(loaded * 1e6),
                           {f"browser.navigation_timing.{k}": round(v, 1) for k, v in timing.items()})  # fmt: skip

    def browser_leave(self, slug: str, path: str, view_id: str | None, opened: int, interactions: int) -> None:
        if view_id is None:
            return
        stay_ms = (time.time_ns() - opened) // 1_000_000
        self.browser_event("otel_bridge.page_leave", slug, path, view_id, time.time_ns(), {
            "otel_bridge.page.time_on_page_ms": stay_ms, "otel_bridge.page.scroll_depth": self.rng.randint(20, 100),
            "otel_bridge.page.interactions": interactions})  # fmt: skip

    def browser_event(self, name: str, slug: str, path: str, view_id: str, at: int, attrs: dict[str, Any]) -> None:
        from opentelemetry._logs import SeverityNumber

        self.browser.emit(event_name=name, timestamp=at, severity_number=SeverityNumber.INFO, attributes={
            "session.id": self.session_id, "user.id": self.user_id, "user.roles": [self.role],
            "otel_bridge.page_view.id": view_id, "otel_bridge.page.slug": slug, "url.full": f"{SITE}{path}", **attrs})  # fmt: skip


def browser_logger(endpoint: str) -> tuple[Any, Any]:
    """The browser side's exporter: (logger provider, logger)."""
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    from otel_bridge.demo.cqms_app import VERSION

    resource = Resource.create({"service.name": "cqms-web", "service.version": VERSION, "telemetry.sdk.language": "webjs",
                                "deployment.environment.name": "demo", "browser.platform": "Windows",
                                "user_agent.original": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0"})  # fmt: skip
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True)))
    return provider, provider.get_logger("otel-bridge.js")


def run_crowd(base_url: str, receiver_endpoint: str, users: int, concurrency: int = 6, seed: int = 7) -> CrowdResult:
    """`users` sessions (cycling through the seed's 24 users, three per role), `concurrency` at a
    time; returns what they did. The same seed plays the same script."""
    # One user of each role, then a second of each...: any crowd size covers the roles evenly.
    people = [user for n in range(3) for user in user_ids()[n::3]]
    result = CrowdResult()
    progress = Progress(users)
    lock = threading.Lock()

    def on_request(status: int) -> None:
        with lock:
            result.requests += 1
            result.statuses[status] += 1
        progress.update(result)

    provider, logger = browser_logger(receiver_endpoint)

    def visit(index: int) -> None:
        user_id, role = people[index % len(people)]
        views = Visitor(base_url, user_id, role, seed * 1000 + index, logger, on_request).run()
        with lock:
            result.users += 1
            result.page_views += views
        progress.update(result, force=True)

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="visitor") as pool:
            for future in [pool.submit(visit, i) for i in range(users)]:
                future.result()
    finally:
        provider.shutdown()  # flushes the browser events
    return result
