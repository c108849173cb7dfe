"""The server-side analytics API -> the receiver -> page views, actions and sessions."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from otel_bridge.instrumentation.analytics import track_action, track_page_view


def test_page_views_and_actions_reach_the_tables(bridge: Any, db_url: str, rows: Any) -> None:
    provider = LoggerProvider(resource=Resource.create({"service.name": "cqms-ssr"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=bridge.endpoint, insecure=True)))
    who = {"session_id": "ssr-1", "user_id": "u-5", "roles": "Manager", "logger_provider": provider}
    view = track_page_view("/audits/reports", slug="audit-reports", **who)
    track_action("export", "export-csv", context={"format": "csv", "rows": 120}, page_view_id=view,
                 path="/audits/reports", **who)  # fmt: skip
    provider.shutdown()
    assert rows(db_url, "SELECT page_slug, user_role, page_view_id FROM user_page_views") == [("audit-reports", "Manager", view)]
    assert rows(db_url, "SELECT action_type, action_target, action_context->>'rows' FROM user_actions") == [
        ("export", "export-csv", "120")
    ]
    assert rows(db_url, "SELECT pages_visited, actions_count FROM user_sessions") == [(["audit-reports"], 1)]


@pytest.mark.parametrize(("env", "kept"), [({"ANALYTICS_ENABLED": "false"}, 0), ({"ANALYTICS_SAMPLE_RATE": "0"}, 0),
                                           ({"ANALYTICS_SAMPLE_RATE": "0.5"}, None)])  # fmt: skip
def test_switch_and_sampling(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], kept: int | None) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    for i in range(200):
        for _ in range(3):  # three events per session: a session is kept or dropped whole
            track_action("click", "b", session_id=f"s-{i}", logger_provider=provider)
    sessions = [r.log_record.attributes["session.id"] for r in exporter.get_finished_logs()]
    if kept is not None:
        assert len(sessions) == kept
    else:
        assert 60 < len(set(sessions)) < 140 and all(sessions.count(s) == 3 for s in set(sessions))
