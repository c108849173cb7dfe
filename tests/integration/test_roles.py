"""Database roles (`otel-bridge roles --create`): the real receiver ingesting under the writer
role, then what the writer, the reader (Grafana) and the per-user role may and may not do, checked
as each role on the same rows."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from psycopg.conninfo import conninfo_to_dict
from psycopg.errors import InsufficientPrivilege

LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
USER_TABLES = {
    "api_error_logs", "api_performance_metrics", "crash_reports", "database_performance_metrics",
    "error_group_users", "error_logs", "frontend_perf_events", "frontend_performance_metrics",
    "user_actions", "user_page_views", "user_sessions",
}  # fmt: skip


def roles_command(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`otel-bridge roles ...` once the CLI has it, `python -m otel_bridge.access ...` until then."""
    from otel_bridge.cli import build_parser

    wired = any("roles" in (action.choices or ()) for action in build_parser()._actions)
    command = [str(Path(sys.executable).parent / "otel-bridge"), "roles"] if wired else [sys.executable, "-m", "otel_bridge.access"]
    return subprocess.run([*command, *args, "--database-url", db_url], capture_output=True, text=True, timeout=120)


def login_url(db_url: str, login: str) -> str:
    return re.sub(r"://[^@/]*@", f"://{login}@", db_url)


