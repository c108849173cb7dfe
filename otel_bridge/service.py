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
    redact_url,
    resolve_database,
)
from otel_bridge.ingest import InProcessIngest, ProcessIngest, Totals, create_ingest, tune_gc
from otel_bridge.notifier import AlertNotifier, NotifierSettings
from otel_bridge.pipeline import Outcome
from otel_bridge.receiver.admission import ExportAdmission
from otel_bridge.receiver.auth import BearerTokens
from otel_bridge.receiver.grpc import GrpcReceiver, GrpcReceiverSettings
from otel_bridge.receiver.http import HttpReceiver, HttpReceiverSettings, parse_origins
from otel_bridge.receiver.tls import TlsSettings
from otel_bridge.telemetry import ReceiverTelemetry

log = logging.getLogger(__name__)

SUMMARY_INTERVAL_S = 60.0


class BridgeService:
    def __init__(self, config: Config, *, prepared_database_url: str | None = None, background_jobs: bool = True) -> None:
        """`prepared_database_url`: a database another process already resolved and migrated (one
        of `serve --workers`' receivers). `background_jobs`: also run the alert notifier and the
        periodic maintenance (one receiver of a group does)."""
        self.config = config
        self.database_url = prepared_database_url or ""
        self._prepared = prepared_database_url is not None
        self._background_jobs = background_jobs
        self.totals = Totals()
        self.telemetry = ReceiverTelemetry()
        self.receiver: GrpcReceiver | None = None
        self.http_receiver: HttpReceiver | None = None
        self.notifier: AlertNotifier | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._ingest: InProcessIngest | ProcessIngest | None = None
        self._admission: ExportAdmission | None = None
        self._summary_task: asyncio.Task[None] | None = None
        self._maintenance_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        if not self._prepared:
            self.database_url, self._embedded = await asyncio.to_thread(resolve_database, config)
            log.info("database: %s", redact_url(self.database_url))
            await asyncio.to_thread(migrate, self.database_url)
            await asyncio.to_thread(ensure_partitions, self.database_url)
        self._ingest = create_ingest(config, self.database_url)
        await self._ingest.start()
        # One bound on in-flight Exports, whichever protocol they come in on.
        self._admission = admitted = ExportAdmission(self._consume, config.max_concurrent_exports, config.queue_timeout_s,
                                   config.max_queued_exports)
        self.telemetry.watch(admitted)
        tokens = BearerTokens(config.auth_tokens)
        tls = TlsSettings.from_config(config)
        self.receiver = GrpcReceiver(
            GrpcReceiverSettings(config.grpc_listen, config.max_request_bytes, config.retry_after_s, tls, config.reuse_port),
            admitted, tokens, self.telemetry,
        )
        await self.receiver.start()
        self.http_receiver = HttpReceiver(
            HttpReceiverSettings(config.http_listen, config.max_request_bytes, config.retry_after_s,
                                 parse_origins(config.cors_origins), tls, config.reuse_port),
            admitted, tokens, self.telemetry,
        )  # fmt: skip
        await self.http_receiver.start()
        if config.alert_webhook_url and self._background_jobs:
            self.notifier = AlertNotifier(NotifierSettings(
                config.alert_webhook_url, config.alert_spike_factor, config.alert_spike_min_events,
                config.alert_max_per_minute,
            ), self.database_url)  # fmt: skip
            self.notifier.start()
        self._summary_task = asyncio.create_task(self._log_summaries())
        if config.maintenance_interval_s > 0 and self._background_jobs:
            self._maintenance_task = asyncio.create_task(self._maintain_periodically(config.maintenance_interval_s))

    async def _consume(self, signal: str, data: bytes) -> Outcome:
        assert self._ingest is not None
        try:
            outcome = await self._ingest.consume(signal, data)
        except Exception as exc:
            self.telemetry.consume_failed(exc)
            raise
        self.totals.add(outcome)
        self.telemetry.consumed(signal, outcome)
        return outcome

    async def stop(self) -> None:
        for task in (self._summary_task, self._maintenance_task):
            if task is not None:
                task.cancel()
        if self.notifier is not None:
            await self.notifier.stop()
        # Drain before the transports stop: while the in-flight Exports of both protocols get
        # their grace period, new ones still reach a handler and are answered UNAVAILABLE with
        # RetryInfo, rather than being cut off by the transport (gRPC would say CANCELLED).
        if self.receiver is not None:
            await self.receiver.announce_shutdown()
        if self._admission is not None:
            await self._admission.drain(self.config.shutdown_grace_s)
        await asyncio.gather(*(r.stop(1.0) for r in (self.http_receiver, self.receiver) if r is not None))
        if self._ingest is not None:
            await self._ingest.stop()
        self._log_summary()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        log.info("stopped")

    async def run_until_signal(self) -> None:
        """`otel-bridge serve`: run until SIGTERM or SIGINT, then shut down in order."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()  # a failed start still stops what it started (e.g. the database)
            tune_gc()  # this process is now a receiver, and everything it needs is loaded
            await stop.wait()
            log.info("shutting down: draining in-flight exports")
        finally:
            await self.stop()

    async def _maintain_periodically(self, interval_s: float) -> None:
        """`otel-bridge maintain` in the background; the advisory lock keeps receivers sharing a
        database from running it twice at once."""
        from otel_bridge import maintenance

        await asyncio.sleep(min(interval_s, 10.0))
        while True:
            try:
                report = await asyncio.to_thread(maintenance.run, self.database_url, self.config.maintenance_settings())
                if report is not None:
                    log.info("maintenance: %s", "; ".join(report.lines()))
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("maintenance failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(interval_s)

    async def _log_summaries(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL_S)
            self._log_summary()

    def _log_summary(self) -> None:
        if self.totals:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.totals.items()))
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
        assert self.service.receiver is not None and self.service.http_receiver is not None
        self.port = self.service.receiver.port
        self.endpoint = f"127.0.0.1:{self.port}"
        self.http_endpoint = f"127.0.0.1:{self.service.http_receiver.port}"

    def _call(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self.service.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
