"""The receiver's own telemetry: Prometheus metrics on `GET /metrics`, read by `otel-bridge stats`.

Named after the Collector's own (`otelcol_receiver_accepted_spans`, ...) under our prefix:

    otel_bridge_receiver_items_total{signal, outcome}   spans / metric points / log records
                                                        accepted, rejected or ignored
    otel_bridge_rows_stored_total{table}                rows written, per table
    otel_bridge_exports_total{signal, transport, status}  Export requests by gRPC status name
    otel_bridge_export_duration_seconds{signal, transport}  histogram, receipt to answer
    otel_bridge_database_errors_total                   Exports not stored: database failure
    otel_bridge_exports_refused_total{reason}           Exports refused as overloaded
    otel_bridge_exports_in_flight, otel_bridge_exports_waiting   the admission's queue, now
    otel_bridge_build_info{version}                     always 1

Item counts come from each Export's `Outcome.counts`, so a request that fails as a whole (bad
body, database down) counts only in `exports_total` and the duration: its items were never
counted by anyone.

One process: each `ReceiverTelemetry` has its own registry (tests run several receivers in one
process). `serve --workers N` runs N receivers with `PROMETHEUS_MULTIPROC_DIR` set: prometheus-
client then keeps every value in a file per process there, and the receiver that answers a
scrape sums every process's files (`MultiProcessCollector`). The admission's gauges are live sums
(a dead process drops out after `mark_process_dead`), refreshed every second by each process.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
    values,
)
from prometheus_client.exposition import choose_encoder

from otel_bridge import __version__

if TYPE_CHECKING:
    from otel_bridge.pipeline import Outcome
    from otel_bridge.receiver.admission import ExportAdmission

T = TypeVar("T")

# Export latency from a local 1 ms insert to a 30 s pile-up behind a slow database.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip
# The pipeline's count keys per signal (`otel_bridge.pipeline._outcome`).
ITEMS = {"traces": "spans", "metrics": "metric_points", "logs": "log_records"}
OUTCOMES = ("accepted", "rejected", "ignored")
PUBLISH_INTERVAL_S = 1.0
# `PostgresWriter` turns every database failure into a RetryableError with this message; the
# message is all that survives the trip back from an ingest worker process.
DATABASE_FAILURE_PREFIX = "database unavailable"

# Chosen by prometheus-client when it is first imported, from PROMETHEUS_MULTIPROC_DIR.
MULTIPROCESS = values.ValueClass is not values.MutexValue
# A `*_created` timestamp beside every series doubles the scrape for nothing a dashboard uses
# (and multiprocess mode has none): off for this process, which is a receiver.
disable_created_metrics()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def mark_process_dead(pid: int, directory: str | None = None) -> None:
    """For a supervisor of receiver processes: drop a dead one's in-flight and waiting gauges from
    the sums (its counters and histograms are kept). Nothing to do outside multiprocess mode."""
    directory = directory or multiprocess_dir()
    if directory:
        multiprocess.mark_process_dead(pid, directory)


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, mode: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)

        self.items = counter("otel_bridge_receiver_items", "Spans, metric points and log records received, by "
                             "outcome: accepted (stored or used), rejected (invalid), ignored (nothing to store)",
                             ("signal", "outcome"))  # fmt: skip
        self.rows = counter("otel_bridge_rows_stored", "Rows written, per table", ("table",))
        self.exports = counter("otel_bridge_exports", "Export requests answered, by gRPC status name "
                               "(HTTP answers by the status in their google.rpc.Status body)",
                               ("signal", "transport", "status"))  # fmt: skip
        self.duration = Histogram("otel_bridge_export_duration_seconds", "Export requests from receipt to answer "
                                  "(after the commit)", ("signal", "transport"), registry=registry,
                                  buckets=DURATION_BUCKETS)  # fmt: skip
        self.database_errors = counter("otel_bridge_database_errors", "Exports not stored because the database "
                                       "failed (answered as retryable)")  # fmt: skip
        self.refused = counter("otel_bridge_exports_refused", "Exports refused as overloaded before they "
                               "started: queue_full (no room to wait) or queue_timeout", ("reason",))  # fmt: skip
        self.in_flight = gauge(
            "otel_bridge_exports_in_flight", "Exports being parsed and stored now", "livesum"
        )
        self.waiting = gauge(
            "otel_bridge_exports_waiting", "Exports queued for a slot now", "livesum"
        )
        self.build = gauge("otel_bridge_build_info", "The receiver's version", "max", ("version",))
        self.build.labels(__version__).set(1)
        # Known series start at 0, so a dashboard's rate() has a baseline from the first scrape.
        for signal in ITEMS:
            for outcome in OUTCOMES:
                self.items.labels(signal, outcome)
        for reason in ("queue_full", "queue_timeout"):
            self.refused.labels(reason)


_process_metrics: _Metrics | None = None
_process_lock = threading.Lock()


def _shared_metrics() -> _Metrics:
    """Multiprocess mode keeps values in files keyed by metric name: one set per process, or two
    sets would overwrite each other's values."""
    global _process_metrics
    with _process_lock:
        if _process_metrics is None:
            _process_metrics = _Metrics(None)
        return _process_metrics