def create_login(db_url: str, login: str) -> None:
    """A LOGIN role (roles are cluster-wide: other tests' databases share it)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN "
                     f"CREATE ROLE {login} LOGIN; END IF; END $$")  # fmt: skip


@contextmanager
def as_role(db_url: str, role: str, user_id: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A superuser session that has done SET ROLE (and SET otel_bridge.user_id)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role}")
        if user_id is not None:
            conn.execute(f"SET otel_bridge.user_id = '{user_id}'")
        yield conn


def one(conn: psycopg.Connection[Any], statement: str) -> Any:
    return conn.execute(statement).fetchone()[0]  # type: ignore[index]


def denied(conn: psycopg.Connection[Any], *statements: str) -> None:
    for statement in statements:
        with pytest.raises(InsufficientPrivilege):
            conn.execute(statement)


# --- what the receiver gets: browser events and exceptions of two users ---------------------------

def any_value(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    return common_pb2.AnyValue(string_value=str(value))


def browser_request(*events: tuple[str, int, dict[str, Any]]) -> bytes:
    request = logs_pb.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in {"service.name": "cqms-web", "telemetry.sdk.language": "webjs"}.items():
        resource_logs.resource.attributes.add(key=key, value=any_value(value))
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "otel-bridge.js"
    start = time.time_ns() - 3600 * 10**9
    for name, offset_s, attrs in events:
        record = scope.log_records.add(time_unix_nano=start + offset_s * 10**9, event_name=name)
        for key, value in attrs.items():
            record.attributes.add(key=key, value=any_value(value))
    return request.SerializeToString()


def who(user: str) -> dict[str, Any]:
    return {"session.id": f"s-{user}", "user.id": user, "user.roles": "Auditor", "client.address": "192.0.2.10"}


def page_view(user: str, view_id: str, path: str, at_s: int) -> tuple[str, int, dict[str, Any]]:
    return ("browser.navigation", at_s, {**who(user), "otel_bridge.page_view.id": view_id,
                                                 "url.full": f"https://app.example.com{path}"})  # fmt: skip


def exceptions(users: list[str]) -> bytes:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "cqms-api", "service.version": "1.0.0"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    for user in users:
        try:
            raise LookupError("audit 7 not found")
        except LookupError as exc:
            provider.get_logger("app").emit(event_name="exception", severity_number=SeverityNumber.ERROR,
                                            exception=exc, attributes={"user.id": user})  # fmt: skip
    provider.shutdown()
    return encode_logs(exporter.get_finished_logs()).SerializeToString()


def send(endpoint: str, payload: bytes) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        response = logs_pb.ExportLogsServiceResponse.FromString(
            channel.unary_unary(LOGS_EXPORT, request_serializer=None, response_deserializer=None)(payload, timeout=30))
    assert not response.HasField("partial_success"), response


def seed_pii_rows(db_url: str) -> None:
    """API rows with every PII column filled, as the owner: one per user."""
    with psycopg.connect(db_url) as conn:
        for user in ("u-1", "u-2"):
            conn.execute(
                "INSERT INTO api_error_logs (id, error_id, endpoint_path, http_method, status_code, error_message, "
                "user_id, ip_address, request_body, request_headers, response_body) VALUES (gen_random_uuid(), "
                "gen_random_uuid(), '/api/audits', 'POST', 500, 'boom', %s, 'hash-ip', '{\"a\": 1}', "
                "'{\"x-h\": \"v\"}', '{\"e\": 1}')", (user,))  # fmt: skip
            conn.execute(
                "INSERT INTO api_performance_metrics (id, endpoint_path, http_method, response_time_ms, user_id, "
                "ip_address) VALUES (gen_random_uuid(), '/api/audits', 'GET', 12.5, %s, 'hash-ip')", (user,))  # fmt: skip


# --- the tests ------------------------------------------------------------------------------------


def test_roles_receiver_as_writer_reader_without_pii_and_users_see_their_own_rows(
    db_url: str, start_bridge: Any, rows: Any
) -> None:
    create_login(db_url, "test_writer")
    create_login(db_url, "test_grafana")
    done = roles_command(db_url, "--create", "--by", "alice", "--grant-to", "test_writer", "writer",
                         "--grant-to", "test_grafana", "reader")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "granted otel_bridge_writer to test_writer" in done.stdout
    assert "user_sessions (ip_address)" in done.stdout and "error_logs (context)" in done.stdout

    # The real receiver, connected as a login role that is only a member of otel_bridge_writer: its
    # startup (migrate at head, ensure_partitions) and ingestion work without DDL rights or RLS bypass.
    bridge = start_bridge(login_url(db_url, "test_writer"))
    browser = browser_request(
        page_view("u-1", "pv-1a", "/home", 0), page_view("u-1", "pv-1b", "/audits", 20),
        page_view("u-2", "pv-2a", "/home", 0),
        ("browser.user_action.click", 5, {**who("u-1"), "otel_bridge.page_view.id": "pv-1a", "url.path": "/home"}),
        ("browser.web_vital", 6, {**who("u-1"), "otel_bridge.page_view.id": "pv-1a", "browser.web_vital.name": "lcp",
                                  "browser.web_vital.value": 1800.0,
                                  "browser.document.url.full": "https://app.example.com/home"}),
    )  # fmt: skip
    send(bridge.endpoint, browser)
    send(bridge.endpoint, browser)  # a retry: ON CONFLICT paths (sessions upsert, perf rows replaced)
    send(bridge.endpoint, browser_request(page_view("u-1", "pv-1c", "/reports", 40)))  # the session is updated
    send(bridge.endpoint, exceptions(["u-1", "u-1", "u-2"]))
    sessions = rows(db_url, "SELECT usename FROM pg_stat_activity WHERE application_name = 'otel-bridge' "
                            "AND datname = current_database()")  # fmt: skip
    assert sessions and {s for (s,) in sessions} == {"test_writer"}
    seed_pii_rows(db_url)

    by_user = "SELECT user_id, count(*) FROM {} GROUP BY 1 ORDER BY 1"
    assert rows(db_url, by_user.format("user_page_views")) == [("u-1", 3), ("u-2", 1)]
    assert rows(db_url, by_user.format("user_actions")) == [("u-1", 1)]
    assert rows(db_url, by_user.format("error_logs")) == [("u-1", 2), ("u-2", 1)]
    assert rows(db_url, by_user.format("frontend_performance_metrics")) == [("u-1", 1)]
    assert rows(db_url, "SELECT user_id, pages_visited, ip_address IS NOT NULL FROM user_sessions ORDER BY 1") == [
        ("u-1", ["home", "audits", "reports"], True), ("u-2", ["home"], True)]  # fmt: skip
    assert rows(db_url, "SELECT occurrences, users_affected FROM error_groups") == [(3, 2)]

    # The writer: writes and reads every row, no DDL, the audit trail append-only.
    with as_role(db_url, "otel_bridge_writer") as conn:
        assert one(conn, "SELECT count(*) FROM user_page_views") == 4  # RLS on, all rows for the writer
        conn.execute("CREATE TEMP TABLE stage (LIKE user_page_views INCLUDING DEFAULTS)")  # the COPY staging
        conn.execute("INSERT INTO audit_log (actor, action) VALUES ('otel-bridge', 'test')")
        conn.execute("UPDATE error_groups SET last_release = '1.0.1'")
        denied(conn,
               "CREATE TABLE mine (a int)", "DROP TABLE user_page_views", "ALTER TABLE user_sessions ADD COLUMN x int",
               "CREATE INDEX ON user_sessions (user_agent)", "ALTER TABLE error_logs DISABLE ROW LEVEL SECURITY",
               "DROP POLICY otel_bridge_own_rows ON error_logs", "TRUNCATE user_page_views",
               "UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log", "DELETE FROM alembic_version",
               "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
               "ALTER TABLE user_page_views DETACH PARTITION user_page_views_default")  # fmt: skip
        # Partitions for months ahead: the function runs as its owner (SECURITY DEFINER).
        assert one(conn, "SELECT otel_bridge_ensure_partitions(6)") == 9 * 4  # nine tables, months +3..+6
        conn.execute("INSERT INTO user_page_views (id, user_id, session_id, page_slug, page_path, view_timestamp) "
                     "VALUES (gen_random_uuid(), 'u-1', 's-later', 'later', '/later', now() + interval '5 months')")
    month = rows(db_url, "SELECT to_char(now() + interval '5 months', 'YYYYMM')")[0][0]
    future = rows(db_url, "SELECT v.tableoid::regclass::text, pg_get_userbyid(c.relowner) FROM user_page_views v "
                          "JOIN pg_class c ON c.oid = v.tableoid WHERE page_slug = 'later'")  # fmt: skip
    assert future == [(f"user_page_views_p{month}", "postgres")]
    with as_role(db_url, "otel_bridge_writer") as conn:  # default privileges: the writer's at once
        assert one(conn, f"SELECT count(*) FROM user_page_views_p{month}") == 1
        assert one(conn, "SELECT count(*) FROM user_page_views_default") == 0
    # Maintenance (partitions for late months, sessions, rollups, retention) as the writer: an
    # expired month gets a partition of its own and is dropped whole, through the owner's function.
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT otel_bridge_partition_month('api_performance_metrics', "
                     "date_trunc('month', now() - interval '200 days')::date)")  # fmt: skip
        conn.execute("INSERT INTO api_performance_metrics (id, endpoint_path, http_method, response_time_ms, "
                     "request_timestamp) VALUES (gen_random_uuid(), '/old', 'GET', 1, now() - interval '200 days')")  # fmt: skip
    maintained = subprocess.run([str(Path(sys.executable).parent / "otel-bridge"), "maintain", "--database-url",
                                 login_url(db_url, "test_writer")], capture_output=True, text=True, timeout=120)
    assert maintained.returncode == 0, maintained.stderr
    assert "expired partitions dropped: api_performance_metrics_p" in maintained.stdout, maintained.stdout
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics WHERE endpoint_path = '/old'") == [(0,)]
    assert rows(db_url, "SELECT count(*) FROM user_sessions WHERE finalized_at IS NOT NULL") == [(2,)]  # idle 1 h

    # The reader (Grafana): every row, no PII column, nothing written, no partition directly.
    with as_role(db_url, "otel_bridge_reader") as conn:
        assert one(conn, "SELECT count(*) FROM user_page_views") == 5  # incl. the new partition's row
        assert one(conn, "SELECT count(*) FROM api_error_logs") == 2  # count(*) needs some column: fine
        assert conn.execute("SELECT user_id, pages_visited, user_agent FROM user_sessions ORDER BY 1").fetchall() == [
            ("u-1", ["home", "audits", "reports"], None), ("u-2", ["home"], None)]  # fmt: skip
        assert conn.execute("SELECT endpoint_path, status_code, error_message, user_id FROM api_error_logs "
                            "ORDER BY user_id").fetchall() == [("/api/audits", 500, "boom", "u-1"),
                                                               ("/api/audits", 500, "boom", "u-2")]  # fmt: skip
        assert one(conn, "SELECT count(error_message) FROM error_logs") == 3
        assert one(conn, "SELECT count(*) FROM (SELECT * FROM error_groups) g") == 1  # no PII: SELECT * works
        assert one(conn, "SELECT count(*) FROM error_group_resolution") == 0  # the view
        denied(conn,
               "SELECT ip_address FROM user_sessions", "SELECT * FROM user_sessions",
               "SELECT count(*) FROM user_sessions WHERE ip_address IS NOT NULL",
               "SELECT ip_address FROM api_performance_metrics", "SELECT ip_address FROM api_error_logs",
               "SELECT request_body FROM api_error_logs", "SELECT request_headers FROM api_error_logs",
               "SELECT response_body FROM api_error_logs", "SELECT context FROM error_logs",
               "SELECT e FROM error_logs e",  # a whole-row reference includes context
               "SELECT count(*) FROM user_page_views_default", "SELECT count(*) FROM error_logs_default",
               f"SELECT count(*) FROM user_page_views_p{month}", "SELECT * FROM alembic_version",
               "INSERT INTO audit_log (actor, action) VALUES ('grafana', 'x')",
               "UPDATE error_groups SET status = 'ignored'", "DELETE FROM user_page_views", "TRUNCATE audit_log",
               "SELECT otel_bridge_ensure_partitions(2)")  # fmt: skip
    with psycopg.connect(login_url(db_url, "test_grafana"), autocommit=True) as conn:  # a real login, member
        assert one(conn, "SELECT current_user") == "test_grafana"
        assert one(conn, "SELECT count(*) FROM user_page_views") == 5
        denied(conn, "SELECT ip_address FROM user_sessions", "SELECT context FROM error_logs")

    # The per-user role: its own rows only, once the session says who it is.
    with as_role(db_url, "otel_bridge_user") as conn:
        assert one(conn, "SELECT count(*) FROM user_page_views") == 0  # no otel_bridge.user_id: nothing
        assert one(conn, "SELECT count(*) FROM error_logs") == 0
        conn.execute("SET otel_bridge.user_id = 'u-1'")
        assert conn.execute("SELECT user_id, count(*) FROM user_page_views GROUP BY 1").fetchall() == [("u-1", 4)]
        assert conn.execute("SELECT user_id, count(*) FROM error_logs GROUP BY 1").fetchall() == [("u-1", 2)]
        assert conn.execute("SELECT user_id, pages_visited FROM user_sessions").fetchall() == [
            ("u-1", ["home", "audits", "reports"])]  # fmt: skip
        assert conn.execute("SELECT user_id, status_code FROM api_error_logs").fetchall() == [("u-1", 500)]
        assert conn.execute("SELECT user_id FROM error_group_users").fetchall() == [("u-1",)]
        assert one(conn, "SELECT count(*) FROM user_actions") == 1
        conn.execute("SET otel_bridge.user_id = 'u-2'")
        assert conn.execute("SELECT user_id, count(*) FROM user_page_views GROUP BY 1").fetchall() == [("u-2", 1)]
        assert one(conn, "SELECT count(*) FROM user_actions") == 0
        conn.execute("RESET otel_bridge.user_id")  # now '' rather than unset: still nothing
        assert one(conn, "SELECT count(*) FROM user_page_views") == 0
        conn.execute("SET otel_bridge.user_id = 'u-1'")
        denied(conn,
               "SELECT ip_address FROM user_sessions", "SELECT context FROM error_logs",
               "SELECT count(*) FROM server_performance_metrics", "SELECT count(*) FROM error_groups",
               "SELECT count(*) FROM error_group_resolution", "SELECT count(*) FROM user_page_views_default",
               f"SELECT count(*) FROM user_page_views_p{month}",
               "INSERT INTO user_page_views (id, session_id, page_slug, page_path) VALUES (gen_random_uuid(), 's', 'p', '/')",
               "UPDATE user_sessions SET user_role = 'Admin'", "DELETE FROM error_logs")  # fmt: skip

    with as_role(db_url, "otel_bridge_admin") as conn:
        assert one(conn, "SELECT count(*) FROM user_page_views") == 5
        assert one(conn, "SELECT count(*) FROM user_sessions WHERE ip_address IS NOT NULL") == 2
        assert one(conn, "DELETE FROM audit_log WHERE action = 'test' RETURNING 1") == 1

    # The receiver still stores rows after all that (and the owner sees them: RLS is not forced).
    send(bridge.endpoint, browser_request(page_view("u-2", "pv-2b", "/reports", 30)))
    assert rows(db_url, by_user.format("user_page_views")) == [("u-1", 4), ("u-2", 2)]

    (audit,) = rows(db_url, "SELECT actor, target, details FROM audit_log WHERE action = 'roles.create'")
    assert audit[:2] == ("alice", f"database {conninfo_to_dict(db_url)['dbname']}")
    assert set(audit[2]["row_level_security"]) == USER_TABLES
    assert audit[2]["pii_columns_withheld"]["api_error_logs"] == ["request_body", "request_headers", "response_body",
                                                                  "ip_address"]  # fmt: skip
    assert audit[2]["granted_to"] == ["otel_bridge_writer -> test_writer", "otel_bridge_reader -> test_grafana"]


def test_roles_again_converges_and_print_changes_nothing(db_url: str, rows: Any) -> None:
    printed = roles_command(db_url, "--create", "--print")
    assert printed.returncode == 0, printed.stderr
    script = printed.stdout
    assert script.startswith("BEGIN;") and script.rstrip().endswith("COMMIT;")
    assert 'CREATE POLICY "otel_bridge_own_rows" ON "user_sessions" FOR SELECT TO "otel_bridge_user"' in script
    assert rows(db_url, "SELECT count(*) FROM pg_class WHERE relrowsecurity OR relacl::text LIKE '%otel_bridge%'") == [(0,)]
    assert rows(db_url, "SELECT count(*) FROM audit_log") == [(0,)]

    # The printed script is what --create runs: applied by hand, it sets up the same policies.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(script)  # type: ignore[arg-type]
    policies = "SELECT tablename, policyname FROM pg_policies ORDER BY 1, 2"
    by_hand = rows(db_url, policies)
    assert {t for t, _ in by_hand} == USER_TABLES and len(by_hand) == 2 * len(USER_TABLES)

    # A stray grant of a PII column (or anything else) is taken back by the next run.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("GRANT SELECT (ip_address) ON user_sessions TO otel_bridge_reader")
        conn.execute("GRANT SELECT ON user_page_views_default TO otel_bridge_user")
    for _ in range(2):
        again = roles_command(db_url, "--create")
        assert again.returncode == 0, again.stderr
        assert "roles: all four existed already" in again.stdout
    assert rows(db_url, policies) == by_hand
    assert rows(db_url, "SELECT count(*) FROM audit_log WHERE action = 'roles.create'") == [(2,)]
    with as_role(db_url, "otel_bridge_reader") as conn:
        denied(conn, "SELECT ip_address FROM user_sessions")
    with as_role(db_url, "otel_bridge_user", "u-1") as conn:
        denied(conn, "SELECT count(*) FROM user_page_views_default")

    shown = roles_command(db_url)
    assert shown.returncode == 0 and "row-level security: api_error_logs, api_performance_metrics" in shown.stdout

    unknown = roles_command(db_url, "--create", "--grant-to", "nobody_here", "reader")
    assert unknown.returncode == 1 and "role 'nobody_here' does not exist" in unknown.stderr
    assert rows(db_url, "SELECT count(*) FROM audit_log WHERE action = 'roles.create'") == [(2,)]
