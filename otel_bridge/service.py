"""Wires database -> writer -> pipeline -> receiver, and owns their start/stop order.

Start downstream first (database, migrations, pool) so the receiver never accepts a request it
cannot store; stop upstream first (receiver drains, then the pool closes, then an embedded
database stops) so nothing acknowledged is left uncommitted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

from otel_bridge.config import Config
from otel_bridge.database import (
    EmbeddedPostgres,
    ensure_partitions,
    migrate,
    open_pool,
    redact_url,
    resolve_database,
)
from otel_bridge.exporters.postgres import PostgresWriter, prepare_connection
from otel_bridge.pipeline import Pipeline
from otel_bridge.privacy import IpHasher
from otel_bridge.receiver.grpc import GrpcReceiver, GrpcReceiverSettings

log = logging.getLogger(__name__)

SUMMARY_INTERVAL_S = 60.0


class BridgeService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.database_url = ""
        self.pipeline: Pipeline | None = None
        self.receiver: GrpcReceiver | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._pool: Any = None
        self._summary_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        self.database_url, self._embedded = await asyncio.to_thread(resolve_database, config)
        log.info("database: %s", redact_url(self.database_url))
        await asyncio.to_thread(migrate, self.database_url)
        await asyncio.to_thread(ensure_partitions, self.database_url)
        self._pool = open_pool(self.database_url, config, configure=prepare_connection)
        await self._pool.open(wait=True, timeout=30)
        ip_hash = IpHasher.from_setting(config.ip_hash_key, config.data_path)
        self.pipeline = Pipeline(config, PostgresWriter(self._pool), ip_hash)
        self.receiver = GrpcReceiver(
            GrpcReceiverSettings(
                listen=config.grpc_listen,
                max_request_bytes=config.max_request_bytes,
                max_concurrent_exports=config.max_concurrent_exports,
                queue_timeout_s=config.queue_timeout_s,
                retry_after_s=config.retry_after_s,
            ),
            {
                "traces": self.pipeline.consume_traces,
                "metrics": self.pipeline.consume_metrics,
                "logs": self.pipeline.consume_logs,
            },
        )
        await self.receiver.start()
        self._summary_task = asyncio.create_task(self._log_summaries())

    async def stop(self) -> None:
        if self._summary_task is not None:
            self._summary_task.cancel()
        if self.receiver is not None:
            await self.receiver.stop()
        if self._pool is not None:
            await self._pool.close()
        self._log_summary()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)

    async def run_until_signal(self) -> None:
        """`otel-bridge serve`: run until SIGTERM or SIGINT, then shut down in order."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
            log.info("shutting down: draining in-flight exports")
        finally:
            await self.stop()

    async def _log_summaries(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL_S)
            self._log_summary()

    def _log_summary(self) -> None:
        if self.pipeline is not None and self.pipeline.counts:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.pipeline.counts.items()))
            log.info("totals since start: %s", counts)


class ThreadedService:
    """A BridgeService on its own event loop in a background thread: `otel-bridge demo`, tests
    and benchmarks run the real receiver in-process next to a synchronous client."""

    def __init__(self, config: Config) -> None:
        self.service = BridgeService(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otel-bridge", daemon=True)
        self._thread.start()
        try:
            self._call(self.service.start())
        except BaseException:
            self.stop()
            raise
        assert self.service.receiver is not None
        self.port = self.service.receiver.port
        self.endpoint = f"127.0.0.1:{self.port}"

    def _call(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self.service.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
