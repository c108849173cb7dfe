"""A Collector-like stream of trace Exports for the fault tests (research/reliability.md §6).

Several sender threads, like the consumers of a Collector's `otlp` exporter, send pre-encoded
`ExportTraceServiceRequest`s of 100 HTTP SERVER spans with deterministic, distinct ids. Every span maps to exactly one `api_performance_metrics` row, so "stored" and
"duplicates" are plain counts over that table. Retryable answers are retried the Collector's way
(`exporterhelper`: exponential backoff, at least the server's `RetryInfo` delay) until a give-up
budget runs out; every attempt's answer is recorded, so a test can assert which codes it saw.

Each batch has its own `http.route`, i.e. its own indexed `endpoint_path`, so a sender can ask
PostgreSQL cheaply whether a batch is committed: right when its OK arrives (ack after commit) and
before re-sending it (the retry re-sends data that is already stored, i.e. idempotency is tested).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import psycopg
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SPANS_PER_BATCH = 100
SERVICE = "reliability-stream"
# The spec's retryable codes; RESOURCE_EXHAUSTED only with RetryInfo (as the Collector does).
RETRYABLE = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})  # fmt: skip
# grpc's reconnect backoff (1 s growing to 120 s) scaled down like the rest of the CI runs: a
# sender must notice a receiver that came back within the test's seconds.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
_BASE_NS = time.time_ns() - 600 * 10**9


def batch_route(batch: int) -> str:
    return f"/api/stream/b{batch}"


def span_batch(batch: int, spans: int = SPANS_PER_BATCH) -> bytes:
    """The encoded Export of batch `batch`: one trace of `spans` HTTP SERVER spans."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=AnyValue(string_value=SERVICE))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests.reliability"
    trace_id = ((0xB7 << 120) | batch).to_bytes(16, "big")
    route = batch_route(batch)
    for i in range(spans):
        start = _BASE_NS + batch * 1_000_000 + i * 1_000
        span = scope_spans.spans.add(
            trace_id=trace_id, span_id=(i + 1).to_bytes(8, "big"), name=f"GET {route}",
            kind=Span.SpanKind.SPAN_KIND_SERVER, start_time_unix_nano=start,
            end_time_unix_nano=start + 5_000_000,
        )  # fmt: skip
        for key, value in (
            ("http.request.method", "GET"),
            ("http.route", route),
            ("url.path", route),
        ):
            span.attributes.add(key=key, value=AnyValue(string_value=value))
        span.attributes.add(key="http.response.status_code", value=AnyValue(int_value=200))
    return request.SerializeToString()


def retry_delay(error: grpc.RpcError) -> float | None:
    """The RetryInfo delay from the standard status details trailer, as Go clients read it."""
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    raw = trailers.get("grpc-status-details-bin")
    if not raw:
        return None
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


# One attempt: (answer, RetryInfo/Retry-After delay, retryable?). The answer is "OK", a gRPC
# status name, "HTTP_<status>", "PARTIAL" (an OK that rejected spans) or "DISCONNECTED".
Answer = tuple[str, float | None, bool]
Exporter = Callable[[bytes, float], Answer]


def grpc_exporter(target: str, own_connection: bool = False) -> tuple[Exporter, Callable[[], None]]:
    """A channel per sender. grpc shares one connection between channels to one target, as the
    Collector's exporter multiplexes its consumers over one: a lost connection fails every
    Export in flight. `own_connection` gives the sender a TCP connection of its own."""
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", int(own_connection))]
    channel = grpc.insecure_channel(target, options=options)
    export = channel.unary_unary(TRACE_EXPORT, request_serializer=None, response_deserializer=None)

    def call(payload: bytes, timeout_s: float) -> Answer:
        try:
            answer = ExportTraceServiceResponse.FromString(export(payload, timeout=timeout_s))
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            delay = retry_delay(error)
            # RESOURCE_EXHAUSTED is retryable only with RetryInfo (the Collector's rule).
            return (
                code.name,
                delay,
                code in RETRYABLE
                or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None),
            )
        return (
            ("PARTIAL", None, False)
            if answer.partial_success.rejected_spans
            else ("OK", None, False)
        )

    return call, channel.close


def http_exporter(target: str) -> tuple[Exporter, Callable[[], None]]:
    """OTLP/HTTP protobuf, a new connection per request (no keep-alive)."""
    client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    url = f"http://{target}/v1/traces"

    def call(payload: bytes, timeout_s: float) -> Answer:
        try:
            answer = client.post(url, content=payload, timeout=timeout_s,
                                 headers={"content-type": "application/x-protobuf"})  # fmt: skip
        except httpx.TransportError:
            return "DISCONNECTED", None, True  # the spec: a client retries when no answer came
        if answer.status_code == 200:
            rejected = ExportTraceServiceResponse.FromString(
                answer.content
            ).partial_success.rejected_spans
            return ("PARTIAL", None, False) if rejected else ("OK", None, False)
        after = answer.headers.get("retry-after")
        return (
            f"HTTP_{answer.status_code}",
            float(after) if after else None,
            answer.status_code in (429, 502, 503, 504),
        )

    return call, client.close


