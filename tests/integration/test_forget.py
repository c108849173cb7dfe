"""`otel-bridge forget`: a user's rows are gone from every table in one go, and replaying the
user's original OTLP requests afterwards (a sender's late retries) stores nothing of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from otel_bridge.erasure import USER_TABLES
from otel_bridge.workload import browser_export, export_request, random_requests

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def send(bridge: Any, method: str, payload: bytes) -> None:
    with grpc.insecure_channel(bridge.endpoint) as channel:
        channel.unary_unary(method, request_serializer=None, response_deserializer=None)(payload, timeout=30)


def per_user(db_url: str, rows: Any, user: str) -> dict[str, int]:
    return {t: rows(db_url, f"SELECT count(*) FROM {t} WHERE user_id = %s", (user,))[0][0] for t in USER_TABLES}


def test_forget_erases_everywhere_and_retries_stay_out(bridge: Any, db_url: str, rows: Any) -> None:
    requests = random_requests(60, seed=21, error_rate=0.3)
    traces = export_request(requests, stable=True).SerializeToString()
    browser = browser_export(30, seed=4)
    logs = browser.SerializeToString()
    send(bridge, TRACES, traces)
    send(bridge, LOGS, logs)

    # The browser user with the most sessions, and one API user.
    browser_user = rows(db_url, "SELECT user_id FROM user_sessions GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")[0][0]
    api_user = requests[0].user_id
    before = {u: per_user(db_url, rows, u) for u in (browser_user, api_user)}
    assert before[browser_user]["user_page_views"] > 0 and before[browser_user]["user_sessions"] > 0
    assert before[api_user]["api_performance_metrics"] > 0 and before[api_user]["database_performance_metrics"] > 0
    sessions = [r[0] for r in rows(db_url, "SELECT session_id FROM user_sessions WHERE user_id = %s", (browser_user,))]
    assert rows(db_url, "SELECT count(*) FROM user_page_leaves WHERE session_id = ANY(%s)", (sessions,))[0][0] > 0
    total_before = rows(db_url, "SELECT count(*) FROM api_performance_metrics")[0][0]

    env = {**os.environ, "OTEL_BRIDGE_IP_HASH_KEY": "test-key-0123456789abcdef"}  # the receiver's key
    for user in (browser_user, api_user):
        done = subprocess.run([str(Path(sys.executable).parent / "otel-bridge"), "forget", "--user-id", user,
                               "--by", "dpo", "--database-url", db_url], capture_output=True, text=True, env=env)  # fmt: skip
        assert done.returncode == 0 and "forgot user" in done.stdout, done.stderr
        assert user not in done.stdout  # the raw id is not echoed or logged
    for user in (browser_user, api_user):
        assert per_user(db_url, rows, user) == dict.fromkeys(USER_TABLES, 0)
    assert rows(db_url, "SELECT count(*) FROM user_page_leaves WHERE session_id = ANY(%s)", (sessions,))[0][0] == 0
    audit = rows(db_url, "SELECT actor, action, target, details FROM audit_log ORDER BY id")
    assert [(a, b) for a, b, _, _ in audit] == [("dpo", "forget"), ("dpo", "forget")]
    assert all(browser_user not in str(row) and api_user not in str(row) for row in audit)
    others = rows(db_url, "SELECT count(*) FROM api_performance_metrics")[0][0]
    assert others == total_before - before[api_user]["api_performance_metrics"]

    # Late retries of the original requests: nothing of the forgotten users comes back.
    send(bridge, TRACES, traces)
    send(bridge, LOGS, logs)
    for user in (browser_user, api_user):
        assert per_user(db_url, rows, user) == dict.fromkeys(USER_TABLES, 0)
    assert rows(db_url, "SELECT count(*) FROM user_page_leaves WHERE session_id = ANY(%s)", (sessions,))[0][0] == 0
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics")[0][0] == others
