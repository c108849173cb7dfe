"""One bound on in-flight Exports, shared by the gRPC and HTTP receivers.

More concurrent writes than database connections only adds latency (research/ceilings.md): an
Export that cannot start within the queue timeout is answered as retryable (gRPC UNAVAILABLE,
HTTP 503) instead of piling up, whichever protocol it came in on.

The Exports waiting for a slot are bounded too: each holds its request bytes (up to
`OTEL_BRIDGE_MAX_REQUEST_BYTES`) while it waits, so without a bound a flood grows the receiver's
memory without limit. An Export takes a *place* (in flight or waiting; there are
`max_concurrent_exports + max_queued_exports`) and is refused at once when none is free, with
the same retryable answer: never a bare RESOURCE_EXHAUSTED, which the Collector drops
(research/reliability.md §2.6). A receiver that takes the place before it reads the request
(`place()`) never even reads a refused one. Nothing queues behind this: the ingest worker pool
only ever sees the `max_concurrent_exports` admitted Exports.

Shutdown (`drain`) refuses new and waiting Exports and gives the in-flight ones a grace period;
those still unanswered then get the same retryable answer *before* the transports cut them off.
Their transaction may still commit afterwards: the sender's retry is then deduplicated by the
rows' deterministic ids, so an early UNAVAILABLE never loses or doubles data, while a late OK
would have made the sender wait past its own timeout (research/reliability.md §6 test 15).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from otel_bridge.errors import RetryableError
from otel_bridge.pipeline import Consume, Outcome

QUEUE_FULL = "receiver overloaded: too many exports waiting"
QUEUE_TIMEOUT = "receiver overloaded: too many exports in flight"
SHUTTING_DOWN = "receiver shutting down"


class ExportAdmission:
    def __init__(
        self,
        consume: Consume,
        max_concurrent_exports: int,
        queue_timeout_s: float,
        max_queued_exports: int | None = None,
    ) -> None:
        """`max_queued_exports`: Exports that may wait for a slot (default twice the slots);
        0 refuses every Export that cannot start at once."""
        self._consume = consume
        self._slots = asyncio.Semaphore(max_concurrent_exports)
        self._queue_timeout_s = queue_timeout_s
        queued = 2 * max_concurrent_exports if max_queued_exports is None else max_queued_exports
        self.places = max_concurrent_exports + queued
        self.admitted = 0  # Exports holding a place: being read, waiting or in flight
        self.in_flight = 0  # Exports being consumed now
        self.waiting = 0  # Exports queued for a slot
        # Exports refused as overloaded since start, by cause (monotonic, for counters).
        self.refused_queue_full = 0
        self.refused_queue_timeout = 0
        self._closing = False
        self._gave_up: asyncio.Future[None] | None = None  # done when the shutdown grace is over
        self._idle = asyncio.Event()  # set while nothing is in flight
        self._idle.set()

    async def __call__(self, signal: str, data: bytes) -> Outcome:
        """Admit and consume an Export whose request was already read."""
        async with self.place() as consume:
            return await consume(signal, data)

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[Consume]:
        """Hold a place for one Export, or raise RetryableError at once when all are taken.
        Yields the consume to call (once) with the request, which waits for a slot."""
        if self._closing:
            raise RetryableError(SHUTTING_DOWN)
        if self.admitted >= self.places:
            self.refused_queue_full += 1
            # No delay of our own: the receivers suggest their OTEL_BRIDGE_RETRY_AFTER_S.
            raise RetryableError(QUEUE_FULL)
        self.admitted += 1
        try:
            yield self._consume_in_slot
        finally:
            self.admitted -= 1

    async def _consume_in_slot(self, signal: str, data: bytes) -> Outcome:
        # `locked()` is also true while earlier Exports wait, so a free slot is never taken past
        # them. A free slot is taken without `wait_for`, which with a timeout of 0 would refuse
        # even then.
        if self._slots.locked():
            await self._wait_for_slot()
        else:
            await self._slots.acquire()  # returns at once
        if self._closing:
            self._slots.release()
            raise RetryableError(SHUTTING_DOWN)
        self.in_flight += 1
        self._idle.clear()
        try:
            # A task of its own, so that a shutdown can answer the sender without waiting for it.
            consume = asyncio.ensure_future(self._consume(signal, data))
            try:
                await asyncio.wait((consume, self._grace_over()), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                consume.cancel()  # the sender went away: its Export is not worked on any longer
                raise
            if consume.done():
                return consume.result()
            consume.add_done_callback(_ignore_result)  # left to commit or roll back on its own
            raise RetryableError(f"{SHUTTING_DOWN}: export not finished within the grace period")
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
            self._slots.release()

    def _grace_over(self) -> asyncio.Future[None]:
        if self._gave_up is None:
            self._gave_up = asyncio.get_running_loop().create_future()
        return self._gave_up

    async def drain(self, grace_s: float) -> None:
        """Refuse new and waiting Exports, wait up to `grace_s` for the in-flight ones, then
        answer those left UNAVAILABLE."""
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except asyncio.TimeoutError:
            pass
        gave_up = self._grace_over()
        if not gave_up.done():
            gave_up.set_result(None)

    async def _wait_for_slot(self) -> None:
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self._queue_timeout_s)
        except asyncio.TimeoutError:
            self.refused_queue_timeout += 1
            raise RetryableError(QUEUE_TIMEOUT) from None
        finally:
            self.waiting -= 1


def _ignore_result(task: asyncio.Future[Outcome]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
