"""`configure()` and `opentelemetry-instrument`, in real processes exporting to the receiver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

SERVER_SPAN = """
from opentelemetry import trace
with trace.get_tracer("app").start_as_current_span("GET /api/audits/{audit_id}", kind=trace.SpanKind.SERVER) as span:
    span.set_attributes({"http.request.method": "GET", "http.route": "/api/audits/{audit_id}",
                         "http.response.status_code": 200, "user.id": "u-1"})
"""


def env_for(bridge: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CRASHLYTICS_", "APM_", "ANALYTICS_"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{bridge.endpoint}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BLRP_SCHEDULE_DELAY": "100", "OTEL_BSP_SCHEDULE_DELAY": "100"}, **extra)  # fmt: skip
    return env


def test_configure_once_then_flush_at_exit(bridge: Any, db_url: str, rows: Any) -> None:
    script = textwrap.dedent("""
        from otel_bridge.instrumentation import configure
        first = configure("cqms-api")
        assert configure("other-name") is first  # safe to call twice
    """) + SERVER_SPAN
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=env_for(bridge, CRASHLYTICS_RELEASE_VERSION="3.1.4", CRASHLYTICS_ENVIRONMENT="staging"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert rows(db_url, "SELECT endpoint_path, service_name, service_version, environment, user_id "
                        "FROM api_performance_metrics") == [("/api/audits/{audit_id}", "cqms-api", "3.1.4", "staging", "u-1")]  # fmt: skip
    # Runtime metrics are collected at shutdown too.
    ((rss,),) = rows(db_url, "SELECT memory_usage_mb FROM server_performance_metrics")
    assert rss > 10


def test_sigterm_flushes_before_the_process_dies(bridge: Any, db_url: str, rows: Any) -> None:
    script = "from otel_bridge.instrumentation import configure\nconfigure('worker')\n" + SERVER_SPAN + (
        "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    env = env_for(bridge, OTEL_BSP_SCHEDULE_DELAY="60000")  # nothing leaves before the signal
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # still dies of SIGTERM, as before
    assert rows(db_url, "SELECT service_name FROM api_performance_metrics") == [("worker",)]


def test_zero_code_with_opentelemetry_instrument(bridge: Any, db_url: str, rows: Any, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(SERVER_SPAN + "raise RuntimeError('zero-code crash')\n")
    cli = Path(sys.executable).parent / "opentelemetry-instrument"
    env = env_for(bridge, OTEL_SERVICE_NAME="zero-code", OTEL_PYTHON_DISTRO="otel_bridge",
                  OTEL_PYTHON_CONFIGURATOR="otel_bridge")  # fmt: skip
    done = subprocess.run([str(cli), sys.executable, str(app)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1 and "zero-code crash" in done.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not rows(db_url, "SELECT 1 FROM crash_reports"):
        time.sleep(0.2)
    assert rows(db_url, "SELECT service_name FROM api_performance_metrics") == [("zero-code",)]
    assert rows(db_url, "SELECT crash_type, crash_message FROM crash_reports") == [("uncaught_exception", "zero-code crash")]
