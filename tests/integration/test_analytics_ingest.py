"""Browser analytics events -> page views, actions and sessions, with events out of order, spread
over several requests and re-sent."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.common.v1 import common_pb2

LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
T0 = 1_790_000_000_000_000_000
SECOND = 1_000_000_000


def any_value(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
            values=[common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in value.items()]))  # fmt: skip
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    return common_pb2.AnyValue(string_value=str(value))


def browser_request(*events: tuple[str, int, dict[str, Any]]) -> bytes:
    """Log records shaped like otel-bridge.js / otel-browser events (semconv names, webjs SDK)."""
    request = logs_pb.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in {"service.name": "cqms-web", "telemetry.sdk.language": "webjs",
                       "browser.platform": "Linux", "user_agent.original": "Mozilla/5.0 Chrome/126"}.items():  # fmt: skip
        resource_logs.resource.attributes.add(key=key, value=any_value(value))
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "otel-bridge.js"
    for name, offset_s, attrs in events:
        record = scope.log_records.add(time_unix_nano=T0 + offset_s * SECOND, event_name=name)
        for key, value in attrs.items():
            record.attributes.add(key=key, value=any_value(value))
    return request.SerializeToString()


def send(endpoint: str, payload: bytes) -> logs_pb.ExportLogsServiceResponse:
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(LOGS_EXPORT, request_serializer=None, response_deserializer=None)
        return logs_pb.ExportLogsServiceResponse.FromString(call(payload, timeout=10))


WHO = {"session.id": "s-1", "user.id": "u-1", "user.roles": "Auditor", "client.address": "192.0.2.10"}


def view(view_id: str, path: str, **extra: Any) -> dict[str, Any]:
    return {**WHO, "otel_bridge.page_view.id": view_id, "url.full": f"https://app.example.com{path}", **extra}


def test_sessions_and_time_on_page_whatever_the_order(db_url: str, start_bridge: Any, rows: Any) -> None:
    bridge = start_bridge(db_url, OTEL_BRIDGE_PAGE_SLUG_RULES=r"^/audits/\d+$=audit-detail")
    later = browser_request(
        ("browser.navigation", 75, view("pv-c", "/audits/42")),
        ("browser.navigation", 30, view("pv-b", "/src/features/dashboard/presentation/new-auditors-dashboard.html")),
    )
    first = browser_request(
        ("browser.navigation", 0, view("pv-a", "/home", **{"otel_bridge.page.slug": "home-page"})),
        ("browser.user_action.click", 10, {**WHO, "otel_bridge.page_view.id": "pv-a", "url.path": "/home",
                                           "browser.element.attributes": {"id": "filter-button", "data-otel-filter": "7d"}}),
        ("otel_bridge.page_leave", 25, {**WHO, "otel_bridge.page_view.id": "pv-a",
                                        "otel_bridge.page.time_on_page_ms": 24_600, "otel_bridge.page.scroll_depth": 80,
                                        "otel_bridge.page.interactions": 3}),
    )  # fmt: skip
    assert not send(bridge.endpoint, later).HasField("partial_success")
    assert not send(bridge.endpoint, first).HasField("partial_success")
    send(bridge.endpoint, first)  # a retry of a request that was stored: changes nothing

    views = rows(db_url, "SELECT page_view_id, page_slug, time_on_page, scroll_depth, interactions_count, "
                         "user_role FROM user_page_views ORDER BY view_timestamp")  # fmt: skip
    assert views == [
        ("pv-a", "home-page", 25, 80, 3, "Auditor"),  # the page_leave's own figure
        ("pv-b", "new-auditors-dashboard", 45, None, 0, "Auditor"),  # until the next view
        ("pv-c", "audit-detail", None, None, 0, "Auditor"),  # the last view: not known yet
    ]
    (action,) = rows(db_url, "SELECT action_type, action_target, action_context->>'data-otel-filter', page_slug "
                             "FROM user_actions")  # fmt: skip
    assert action == ("click", "filter-button", "7d", "home")
    (session,) = rows(db_url, "SELECT session_id, user_id, user_role, session_duration, pages_visited, "
                              "actions_count, user_agent, ip_address IS NOT NULL, "
                              "ip_address <> '192.0.2.10' FROM user_sessions")  # fmt: skip
    assert session == ("s-1", "u-1", "Auditor", 75, ["home-page", "new-auditors-dashboard", "audit-detail"], 1,
                       "Mozilla/5.0 Chrome/126", True, True)  # fmt: skip


def test_events_without_a_session_are_rejected_and_counted(bridge: Any, db_url: str, rows: Any) -> None:
    response = send(bridge.endpoint, browser_request(
        ("browser.navigation", 0, {"url.full": "https://app.example.com/x"}),
        ("browser.navigation", 1, view("pv-z", "/y")),
    ))  # fmt: skip
    assert response.partial_success.rejected_log_records == 1
    assert "browser.navigation without session.id" in response.partial_success.error_message
    assert rows(db_url, "SELECT count(*) FROM user_page_views")[0][0] == 1


def test_web_vitals_and_timings_fill_one_row_per_page_view(bridge: Any, db_url: str, rows: Any) -> None:
    perf = {**WHO, "otel_bridge.page_view.id": "pv-p", "browser.document.url.full": "https://app.example.com/dashboard"}
    # Performance events first, the page view itself in a later request.
    send(bridge.endpoint, browser_request(
        ("browser.web_vital", 2, {**perf, "browser.web_vital.name": "lcp", "browser.web_vital.value": 1800.4,
                                  "browser.web_vital.rating": "good"}),
        ("browser.web_vital", 9, {**perf, "browser.web_vital.name": "lcp", "browser.web_vital.value": 2450.0}),
        ("browser.web_vital", 9, {**perf, "browser.web_vital.name": "cls", "browser.web_vital.value": "0.0713"}),
        ("browser.web_vital", 3, {**perf, "browser.web_vital.name": "inp", "browser.web_vital.value": 96}),
        ("browser.navigation_timing", 1, {**perf, "url.full": "https://app.example.com/dashboard",
                                          "browser.navigation_timing.load_event_end": 1234.6,
                                          "browser.navigation_timing.dom_content_loaded_event_end": 900,
                                          "browser.navigation_timing.dom_interactive": 850,
                                          "browser.resource_timing.response_start": 120.2}),
        ("browser.resource_timing", 1, {**perf, "url.full": "https://cdn.example.com/app.js",
                                        "browser.resource_timing.initiator_type": "script",
                                        "browser.resource_timing.duration": 210.0,
                                        "browser.resource_timing.transfer_size": 5120,
                                        "browser.resource_timing.domain_lookup_start": 10,
                                        "browser.resource_timing.domain_lookup_end": 14,
                                        "browser.resource_timing.request_start": 20,
                                        "browser.resource_timing.response_start": 120,
                                        "browser.resource_timing.response_end": 220}),
    ))  # fmt: skip
    # The older web-vital shape: the values in a body map.
    old = logs_pb.ExportLogsServiceRequest.FromString(browser_request(("browser.web_vital", 4, perf)))
    record = old.resource_logs[0].scope_logs[0].log_records[0]
    record.body.CopyFrom(any_value({"name": "FCP", "value": 640.0, "delta": 640.0, "id": "v3-1"}))
    send(bridge.endpoint, old.SerializeToString())
    send(bridge.endpoint, browser_request(("browser.navigation", 0, view("pv-p", "/dashboard"))))

    (row,) = rows(db_url, "SELECT page_slug, largest_contentful_paint, cumulative_layout_shift, "
                          "interaction_to_next_paint, first_contentful_paint, page_load_time, "
                          "dom_content_loaded, time_to_interactive, time_to_first_byte, window_load, "
                          "resource_load_times, timestamp = to_timestamp(%s) FROM frontend_performance_metrics",
                  (T0 / 1e9,))  # fmt: skip
    assert row[:10] == ("dashboard", 2450, Decimal("0.0713"), 96, 640, 1235, 900, 850, 120, 1235)
    (resource,) = row[10]
    assert resource["url"] == "https://cdn.example.com/app.js" and resource["type"] == "script"
    assert (resource["dns_ms"], resource["ttfb_ms"], resource["download_ms"]) == (4, 100, 100)
    assert row[11], "timed at the page view, not at its first performance event"


def test_an_error_without_breadcrumbs_gets_its_sessions_history(bridge: Any, db_url: str, rows: Any) -> None:
    send(bridge.endpoint, browser_request(
        ("browser.navigation", 0, view("pv-1", "/home")),
        ("browser.user_action.click", 5, {**WHO, "url.path": "/home", "otel_bridge.action.target": "export-csv",
                                          "otel_bridge.action.type": "export"}),
        ("browser.navigation", 20, view("pv-2", "/reports")),
        ("browser.navigation", 500, view("pv-3", "/later")),  # after the error: not a breadcrumb
    ))  # fmt: skip
    send(bridge.endpoint, browser_request(
        ("exception", 30, {**WHO, "exception.type": "TypeError", "exception.message": "x is undefined"}),
    ))  # fmt: skip
    ((error_type, crumbs),) = rows(db_url, "SELECT error_type, breadcrumbs FROM error_logs")
    assert error_type == "JavaScript"
    assert [(c["category"], c["message"]) for c in crumbs] == [
        ("navigation", "home"), ("ui.export", "export-csv"), ("navigation", "reports"),
    ]


def test_opentelemetry_js_document_load_and_click_spans(bridge: Any, db_url: str, rows: Any) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "cqms-web"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=bridge.endpoint, insecure=True)))
    tracer = provider.get_tracer("@opentelemetry/instrumentation-document-load")
    ms = 1_000_000
    # Span shapes of opentelemetry-js instrumentation-document-load and -user-interaction, with the
    # session id its SessionSpanProcessor stamps on every span.
    load = tracer.start_span("documentLoad", start_time=T0, attributes={
        "url.full": "https://app.example.com/audits/reports", "session.id": "s-js",
        "user_agent.original": "Mozilla/5.0 Firefox/128"})  # fmt: skip
    for event, offset in (("fetchStart", 0), ("domInteractive", 700), ("domContentLoadedEventEnd", 820),
                          ("firstContentfulPaint", 640), ("loadEventEnd", 1500)):  # fmt: skip
        load.add_event(event, timestamp=T0 + offset * ms)
    # The document's own network timings are on a documentFetch child; each resource is a
    # resourceFetch child (secureConnectionStart 0 in the browser comes before fetchStart).
    context = trace.set_span_in_context(load)
    fetches = (("documentFetch", "https://app.example.com/audits/reports", 0, 95, 130),
               ("resourceFetch", "https://app.example.com/assets/app.js", 200, 260, 310))  # fmt: skip
    for name, url, start, response_start, end in fetches:
        fetch = tracer.start_span(name, context=context, start_time=T0 + start * ms, attributes={
            "url.full": url, "session.id": "s-js", "http.response_content_length": 4096})  # fmt: skip
        for event, offset in (("fetchStart", start), ("secureConnectionStart", -1), ("requestStart", start + 20),
                              ("responseStart", response_start), ("responseEnd", end)):  # fmt: skip
            fetch.add_event(event, timestamp=T0 + offset * ms)
        fetch.end(T0 + end * ms)
    load.end(T0 + 1500 * ms)
    click = tracer.start_span("click", start_time=T0 + 4000 * ms, attributes={
        "event_type": "click", "target_element": "BUTTON", "target_xpath": '//*[@id="export"]',
        "url.full": "https://app.example.com/audits/reports", "session.id": "s-js"})  # fmt: skip
    click.end(T0 + 4010 * ms)
    provider.shutdown()

    assert rows(db_url, "SELECT page_slug, session_id FROM user_page_views") == [("reports", "s-js")]
    assert rows(db_url, "SELECT action_type, action_target FROM user_actions") == [("click", '//*[@id="export"]')]
    assert rows(db_url, "SELECT page_load_time, dom_content_loaded, time_to_interactive, first_contentful_paint, "
                        "time_to_first_byte FROM frontend_performance_metrics") == [(1500, 820, 700, 640, 95)]  # fmt: skip
    ((resources,),) = rows(db_url, "SELECT resource_load_times FROM frontend_performance_metrics")
    assert resources == [{"url": "https://app.example.com/assets/app.js", "type": None, "transfer_size": None,
                          "encoded_size": 4096, "decoded_size": None, "duration_ms": 110.0, "dns_ms": None,
                          "tcp_ms": None, "tls_ms": None, "ttfb_ms": 40.0, "download_ms": 50.0}]  # fmt: skip
    assert rows(db_url, "SELECT pages_visited, actions_count, user_agent FROM user_sessions") == [
        (["reports"], 1, "Mozilla/5.0 Firefox/128")
    ]
