"""ExportAdmission: slots bound the Exports consumed at once, places bound the ones waiting, and
every overload answer is the retryable UNAVAILABLE + RetryInfo (never RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from otel_bridge.errors import RetryableError
from otel_bridge.pipeline import Outcome
from otel_bridge.receiver.admission import QUEUE_FULL, QUEUE_TIMEOUT, SHUTTING_DOWN, ExportAdmission
from otel_bridge.receiver.status import status_for


class HeldConsume:
    """A consume that holds every Export until `release` is set, recording what it was given."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[bytes] = []
        self.finished: list[bytes] = []

    async def __call__(self, signal: str, data: bytes) -> Outcome:
        self.seen.append(data)
        await self.release.wait()
        self.finished.append(data)
        return Outcome(counts={"spans_received": 1})


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def refusal(admission: ExportAdmission, data: bytes = b"x") -> RetryableError:
    with pytest.raises(RetryableError) as refused:
        await admission("traces", data)
    return refused.value


def test_slots_bound_the_exports_consumed_and_places_bound_the_ones_waiting() -> None:
    async def scenario() -> None:
        consume = HeldConsume()
        admission = ExportAdmission(
            consume, max_concurrent_exports=2, queue_timeout_s=5, max_queued_exports=3
        )
        exports = [asyncio.create_task(admission("traces", bytes([i]))) for i in range(5)]
        await settle()
        assert (admission.in_flight, admission.waiting, admission.admitted) == (2, 3, 5)
        assert consume.seen == [b"\x00", b"\x01"]

        error = await refusal(admission)  # the sixth: no place left, refused without waiting
        assert str(error) == QUEUE_FULL and error.retry_after_s is None
        assert (admission.refused_queue_full, admission.refused_queue_timeout) == (1, 0)

        consume.release.set()
        outcomes = await asyncio.gather(*exports)
        assert [o.counts for o in outcomes] == [{"spans_received": 1}] * 5
        assert consume.seen == [bytes([i]) for i in range(5)]  # the waiting ones in arrival order
        assert (admission.in_flight, admission.waiting, admission.admitted) == (0, 0, 0)
        await admission("traces", b"again")  # places and slots were all given back

    run(scenario)


def test_an_export_that_waits_past_the_queue_timeout_is_refused() -> None:
    async def scenario() -> None:
        consume = HeldConsume()
        admission = ExportAdmission(consume, max_concurrent_exports=1, queue_timeout_s=0.05)
        first = asyncio.create_task(admission("traces", b"first"))
        await settle()
        error = await refusal(admission, b"second")
        assert str(error) == QUEUE_TIMEOUT
        assert (admission.refused_queue_timeout, admission.refused_queue_full) == (1, 0)
        assert admission.waiting == 0 and consume.seen == [b"first"]
        consume.release.set()
        await first

    run(scenario)


def test_zero_queued_exports_and_zero_timeout_still_admit_when_a_slot_is_free() -> None:
    async def scenario() -> None:
        consume = HeldConsume()
        admission = ExportAdmission(
            consume, max_concurrent_exports=1, queue_timeout_s=0, max_queued_exports=0
        )
        first = asyncio.create_task(admission("traces", b"first"))
        await settle()
        assert admission.in_flight == 1  # a free slot is taken even with a timeout of 0
        assert str(await refusal(admission)) == QUEUE_FULL
        consume.release.set()
        await first
        await admission("traces", b"third")
        assert consume.seen == [b"first", b"third"]

    run(scenario)


def test_a_receiver_takes_its_place_before_reading_the_request() -> None:
    async def scenario() -> None:
        consume = HeldConsume()
        consume.release.set()
        admission = ExportAdmission(
            consume, max_concurrent_exports=1, queue_timeout_s=1, max_queued_exports=1
        )
        reads: list[str] = []
        async with admission.place() as first, admission.place():
            assert admission.admitted == 2  # both "reading their request"
            with pytest.raises(RetryableError):
                async with admission.place():
                    reads.append("never")  # a refused Export is never read
            outcome = await first("logs", b"read")
            assert outcome.counts == {"spans_received": 1}
        assert reads == [] and consume.seen == [b"read"] and admission.admitted == 0

    run(scenario)