def stored_spans(url: str) -> tuple[int, int]:
    """(stored, duplicates) of the stream's spans: count(*) - count(DISTINCT trace_id, span_id)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT (trace_id, span_id)) FROM api_performance_metrics "
            "WHERE service_name = %s", (SERVICE,),
        ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0]), int(row[1])


def committed_batches(url: str) -> set[int]:
    """Batches with all their spans stored."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT endpoint_path FROM api_performance_metrics WHERE service_name = %s "
            "GROUP BY endpoint_path HAVING count(DISTINCT span_id) = %s", (SERVICE, SPANS_PER_BATCH),
        ).fetchall()  # fmt: skip
    return {int(path.rsplit("/b", 1)[1]) for (path,) in found}


class RowProbe:
    """One sender's own connection for "is this batch committed?", reconnecting after restarts."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None

    def committed(self, batch: int, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=2)
                row = self._conn.execute(
                    "SELECT count(*) FROM api_performance_metrics WHERE endpoint_path = %s",
                    (batch_route(batch),),
                ).fetchone()
                return row is not None and row[0] >= SPANS_PER_BATCH
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class Attempt:
    batch: int
    code: str  # see Answer
    sent_at: float  # time.monotonic()
    answered_at: float  # time.monotonic()
    answered_wall: float  # time.time(): comparable with PostgreSQL's clock_timestamp()


class ExportStream:
    """`senders` threads sending batches 0, 1, 2, ... until `finish()` over OTLP/gRPC (or
    OTLP/HTTP with `protocol="http"`); every batch taken is retried until acknowledged, or until
    the give-up budget is spent (`given_up`, which a test reports as lost).

    `check_url`: with it, each OK is checked against the database right away (`not_committed_on_ok`
    lists the batches whose rows were not visible: an ack before COMMIT), and each re-send first
    checks whether the batch is already stored (`resent_committed` counts those re-sends).
    """

    def __init__(
        self,
        target: str,
        *,
        protocol: str = "grpc",
        senders: int = 4,
        own_connections: bool = False,
        attempt_timeout_s: float = 5.0,
        give_up_after_s: float = 60.0,
        pace_s: float = 0.0,
        check_url: str | None = None,
        max_backoff_s: float = 1.0,
    ) -> None:
        self._target = target
        self._protocol = protocol
        self._own_connections = own_connections
        self._attempt_timeout_s = attempt_timeout_s
        self._give_up_after_s = give_up_after_s
        self._pace_s = pace_s
        self._check_url = check_url
        self._max_backoff_s = max_backoff_s
        self._batches = itertools.count()
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # take no new batches; finish the ones taken
        self._aborted = threading.Event()  # give up now (test teardown)
        self.sent_batches = 0
        self.acked: set[int] = set()
        self.attempts: list[Attempt] = []
        self.given_up: list[int] = []
        self.not_committed_on_ok: list[int] = []
        self.resent_committed = 0
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run, name=f"sender-{i}", daemon=True)
            for i in range(senders)
        ]

    def start(self) -> ExportStream:
        for thread in self._threads:
            thread.start()
        return self

    @property
    def codes(self) -> collections.Counter[str]:
        return collections.Counter(a.code for a in list(self.attempts))

    def wait_acked(self, count: int, timeout_s: float = 60.0) -> None:
        """Block until `count` batches are acknowledged."""
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < count:
            if time.monotonic() > deadline or self.errors:
                raise AssertionError(
                    f"only {len(self.acked)} of {count} batches acked: {self.summary()}"
                )
            time.sleep(0.02)

    def finish(self, timeout_s: float = 90.0) -> None:
        """Take no new batches; wait until every batch taken is acked or given up."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            self.close()
            raise AssertionError(
                f"senders still busy after {timeout_s} s: {alive}; {self.summary()}"
            )
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        self._stopping.set()
        self._aborted.set()
        for thread in self._threads:
            thread.join(10)

    def summary(self) -> str:
        return (f"sent={self.sent_batches * SPANS_PER_BATCH} spans in {self.sent_batches} batches, "
                f"acked={len(self.acked)} batches, given_up={len(self.given_up)}, "
                f"codes={dict(sorted(self.codes.items()))}, resent_committed={self.resent_committed}")  # fmt: skip

    def _take(self) -> int | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            self.sent_batches += 1
            return next(self._batches)

    def _run(self) -> None:
        if self._protocol == "grpc":
            call, close = grpc_exporter(self._target, self._own_connections)
        else:
            call, close = http_exporter(self._target)
        probe = RowProbe(self._check_url) if self._check_url else None
        try:
            while (batch := self._take()) is not None:
                self._deliver(call, probe, batch)
                if self._pace_s:
                    self._stopping.wait(self._pace_s)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.errors.append(exc)
        finally:
            close()
            if probe is not None:
                probe.close()

    def _deliver(self, call: Exporter, probe: RowProbe | None, batch: int) -> None:
        payload = span_batch(batch)
        first = time.monotonic()
        backoff = 0.1
        while not self._aborted.is_set():
            sent = time.monotonic()
            code, delay, retryable = call(payload, self._attempt_timeout_s)
            self._record(batch, code, sent)
            if code == "OK":
                if probe is not None and not probe.committed(batch):
                    self.not_committed_on_ok.append(batch)
                self.acked.add(batch)
                return
            if not retryable or time.monotonic() - first > self._give_up_after_s:
                break
            if probe is not None and probe.committed(batch):
                with self._lock:
                    self.resent_committed += 1
            self._aborted.wait(max(backoff, delay or 0.0))
            backoff = min(backoff * 2, self._max_backoff_s)
        self.given_up.append(batch)

    def _record(self, batch: int, code: str, sent: float) -> None:
        self.attempts.append(Attempt(batch, code, sent, time.monotonic(), time.time()))
