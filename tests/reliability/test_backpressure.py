"""Backpressure instead of collapse (research/reliability.md §6 test 5), CI-sized.

A real `otel-bridge serve` in its own process (so psutil measures the receiver alone: the process
and its ingest worker), with two slots and two queued places, flooded by 64 senders at once with
4 MiB Exports. Pass: the overflow is answered UNAVAILABLE with RetryInfo in both trailers (never
RESOURCE_EXHAUSTED, which the Collector drops), every Export is stored exactly once after the
senders retried as told, and the receiver's RSS stays within 256 MiB during the flood.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from google.rpc import error_details_pb2

from tests.reliability.export_stream import (
    SPANS_PER_BATCH,
    TRACE_EXPORT,
    batch_route,
    retry_delay,
    span_batch,
)
from tests.reliability.receiver_process import MIB, ServeProcess, migrated_database, padded

SENDERS = 64
REQUEST_BYTES = 4 * MIB
RSS_BUDGET_MIB = 256
RETRY_AFTER_S = 0.5
RECEIVER_ENV = {
    "OTEL_BRIDGE_MAX_CONCURRENT_EXPORTS": "2",
    "OTEL_BRIDGE_MAX_QUEUED_EXPORTS": "2",
    "OTEL_BRIDGE_DB_POOL_SIZE": "2",
    "OTEL_BRIDGE_INGEST_WORKERS": "1",
    "OTEL_BRIDGE_RETRY_AFTER_S": str(RETRY_AFTER_S),
}
# The receivers admit an Export in its handler, i.e. after grpc or uvicorn read the whole request:
# 64 concurrent 4 MiB requests are then all in memory at once (measured 350 MiB to 1 GiB, gRPC and
# HTTP). Admitting before reading (`ExportAdmission.place()`) kept it at 185-235 MiB. Set this to
# False once both receivers take their place before they read.
RECEIVERS_READ_BEFORE_ADMISSION = False


@pytest.fixture(scope="module")
def flood_db(pg_server: Any) -> str:
    return migrated_database(pg_server, "backpressure")


@pytest.fixture(scope="module")
def receiver(flood_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    serving = ServeProcess.start(flood_db, tmp_path_factory.mktemp("backpressure"), **RECEIVER_ENV)
    yield serving
    serving.stop()


@dataclass
class Attempts:
    """Every answer of a flood, by batch: (code, trailing metadata)."""

    answers: list[tuple[int, str, dict[str, bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, batch: int, code: str, trailers: dict[str, bytes]) -> None:
        with self.lock:
            self.answers.append((batch, code, trailers))

    @property
    def codes(self) -> collections.Counter[str]:
        return collections.Counter(code for _, code, _ in self.answers)


def grpc_send(
    endpoint: str, payload: bytes, batch: int, attempts: Attempts
) -> tuple[str, float | None]:
    """One Export on its own connection, as 64 separate senders would make."""
    with grpc.insecure_channel(
        endpoint, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        export = channel.unary_unary(
            TRACE_EXPORT, request_serializer=None, response_deserializer=None
        )
        try:
            export(payload, timeout=60)
        except grpc.RpcError as error:
            trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
            attempts.add(batch, error.code().name, trailers)  # type: ignore[attr-defined]
            return error.code().name, retry_delay(error)
    attempts.add(batch, "OK", {})
    return "OK", None


def http_send(
    endpoint: str, payload: bytes, batch: int, attempts: Attempts
) -> tuple[str, float | None]:
    answer = httpx.post(f"http://{endpoint}/v1/traces", content=payload, timeout=60,
                        headers={"content-type": "application/x-protobuf"})  # fmt: skip
    code = "OK" if answer.status_code == 200 else f"HTTP_{answer.status_code}"
    attempts.add(batch, code, dict(answer.headers))
    after = answer.headers.get("retry-after")
    return code, float(after) if after else None


Send = Callable[[str, bytes, int, Attempts], tuple[str, float | None]]


def flood(
    endpoint: str, send: Send, payloads: dict[int, bytes], attempts: Attempts
) -> list[tuple[int, float]]:
    """Every payload at once from its own thread; returns (batch, delay) of the refused ones."""
    start = threading.Barrier(len(payloads))
    refused: list[tuple[int, float]] = []

    def sender(batch: int) -> None:
        start.wait()
        code, delay = send(endpoint, payloads[batch], batch, attempts)
        if code != "OK":
            refused.append((batch, delay if delay is not None else -1.0))

    threads = [threading.Thread(target=sender, args=(batch,)) for batch in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return refused


def retry_until_stored(endpoint: str, send: Send, payloads: dict[int, bytes], refused: list[tuple[int, float]],
                       attempts: Attempts, timeout_s: float = 90.0) -> None:  # fmt: skip
    """What a Collector does with the refused Exports: wait the delay it was told, then re-send;
    four at a time, like its default sending queue consumers."""
    todo, lock = list(refused), threading.Lock()
    deadline = time.monotonic() + timeout_s

    def consumer() -> None:
        while time.monotonic() < deadline:
            with lock:
                if not todo:
                    return
                batch, delay = todo.pop(0)
            time.sleep(max(delay, 0.0))
            code, delay_again = send(endpoint, payloads[batch], batch, attempts)
            if code != "OK":
                with lock:
                    todo.append((batch, delay_again if delay_again is not None else -1.0))

    threads = [threading.Thread(target=consumer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s + 70)
    assert not todo, f"{len(todo)} Exports still refused after {timeout_s} s: {attempts.codes}"


def batches(first: int, count: int) -> dict[int, bytes]:
    return {
        batch: padded(span_batch(batch), REQUEST_BYTES) for batch in range(first, first + count)
    }


def stored_spans(url: str, sent: dict[int, bytes]) -> tuple[int, int]:
    """(stored, duplicates) of these batches' spans (each batch has its own route)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT (trace_id, span_id)) FROM api_performance_metrics "
            "WHERE endpoint_path = ANY(%s)", ([batch_route(batch) for batch in sent],),
        ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_grpc_flood_is_refused_retryably_and_fully_stored_after_retries(receiver: ServeProcess,
                                                                          flood_db: str) -> None:  # fmt: skip
    payloads, attempts = batches(0, SENDERS), Attempts()
    with receiver.peak_rss() as peak:
        refused = flood(receiver.endpoint, grpc_send, payloads, attempts)
    first_round = attempts.codes
    retry_until_stored(receiver.endpoint, grpc_send, payloads, refused, attempts)
    stored, duplicates = stored_spans(flood_db, payloads)
    print(f"\ngRPC flood of {SENDERS} x {REQUEST_BYTES // MIB} MiB: first answers {dict(first_round)}, all "
          f"{dict(attempts.codes)}; peak RSS {peak[0]:.0f} MiB (receiver process {peak[1]:.0f} MiB); "
          f"stored {stored} spans, {duplicates} duplicates")  # fmt: skip

    assert first_round["UNAVAILABLE"] > 0 and first_round["OK"] > 0, first_round
    assert set(attempts.codes) == {"OK", "UNAVAILABLE"}, attempts.codes  # never RESOURCE_EXHAUSTED
    for _, code, trailers in attempts.answers:
        if code == "UNAVAILABLE":  # RetryInfo in both trailers: Go/.NET read one, Python the other
            assert "grpc-status-details-bin" in trailers and "google.rpc.retryinfo-bin" in trailers
            retry_info = error_details_pb2.RetryInfo.FromString(
                trailers["google.rpc.retryinfo-bin"]
            )
            assert retry_info.retry_delay.ToTimedelta().total_seconds() == RETRY_AFTER_S
    assert all(
        delay == RETRY_AFTER_S for _, delay in refused
    )  # as parsed from grpc-status-details-bin
    assert (stored, duplicates) == (SENDERS * SPANS_PER_BATCH, 0)
    assert receiver.process.poll() is None


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_receiver_memory_stays_bounded_while_flooded(receiver: ServeProcess, flood_db: str,
                                                         protocol: str) -> None:  # fmt: skip
    first = 1000 if protocol == "grpc" else 2000
    payloads, attempts = batches(first, SENDERS), Attempts()
    endpoint, send = (
        (receiver.endpoint, grpc_send)
        if protocol == "grpc"
        else (receiver.http_endpoint, http_send)
    )
    with receiver.peak_rss() as peak:
        refused = flood(endpoint, send, payloads, attempts)
    print(f"\n{protocol} flood of {SENDERS} x {REQUEST_BYTES // MIB} MiB: answers {dict(attempts.codes)}; peak RSS "
          f"{peak[0]:.0f} MiB (receiver process {peak[1]:.0f} MiB)")  # fmt: skip
    assert refused and set(attempts.codes) <= {"OK", "UNAVAILABLE", "HTTP_503"}, attempts.codes
    if peak[0] > RSS_BUDGET_MIB and RECEIVERS_READ_BEFORE_ADMISSION:
        pytest.xfail(f"{peak[0]:.0f} MiB: the receivers read every request before admitting it")
    assert peak[0] <= RSS_BUDGET_MIB