def test_a_cancelled_export_gives_back_its_slot_and_place() -> None:
    async def scenario() -> None:
        consume = HeldConsume()
        admission = ExportAdmission(
            consume, max_concurrent_exports=1, queue_timeout_s=5, max_queued_exports=1
        )
        running = asyncio.create_task(admission("traces", b"a"))
        queued = asyncio.create_task(admission("traces", b"b"))
        await settle()
        running.cancel()  # the sender's deadline passed: grpc cancels the handler
        queued.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        assert (admission.in_flight, admission.waiting, admission.admitted) == (0, 0, 0)
        consume.release.set()
        await admission("traces", b"c")

    run(scenario)


@pytest.mark.parametrize("message", [QUEUE_FULL, QUEUE_TIMEOUT])
def test_overload_is_answered_unavailable_with_retry_info_in_both_trailers(message: str) -> None:
    code, details, trailers = status_for(RetryableError(message), default_retry_s=1.5)
    assert code == grpc.StatusCode.UNAVAILABLE and details == message
    metadata: dict[str, Any] = dict(trailers)
    status = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0] and status.details[0].Unpack(info)
    assert info.retry_delay.ToTimedelta().total_seconds() == 1.5
    assert error_details_pb2.RetryInfo.FromString(metadata["google.rpc.retryinfo-bin"]) == info


def test_drain_lets_exports_finish_within_the_grace_period_and_answers_the_rest_unavailable() -> None:
    async def scenario() -> None:
        consume = HeldConsume()
        admission = ExportAdmission(consume, max_concurrent_exports=2, queue_timeout_s=5, max_queued_exports=2)
        exports = [asyncio.create_task(admission("traces", bytes([i]))) for i in range(3)]
        await settle()
        drained = asyncio.create_task(admission.drain(30))
        await settle()
        # New Exports are refused at once; the one waiting for a slot is refused when it gets one.
        assert str(await refusal(admission)).startswith(SHUTTING_DOWN)
        consume.release.set()  # the two in flight commit within the grace period: answered OK
        assert [(await e).counts for e in exports[:2]] == [{"spans_received": 1}] * 2
        assert str(await refusal_of(exports[2])).startswith(SHUTTING_DOWN)
        await asyncio.wait_for(drained, 1)  # returned as soon as nothing was in flight
        assert consume.seen == [b"\x00", b"\x01"]

    run(scenario)


def test_drain_answers_exports_still_running_after_the_grace_period_and_lets_them_finish() -> None:
    async def scenario() -> None:
        consume = HeldConsume()
        admission = ExportAdmission(consume, max_concurrent_exports=2, queue_timeout_s=5)
        export = asyncio.create_task(admission("traces", b"slow"))
        await settle()
        await admission.drain(0.05)
        error = await refusal_of(export)
        assert "grace period" in str(error) and admission.in_flight == 0
        # Its transaction was not cut short: it still ends on its own (and a retry of it is
        # deduplicated by the rows' ids).
        assert consume.finished == []
        consume.release.set()
        await settle()
        assert consume.finished == [b"slow"]

    run(scenario)


async def refusal_of(export: asyncio.Task[Outcome]) -> RetryableError:
    with pytest.raises(RetryableError) as refused:
        await export
    return refused.value


def test_an_export_whose_sender_went_away_is_not_worked_on_any_longer() -> None:
    async def scenario() -> None:
        consume = HeldConsume()
        admission = ExportAdmission(consume, max_concurrent_exports=1, queue_timeout_s=5)
        export = asyncio.create_task(admission("traces", b"gone"))
        await settle()
        export.cancel()  # what grpc does to the handler when the sender cancels or times out
        await settle()
        consume.release.set()
        await settle()
        assert consume.seen == [b"gone"] and consume.finished == []
        assert (admission.in_flight, admission.admitted) == (0, 0)

    run(scenario)
