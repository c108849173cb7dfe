"""The embedded default: `otel-bridge migrate`/`serve` with OTEL_BRIDGE_DATABASE_URL unset start a
real PostgreSQL in the data directory, and the next start reuses it (data included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from otel_bridge.config import Config
from otel_bridge.database import EmbeddedPostgres, resolve_database


def test_embedded_database_is_created_then_reused(tmp_path: Path) -> None:
    config = Config.from_env({"OTEL_BRIDGE_DATA_DIR": str(tmp_path)})
    url, embedded = resolve_database(config)
    assert embedded is not None
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    embedded.stop()

    again = EmbeddedPostgres(tmp_path)
    url = again.start()
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (42,)
    finally:
        again.stop()


def test_migrate_command_on_the_embedded_default(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "otel-bridge"
    env = {k: v for k, v in os.environ.items() if k != "OTEL_BRIDGE_DATABASE_URL"}
    env["OTEL_BRIDGE_DATA_DIR"] = str(tmp_path)
    result = subprocess.run([str(cli), "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "database now at revision 0005" in result.stderr
    assert "password" not in result.stderr.lower()
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()
