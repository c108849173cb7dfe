"""Error groups end to end: exception log records made by the real SDK -> the real receiver ->
groups; the lifecycle through the real CLI (resolve, a regression in a later release, ignore,
reopen); alerts POSTed to a local webhook, also when it is down for a while."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def _score(audit_id: int, criteria: list[int]) -> float:
    return sum(criteria) / len(criteria)


def _load(audit_id: int) -> dict[str, Any]:
    raise LookupError(f"audit {audit_id} not found")


def failure(kind: str, audit_id: int) -> Exception:
    try:
        _score(audit_id, []) if kind == "score" else _load(audit_id)
    except Exception as exc:  # noqa: BLE001 - the object, with its traceback
        return exc
    raise AssertionError


def export_bytes(release: str, events: list[tuple[str, int, str]]) -> bytes:
    """An ExportLogsServiceRequest of exception records, as the SDK encodes them."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "cqms-api", "service.version": release}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("app")
    for kind, audit_id, user in events:
        logger.emit(event_name="exception", severity_number=SeverityNumber.ERROR, exception=failure(kind, audit_id),
                    attributes={"user.id": user, "user.roles": ["Auditor" if user != "u-3" else "Manager"],
                                "otel_bridge.breadcrumbs": [json.dumps({"category": "db", "message": f"loaded audit {audit_id}"})]})  # fmt: skip
    provider.shutdown()
    return encode_logs(exporter.get_finished_logs()).SerializeToString()


def send(bridge: Any, payload: bytes) -> None:
    with grpc.insecure_channel(bridge.endpoint) as channel:
        channel.unary_unary(LOGS_EXPORT, request_serializer=None, response_deserializer=None)(payload, timeout=30)


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "otel-bridge"), "errors", *args, "--database-url", db_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_groups_and_their_lifecycle_through_the_cli(bridge: Any, db_url: str, rows: Any) -> None:
    first = export_bytes("1.0.0", [("score", 12, "u-1"), ("score", 31, "u-2"), ("score", 77, "u-1"), ("load", 5, "u-3")])
    send(bridge, first)
    send(bridge, first)  # a retried request: nothing counted twice
    groups = json.loads(cli(db_url, "list", "--json").stdout)
    by_type = {g["exception_type"]: g for g in groups}
    score, load = by_type["ZeroDivisionError"], by_type["LookupError"]
    assert (score["occurrences"], score["users_affected"], score["status"]) == (3, 2, "unresolved")
    assert (load["occurrences"], load["users_affected"], load["last_release"]) == (1, 1, "1.0.0")
    assert score["title"] == "ZeroDivisionError: division by zero" and score["error_type"] == "Application"
    assert rows(db_url, "SELECT count(DISTINCT fingerprint) FROM error_logs WHERE fingerprint IS NOT NULL")[0][0] == 2

    fp = score["fingerprint"]
    resolved = cli(db_url, "resolve", fp[:8], "--by", "alice")
    assert resolved.returncode == 0 and "unresolved -> resolved" in resolved.stdout, resolved.stderr
    assert rows(db_url, "SELECT bool_and(resolved), min(resolved_by) FROM error_logs WHERE fingerprint = %s",
                (fp,)) == [(True, "alice")]  # fmt: skip
    assert rows(db_url, "SELECT time_to_resolve > interval '0' FROM error_group_resolution") == [(True,)]

    send(bridge, export_bytes("1.0.0", [("score", 90, "u-4")]))  # a late event of the old release
    assert rows(db_url, "SELECT status, occurrences FROM error_groups WHERE fingerprint = %s", (fp,)) == [("resolved", 4)]
    send(bridge, export_bytes("1.1.0", [("score", 91, "u-5")]))  # the bug is back in a newer release
    assert rows(db_url, "SELECT status, regressions, regressed_at IS NOT NULL, users_affected, last_release "
                        "FROM error_groups WHERE fingerprint = %s", (fp,)) == [("unresolved", 1, True, 4, "1.1.0")]  # fmt: skip

    shown = cli(db_url, "show", fp)
    assert shown.returncode == 0
    assert "regressed" in shown.stdout and "Auditor 4" in shown.stdout and "1.1.0 (1)" in shown.stdout
    assert "[db] loaded audit 91" in shown.stdout  # the latest occurrence's breadcrumbs
    assert cli(db_url, "ignore", load["fingerprint"], "--by", "bob").returncode == 0
    assert json.loads(cli(db_url, "list", "--status", "ignored", "--json").stdout)[0]["fingerprint"] == load["fingerprint"]
    assert cli(db_url, "reopen", load["fingerprint"], "--by", "bob").returncode == 0
    actions = rows(db_url, "SELECT actor, action FROM audit_log ORDER BY id")
    assert actions == [("alice", "resolve"), ("otel-bridge", "regression"), ("bob", "ignore"), ("bob", "reopen")]
    assert cli(db_url, "show", "zzzz").returncode == 1  # an unknown group: a clear error, exit 1


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["content-length"]))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_hook(port: int) -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_alerts_reach_the_webhook_even_after_it_was_down(db_url: str, start_bridge: Any, rows: Any,
                                                          webhook_port: int) -> None:  # fmt: skip
    Hook.received = []
    bridge = start_bridge(db_url, OTEL_BRIDGE_ALERT_WEBHOOK_URL=f"http://127.0.0.1:{webhook_port}/hook",
                          OTEL_BRIDGE_ALERT_SPIKE_MIN_EVENTS="5")  # fmt: skip
    # The webhook is down: ingestion is not affected, the alert waits with its error recorded.
    started = time.monotonic()
    send(bridge, export_bytes("2.0.0", [("load", 1, "u-1")]))
    assert time.monotonic() - started < 5
    wait_for(lambda: rows(db_url, "SELECT attempts > 0 AND delivered_at IS NULL FROM error_alerts") == [(True,)])
    assert rows(db_url, "SELECT kind FROM error_alerts") == [("new",)]
    hook = serve_hook(webhook_port)
    next(hook)
    try:
        wait_for(lambda: len(Hook.received) == 1)  # the retry (after its backoff) delivers it
        alert = Hook.received[0]
        assert alert["kind"] == "new" and alert["text"].startswith("*New error* in cqms-api: LookupError: audit 1")
        assert alert["occurrences"] == 1 and alert["fingerprint"]
        # A spike: 6 occurrences in 5 minutes, none the hour before.
        send(bridge, export_bytes("2.0.0", [("score", n, f"u-{n}") for n in range(6)]))
        wait_for(lambda: len(Hook.received) == 2)  # the new group first
        bridge._call(bridge.service.notifier.find_spikes())
        wait_for(lambda: len(Hook.received) == 3)
        spike = Hook.received[2]
        assert spike["kind"] == "spike" and spike["last_5_minutes"] == 6 and "Error spike" in spike["text"]
        assert bridge._call(bridge.service.notifier.find_spikes()) == 0  # at most one an hour
    finally:
        next(hook, None)
    assert rows(db_url, "SELECT count(*) FROM error_alerts WHERE delivered_at IS NULL")[0][0] == 0