class ReceiverTelemetry:
    def __init__(self) -> None:
        self.registry = None if MULTIPROCESS else CollectorRegistry()
        self._metrics = _shared_metrics() if MULTIPROCESS else _Metrics(self.registry)
        self._admission: ExportAdmission | None = None
        self._refused_seen = {"queue_full": 0, "queue_timeout": 0}
        self._publish_lock = threading.Lock()

    # --- recording ----------------------------------------------------------------------------
    def consumed(self, signal: str, outcome: Outcome) -> None:
        """One Export's items and stored rows (after its commit)."""
        counts, items = outcome.counts, ITEMS[signal]
        rejected, ignored = counts.get(f"{items}_rejected", 0), counts.get(f"{items}_ignored", 0)
        accepted = max(0, counts.get(f"{items}_received", 0) - rejected - ignored)
        for name, value in (("accepted", accepted), ("rejected", rejected), ("ignored", ignored)):
            if value:
                self._metrics.items.labels(signal, name).inc(value)
        for key, value in counts.items():
            if key.startswith("rows_") and value:
                self._metrics.rows.labels(key.removeprefix("rows_")).inc(value)

    def consume_failed(self, exc: BaseException) -> None:
        if str(exc).startswith(DATABASE_FAILURE_PREFIX):
            self._metrics.database_errors.inc()

    def exported(self, signal: str, transport: str, status: str, started: float) -> None:
        """One answered Export: `status` is the gRPC code name, `started` its `time.perf_counter()`."""
        self._metrics.exports.labels(signal, transport, status).inc()
        self._metrics.duration.labels(signal, transport).observe(time.perf_counter() - started)

    def grpc_export(
        self, signal: str, export: Callable[[bytes, Any], Awaitable[T]]
    ) -> Callable[[bytes, Any], Awaitable[T]]:
        """`export` (a grpc.aio unary handler) timed and counted by the status it ends with."""

        async def timed(data: bytes, context: Any) -> T:
            started, status = time.perf_counter(), "OK"
            try:
                return await export(data, context)
            except asyncio.CancelledError:
                status = "CANCELLED"  # the client went away or the server is stopping
                raise
            except BaseException:
                # `context.abort()` raises; the code it set is the answer.
                status = getattr(context.code(), "name", None) or "UNKNOWN"
                raise
            finally:
                self.exported(signal, "grpc", status, started)

        return timed

    # --- the admission's queue ----------------------------------------------------------------
    def watch(self, admission: ExportAdmission) -> None:
        """Publish `admission`'s in-flight and waiting counts (at every scrape; and every second in
        multiprocess mode, where the process answering a scrape cannot ask the others)."""
        self._admission = admission
        if MULTIPROCESS:
            threading.Thread(target=_publish_periodically, args=(weakref.ref(self),),
                             name="otel-bridge-telemetry", daemon=True).start()  # fmt: skip

    def publish_admission(self) -> None:
        admission = self._admission
        if admission is None:
            return
        with self._publish_lock:
            self._metrics.in_flight.set(admission.in_flight)
            self._metrics.waiting.set(admission.waiting)
            # The admission counts refusals itself (monotonic); counters take the increase.
            for reason in self._refused_seen:
                total = int(getattr(admission, f"refused_{reason}", 0))
                if total > self._refused_seen[reason]:
                    self._metrics.refused.labels(reason).inc(total - self._refused_seen[reason])
                    self._refused_seen[reason] = total

    # --- exposition ---------------------------------------------------------------------------
    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) for a scrape: the Prometheus text format, or OpenMetrics when the
        scraper's Accept header asks for it. Blocking in multiprocess mode (reads the files)."""
        self.publish_admission()
        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type


def _publish_periodically(ref: weakref.ref[ReceiverTelemetry]) -> None:
    while True:
        time.sleep(PUBLISH_INTERVAL_S)
        telemetry = ref()
        if telemetry is None:
            return
        telemetry.publish_admission()
        del telemetry
