"""Where Export requests are parsed, mapped and written: in worker processes, or in-process.

Mapping is pure-Python CPU work (research/ceilings.md: the receiver's bottleneck is Python CPU,
not PostgreSQL or gRPC), so one process can use one core at most. With
`OTEL_BRIDGE_INGEST_WORKERS` > 0 the receiver hands each request's bytes to a pool of processes
that parse, map, COPY and COMMIT it, and answers the sender when the worker returns, i.e. still
only after the commit. This spreads the work over every core whatever the number of client
connections (SO_REUSEPORT would pin a Collector's single connection to one process).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import signal
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from otel_bridge.config import Config
from otel_bridge.errors import RetryableError
from otel_bridge.pipeline import Outcome, Pipeline

log = logging.getLogger(__name__)


async def open_pipeline(config: Config, database_url: str, pool_size: int) -> tuple[Pipeline, Any]:
    """A pipeline writing through its own connection pool (one per process)."""
    from otel_bridge.database import open_pool
    from otel_bridge.exporters.postgres import PostgresWriter, prepare_connection
    from otel_bridge.privacy import IpHasher

    pool = open_pool(database_url, config, configure=prepare_connection, max_size=pool_size)
    # Don't wait for a connection: a worker (re)started while the database is down must still
    # answer UNAVAILABLE quickly instead of failing to start.
    await pool.open(wait=False)
    ip_hash = IpHasher.from_setting(config.ip_hash_key, config.data_path)
    writer = PostgresWriter(pool, alerts=bool(config.alert_webhook_url), subject_hash=ip_hash.subject)
    return Pipeline(config, writer, ip_hash), pool


class InProcessIngest:
    """`OTEL_BRIDGE_INGEST_WORKERS=0`: everything on the receiver's own event loop."""

    def __init__(self, config: Config, database_url: str) -> None:
        self._config, self._url = config, database_url
        self._pipeline: Pipeline | None = None
        self._pool: Any = None

    async def start(self) -> None:
        self._pipeline, self._pool = await open_pipeline(self._config, self._url, self._config.db_pool_size)

    async def consume(self, signal: str, data: bytes) -> Outcome:
        assert self._pipeline is not None
        return await self._pipeline.consume(signal, data)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def tune_gc() -> None:
    """For a process that maps requests: mapping allocates many short-lived objects but makes no
    reference cycles, so the default collector (a pass every 700 allocations, and full passes
    over everything imported) costs about 8 % of the mapping's CPU for nothing. Collect less often,
    and move what startup loaded out of the collector's sight (`gc.freeze`)."""
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()


# --- worker process side ----------------------------------------------------------------------
_worker_loop: asyncio.AbstractEventLoop | None = None
_worker_pipeline: Pipeline | None = None
_worker_stopping: Any = None  # the receiver's multiprocessing.Event


def _worker_init(config: Config, database_url: str, pool_size: int, stopping: Any) -> None:
    global _worker_loop, _worker_pipeline, _worker_stopping
    _worker_stopping = stopping
    # Shutdown is the receiver's to run (drain, then stop the pool): a Ctrl-C in a terminal,
    # which reaches the whole process group, must not kill a worker mid-transaction. SIGTERM
    # keeps its default: the executor itself uses it to stop workers of a broken pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    _worker_loop = asyncio.new_event_loop()
    _worker_pipeline, _ = _worker_loop.run_until_complete(open_pipeline(config, database_url, pool_size))
    tune_gc()


def _worker_consume(signal: str, data: bytes) -> Outcome:
    assert _worker_loop is not None and _worker_pipeline is not None
    if _worker_stopping.is_set():
        # Queued before the receiver began to stop, and already answered UNAVAILABLE by it.
        raise RetryableError("receiver shutting down")
    return _worker_loop.run_until_complete(_worker_pipeline.consume(signal, data))


# --- receiver side ----------------------------------------------------------------------------
class ProcessIngest:
    """A pool of worker processes, each with its own event loop and database connection."""

    def __init__(self, config: Config, database_url: str, workers: int) -> None:
        self._config, self._url, self._workers = config, database_url, workers
        self._executor: ProcessPoolExecutor | None = None
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with gRPC threads
        self._stopping = self._context.Event()

    def _new_executor(self) -> ProcessPoolExecutor:
        # A worker runs one request at a time, so it needs one connection.
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=self._context,
            initializer=_worker_init,
            initargs=(self._config, self._url, 1, self._stopping),
        )

    async def start(self) -> None:
        self._executor = self._new_executor()
        # Start every worker now (imports, connection) rather than on the first requests.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _noop) for _ in range(self._workers)))
        log.info("%d ingest worker processes ready", self._workers)

    async def consume(self, signal: str, data: bytes) -> Outcome:
        assert self._executor is not None
        executor = self._executor
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, _worker_consume, signal, data)
        except BrokenProcessPool:
            # A worker died (killed, out of memory). The sender retries; had the worker committed
            # just before dying, the retry is deduplicated by the rows' deterministic ids.
            # Replace the pool for the requests after this one.
            if self._executor is executor:
                log.error("an ingest worker process died; restarting the worker pool")
                self._executor = self._new_executor()
                executor.shutdown(wait=False, cancel_futures=True)
            raise RetryableError("ingest worker restarted") from None

    async def stop(self) -> None:
        if self._executor is not None:
            # Requests still queued for a worker were answered UNAVAILABLE by the drain: the
            # workers skip them, and only finish the transactions they are in.
            self._stopping.set()
            await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
            self._executor = None


def _noop() -> None:
    return None


def create_ingest(config: Config, database_url: str) -> InProcessIngest | ProcessIngest:
    workers = config.ingest_workers
    if workers == 0:
        return InProcessIngest(config, database_url)
    return ProcessIngest(config, database_url, workers)


class Totals(Counter[str]):
    """Counts summed over every request since start."""

    def add(self, outcome: Outcome) -> None:
        self.update(outcome.counts)
