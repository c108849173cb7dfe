"""One bound on in-flight Exports, shared by the gRPC and HTTP receivers.

More concurrent writes than database connections only adds latency (research/ceilings.md): an
Export that cannot start within the queue timeout is answered as retryable (gRPC UNAVAILABLE,
HTTP 503) instead of piling up, whichever protocol it came in on.
"""

from __future__ import annotations

import asyncio

from otel_bridge.errors import RetryableError
from otel_bridge.pipeline import Consume, Outcome


class ExportAdmission:
    def __init__(self, consume: Consume, max_concurrent_exports: int, queue_timeout_s: float) -> None:
        self._consume = consume
        self._slots = asyncio.Semaphore(max_concurrent_exports)
        self._queue_timeout_s = queue_timeout_s
        self.in_flight = 0  # Exports being consumed now
        self.waiting = 0  # Exports queued for a slot

    async def __call__(self, signal: str, data: bytes) -> Outcome:
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self._queue_timeout_s)
        except asyncio.TimeoutError:
            raise RetryableError("receiver overloaded: too many exports in flight") from None
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            return await self._consume(signal, data)
        finally:
            self.in_flight -= 1
            self._slots.release()
