"""Server health metrics: what `server_performance_metrics` needs from a Python service.

CPU, RSS, threads and open files come from `opentelemetry-instrumentation-system-metrics`
(process metrics only: the machine-wide `system.*` set is another tool's job). What it lacks is
added here: `otel_bridge.event_loop.lag` (semconv has no asyncio loop lag metric) and
`process.uptime`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger(__name__)

PROCESS_METRICS = {
    "process.cpu.utilization": None,
    "process.cpu.time": ["user", "system"],
    "process.memory.usage": None,
    "process.thread.count": None,
    "process.open_file_descriptor.count": None,
}
LAG_INTERVAL_S = 0.5
_STARTED = time.monotonic()


class EventLoopLagMonitor:
    """How late the loop wakes a task that asked to sleep `interval`: the time every coroutine on
    the loop waits behind blocking code. Reports the worst lag since the last collection."""

    def __init__(self, interval_s: float = LAG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="otel_bridge.event_loop.lag")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.interval_s)
            self._worst = max(self._worst, time.monotonic() - started - self.interval_s)

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        worst, self._worst = self._worst, 0.0
        yield Observation(max(worst, 0.0))


def _uptime(_: CallbackOptions) -> Iterable[Observation]:
    yield Observation(time.monotonic() - _STARTED)


def install_runtime_metrics(meter_provider: Any, lag_monitor: EventLoopLagMonitor | None = None) -> Any:
    """Register the process metrics, uptime and (if a monitor is given) event-loop lag on
    `meter_provider`; returns the system-metrics instrumentor (to `uninstrument()` it)."""
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    instrumentor = SystemMetricsInstrumentor(config=PROCESS_METRICS)
    instrumentor.instrument(meter_provider=meter_provider)
    meter = meter_provider.get_meter("otel_bridge.instrumentation.runtime_metrics")
    meter.create_observable_gauge("process.uptime", callbacks=[_uptime], unit="s",
                                  description="Time since the process started.")  # fmt: skip
    if lag_monitor is not None:
        meter.create_observable_gauge("otel_bridge.event_loop.lag", callbacks=[lag_monitor.observe], unit="s",
                                      description="Worst asyncio event-loop lag since the last collection.")  # fmt: skip
    return instrumentor
