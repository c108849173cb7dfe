"""`otel-bridge demo` end to end: the example app in its own process, the crowd, the crash job,
the report. The demo checks its own rows (one API row per request the crowd made, new rows in
every table) and exits 1 otherwise; the report is checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from otel_bridge.workload import ROLES


def test_demo_runs_the_instrumented_app_and_reports(db_url: str, tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "otel-bridge"
    done = subprocess.run([str(cli), "demo", "--users", "16", "--database-url", db_url, "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    usage = out.split("usage by role (this run)")[1].split("web vitals")[0]
    assert all(role in usage for role in ROLES)  # 16 users: two of each role
    crashes = out.split("crashes (this run)")[1].split("usage by role")[0]
    assert "cqms-worker 2.4.1: uncaught_exception ZeroDivisionError: division by zero" in crashes
    errors = out.split("top error groups")[1].split("crashes (this run)")[0]
    assert "[query] SELECT id, criteria FROM audits WHERE id = %s" in errors  # breadcrumbs of the API error
    assert "pg_sleep" in out.split("slowest queries")[1]
    assert "cqms-api:" in out.split("server health")[1]
