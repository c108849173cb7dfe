"""`otel-bridge demo`: the whole product on this machine in one command.

1. Starts the (embedded, by default) database and the receiver on a free port.
2. Starts the example CQMS app (`cqms_app`) in its own process, instrumented with
   `otel_bridge.instrumentation` and exporting OTLP to the receiver; its data lives in the
   `cqms_demo` database of the same server, reached with psycopg.
3. Lets a scripted crowd of users of every seed role use it over HTTP (`crowd`), with their
   browsers' web vitals and page leaves.
4. Stops the app (SIGTERM: its telemetry is flushed), runs a job that really crashes.
5. Prints what every table got (`report`) and how to look at it in Grafana.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from otel_bridge.config import Config
from otel_bridge.database import redact_url
from otel_bridge.service import ThreadedService
from otel_bridge.workload import ROLES

APP_DATABASE = "cqms_demo"
APP_START_TIMEOUT_S = 60


def app_database(url: str) -> str:
    """The app's own database on the receiver's server, created on first use."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(APP_DATABASE)))
    return conninfo.make_conninfo(url, dbname=APP_DATABASE)


def telemetry_env(endpoint: str) -> dict[str, str]:
    """What a customer would set to point an app at otel-bridge; short export intervals so a
    short demo still shows several server-health samples."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APM_", "ANALYTICS_", "CRASHLYTICS_"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{endpoint}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_BSP_SCHEDULE_DELAY": "500",
                "OTEL_BLRP_SCHEDULE_DELAY": "500", "PYTHONUNBUFFERED": "1"})  # fmt: skip
    return env


@contextmanager
def app_process(database_url: str, endpoint: str, log_path: Path) -> Iterator[str]:
    """The example app in its own process; yields its base URL, then stops it with SIGTERM."""
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "otel_bridge.demo.cqms_app", "--database-url", database_url],
                                stdout=subprocess.PIPE, stderr=log_file, text=True, env=telemetry_env(endpoint))  # fmt: skip
        try:
            yield _wait_listening(proc, log_path)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_listening(proc: subprocess.Popen[str], log_path: Path) -> str:
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(APP_START_TIMEOUT_S)
    if not line or not line[0].startswith("listening on "):
        raise RuntimeError(f"the example app did not start; its log: {log_path}\n{log_path.read_text()[-2000:]}")
    return line[0].split("listening on ", 1)[1].strip()


def run_crash_job(database_url: str, endpoint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_bridge.demo.crash_job", "--database-url", database_url],
                          capture_output=True, text=True, timeout=120, env=telemetry_env(endpoint))  # fmt: skip


def _wait_for(url: str, table: str, at_least: int, timeout_s: float = 15) -> int:
    """Exports are acknowledged after the rows are written, so this is a safety net only."""
    deadline = time.monotonic() + timeout_s
    while True:
        with psycopg.connect(url) as conn:
            n = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def run_demo(config: Config, users: int = 24, concurrency: int = 6) -> int:
    from otel_bridge.demo import report
    from otel_bridge.demo.crowd import run_crowd

    print("otel-bridge demo")
    print(f"  data directory: {config.data_path}" if not config.database_url else "  external database")
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    # A free port: the demo never collides with a running `otel-bridge serve`.
    bridge = ThreadedService(replace(config, grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", maintenance_interval_s=0))
    problems: list[str] = []
    try:
        url = bridge.service.database_url
        print(f"  database: {redact_url(url)}")
        print(f"  receiver: OTLP/gRPC on {bridge.endpoint}")
        before = report.counts(url)
        app_url = app_database(url)
        log_path = config.data_path / "demo-app.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"  starting the example CQMS app (Starlette + psycopg, instrumented; log: {log_path}) ...")
        with app_process(app_url, bridge.endpoint, log_path) as base_url:
            print(f"  app on {base_url}; {users} users of {len(ROLES)} roles are using it ...")
            crowd = run_crowd(base_url, bridge.endpoint, users, concurrency)
            print("  stopping the app (SIGTERM flushes its telemetry) ...")
        print("  running the nightly job, which crashes ...")
        job = run_crash_job(app_url, bridge.endpoint)
        if job.returncode == 0:
            problems.append("the crash job did not crash")
        stored = _wait_for(url, "api_performance_metrics", before["api_performance_metrics"] + crowd.requests)
        after = report.counts(url)
        print(report.render(url, since, before, after))
    finally:
        bridge.stop()

    print(f"\nthe crowd: {crowd.users} sessions, {crowd.page_views} page views, {crowd.requests} requests "
          f"({', '.join(f'{n}x {s}' for s, n in sorted(crowd.statuses.items()))})")  # fmt: skip
    if stored - before["api_performance_metrics"] != crowd.requests:
        problems.append(f"expected {crowd.requests} API rows, stored {stored - before['api_performance_metrics']}")
    for table in ("database_performance_metrics", "crash_reports", "server_performance_metrics", "user_page_views",
                  "user_actions", "frontend_performance_metrics", "error_logs"):  # fmt: skip
        if after[table] <= before[table]:
            problems.append(f"no new rows in {table}")
    print("\nExplore it in Grafana: keep the database up with `make serve` (or `otel-bridge serve`), add a")
    print("PostgreSQL data source for the database URL above and query any table, e.g.")
    print("  SELECT endpoint_path, percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms)")
    print("  FROM api_performance_metrics WHERE $__timeFilter(request_timestamp) GROUP BY 1")
    for problem in problems:
        print(f"demo check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0
