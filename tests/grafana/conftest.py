"""A database filled the way users fill it, for the Grafana tests: the demo's instrumented app and
crowd through the real receiver, then `maintain` (rollups) and `roles --create`; panels then run
as `otel_bridge_reader`, the role the provisioned data source uses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from otel_bridge.database import migrate

CLI = str(Path(sys.executable).parent / "otel-bridge")


def _run(*args: str) -> str:
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="session")
def filled_db(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    with psycopg.connect(pg_server.uri, autocommit=True) as conn:
        conn.execute("CREATE DATABASE grafana_panels")
    url = pg_server.url("grafana_panels")
    migrate(url)
    _run("demo", "--users", "24", "--database-url", url, "--data-dir", str(tmp_path_factory.mktemp("demo")))
    _run("maintain", "--rollup-days", "2", "--database-url", url)
    _run("roles", "--create", "--database-url", url)
    return url


@pytest.fixture(scope="session")
def as_reader(filled_db: str) -> Any:
    """`as_reader()` -> a connection under `otel_bridge_reader` (what Grafana connects as)."""

    @contextmanager
    def connect() -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(filled_db, autocommit=True) as conn:
            conn.execute("SET ROLE otel_bridge_reader")
            yield conn

    return connect
