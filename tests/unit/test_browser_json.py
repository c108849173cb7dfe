"""Browser-shaped OTLP/JSON (otel-browser events, opentelemetry-js spans) decoded and mapped."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_bridge.errors import PermanentError
from otel_bridge.exporters.context import MappingSettings
from otel_bridge.exporters.logs import map_logs
from otel_bridge.exporters.spans import map_traces
from otel_bridge.receiver.otlp_json import parse_json

DATA = Path(__file__).resolve().parents[1] / "data" / "browser"


def ip_hash(ip: str | None) -> str | None:
    return ip and "h"


def test_otel_browser_events() -> None:
    request = parse_json("logs", (DATA / "otel-browser-logs.json").read_bytes())
    rows = map_logs(request, MappingSettings(), ip_hash)
    assert rows.rejected_count == 0 and rows.ignored == 0
    (view,) = rows.page_views
    assert (view.page_slug, view.page_path, view.user_id, view.user_role) == ("reports", "/audits/reports", "auditor-17", "Auditor")
    (action,) = rows.actions
    assert (action.action_type, action.action_target, action.action_context["data-otel-format"]) == ("click", "export-csv", "csv")
    assert [(e.metric, e.value) for e in rows.perf_events] == [("lcp", 2310.5), ("cls", 0.042)]
    (error,) = rows.errors
    assert error.error_type == "JavaScript" and error.exception_type == "TypeError"
    # Hex ids decoded as hex, not base64: 16 and 8 bytes.
    assert (error.trace_id, error.span_id) == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")


def test_opentelemetry_js_spans() -> None:
    request = parse_json("traces", (DATA / "opentelemetry-js-traces.json").read_bytes())
    rows = map_traces(request, MappingSettings(), ip_hash)
    (view,) = rows.page_views
    assert (view.page_slug, view.session_id) == ("dashboard", "js-session-1")
    metrics = {e.metric: e.value for e in rows.perf_events}
    assert metrics == {"page_load_time": 1800.0, "dom_content_loaded": 1000.0, "time_to_interactive": 900.0,
                       "nav_ttfb": 110.0, "fcp": 700.0}  # fmt: skip
    (action,) = rows.actions
    assert action.action_target == '//*[@id="refresh"]'


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"resourceLogs": [{"scopeLogs": [{"logRecords": '
                                                             b'[{"traceId": "zz"}]}]}]}', b"[" * 100_000])  # fmt: skip
def test_bad_json_is_a_permanent_error(body: bytes) -> None:
    with pytest.raises(PermanentError):
        parse_json("logs", body)
