"""Backpressure benchmark (research/reliability.md §6 test 5): offer twice the sustainable rate
to `otel-bridge serve`; it must shed the excess with retryable answers instead of collapsing,
and store everything once the load drops.

    .venv/bin/python benchmarks/backpressure.py [--seconds 30] [--streams 4] [--workers auto]

1. Starts a throwaway embedded PostgreSQL and the real receiver in its own process, with
   `OTEL_BRIDGE_MAX_CONCURRENT_EXPORTS` = `OTEL_BRIDGE_DB_POOL_SIZE` = --streams.
2. Sustainable rate: --streams closed-loop senders (each sends its next 512-span Export when the
   last is answered), 1 s warm-up + --measure-seconds: spans acknowledged per second.
3. Overload: truncates the tables, then offers --factor (2) times that rate open loop (new
   Exports on a fixed schedule, whatever the answers) for --seconds over --streams connections.
   A refused Export is re-sent after its RetryInfo delay (with --initial-backoff, after the longer
   of that and a jittered exponential backoff, as the Collector does), during the overload and
   after it, until every Export is stored.
4. Samples the RSS of the receiver process and of it with its ingest workers every 0.5 s.
5. Prints the offered and sustained rates, the answers by code, whether every UNAVAILABLE had
   RetryInfo in both trailers, bare RESOURCE_EXHAUSTED answers, p99 Export latency, peak RSS,
   and stored = sent with 0 duplicates. Exit code 0 whether PASS or FAIL.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import math
import os
import queue
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import psycopg
from google.rpc import error_details_pb2, status_pb2

sys.path.insert(0, str(Path(__file__).parent))  # when imported rather than run as a script
import ingest  # noqa: E402 - its receiver and database helpers
from payloads import ITEMS_PER_PAYLOAD, SIGNALS  # noqa: E402

log, machine_info = ingest.log, ingest.machine_info

MIB = 1024 * 1024
RSS_TARGET_MIB = 256
P99_TARGET_S = 5.0  # the Collector's per-attempt timeout
ATTEMPT_TIMEOUT_S = 5.0
WARMUP_S = 1.0
SPEC = SIGNALS["traces"]
SPAN_TABLES = ("api_performance_metrics", "database_performance_metrics")  # one row per span


# --- measurements -----------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """Peak RSS (MiB) of the receiver with its children, and of the receiver process alone; and
    their CPU seconds over time."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.process, self.interval_s, self.samples = psutil.Process(pid), interval_s, 0
        self.max_total = self.max_main = 0.0
        self.cpu_seconds: list[tuple[float, tuple[float, float]]] = []  # (time, cpu(pid))
        self._done = threading.Event()

    def cpu_cores(self, start: float, end: float) -> tuple[float, float]:
        """Cores busy between two times: (receiver process, its ingest workers)."""
        inside = [c for c in self.cpu_seconds if start <= c[0] <= end] or [(start, (0.0, 0.0))]
        (t0, first), (t1, last) = inside[0], inside[-1]
        return (last[0] - first[0]) / max(t1 - t0, 1e-9), (last[1] - first[1]) / max(t1 - t0, 1e-9)

    def sample(self) -> tuple[float, float]:
        main = total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass  # a worker being replaced
        return total / MIB, main / MIB

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            total, main = self.sample()
            self.max_total, self.max_main = max(self.max_total, total), max(self.max_main, main)
            self.cpu_seconds.append((time.monotonic(), cpu(self.process.pid)))
            self.samples += 1

    def stop(self) -> None:
        self._done.set()
        self.join()


def cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of the receiver process and of its ingest workers."""
    own, everything = ingest.cpu_seconds(pid), ingest.cpu_seconds(pid, with_children=True)
    return own, everything - own


def retry_info(error: Any) -> tuple[float | None, float | None]:
    """RetryInfo's delay from `grpc-status-details-bin` (read by Go and .NET clients, the
    Collector) and from `google.rpc.retryinfo-bin` (read by the Python SDK); None if absent."""
    trailers = dict(error.trailing_metadata() or ())
    details = python = None
    if raw := trailers.get("grpc-status-details-bin"):
        for detail in status_pb2.Status.FromString(raw).details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                details = info.retry_delay.ToTimedelta().total_seconds()
    if raw := trailers.get("google.rpc.retryinfo-bin"):
        info = error_details_pb2.RetryInfo.FromString(raw)
        python = info.retry_delay.ToTimedelta().total_seconds()
    return details, python


def stored_spans(url: str) -> tuple[int, int]:
    """(rows, duplicates) over the tables where every span of the payloads is one row."""
    with psycopg.connect(url) as conn:
        rows = [conn.execute(f"SELECT count(*), count(*) - count(DISTINCT (trace_id, span_id)) "
                             f"FROM {table}").fetchone() for table in SPAN_TABLES]  # fmt: skip
    return sum(r[0] for r in rows if r), sum(r[1] for r in rows if r)


def connections(endpoint: str, count: int) -> tuple[list[grpc.Channel], list[Any]]:
    """`count` channels with a TCP connection each, as separate senders have; and their Export."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    links = [grpc.insecure_channel(endpoint, options=options) for _ in range(count)]
    return links, [c.unary_unary(SPEC.export, request_serializer=None, response_deserializer=None) for c in links]  # fmt: skip


# --- phase 1: the sustainable rate ----------------------------------------------------------------
def sustainable_rate(endpoint: str, pid: int, payloads: list[bytes], streams: int, seconds: float) -> dict[str, Any]:  # fmt: skip
    """Closed loop: `streams` senders with one Export outstanding each."""
    issued, lock, stop = iter(range(len(payloads))), threading.Lock(), threading.Event()
    done: list[tuple[float, str]] = []

    def sender(export: Any) -> None:
        while not stop.is_set():
            with lock:
                i = next(issued, None)
            if i is None:
                return
            try:
                export(payloads[i], timeout=30)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name  # type: ignore[attr-defined]
            done.append((time.monotonic(), code))

    links, calls = connections(endpoint, streams)
    threads = [threading.Thread(target=sender, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    time.sleep(WARMUP_S)
    start, cpu_start = time.monotonic(), cpu(pid)
    time.sleep(seconds)
    end, cpu_end = time.monotonic(), cpu(pid)
    stop.set()
    for thread in threads:
        thread.join(60)
    for channel in links:
        channel.close()
    codes = collections.Counter(code for at, code in done if start <= at <= end)
    main, workers = ((b - a) / (end - start) for a, b in zip(cpu_start, cpu_end))
    return {"spans_per_s": codes["OK"] * ITEMS_PER_PAYLOAD / (end - start), "acked": codes["OK"],
            "codes": dict(codes), "exhausted": len(done) >= len(payloads), "cpu": (main, workers)}  # fmt: skip


# --- phase 2: the overload, open loop, retried until everything is stored -------------------------
@dataclass
class Overload:
    payloads: list[bytes]
    interval_s: float  # between new Exports
    seconds: float
    initial_backoff_s: float
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    attempts: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, answered, code)
    missing_retry_info: int = 0  # UNAVAILABLE without RetryInfo in both trailers
    bare_resource_exhausted: int = 0  # RESOURCE_EXHAUSTED without RetryInfo: a Collector drops it
    other_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    issued: int = 0  # new Exports sent
    acked: set[int] = field(default_factory=set)
    window: tuple[float, float] = (0.0, 0.0)
    drained_at: float | None = None

    def run(self, endpoint: str, streams: int, drain_timeout_s: float) -> None:
        links, calls = connections(endpoint, streams)
        answered: queue.Queue[tuple[int, float, Any, int]] = queue.Queue()
        due: list[tuple[float, int, int]] = []  # retries (when, payload, attempt), soonest first
        in_flight = sent = 0
        start = next_new = last_report = time.monotonic()
        self.window = (start, start + self.seconds)

        def send(i: int, attempt: int) -> None:
            nonlocal in_flight, sent
            future = calls[sent % len(calls)].future(self.payloads[i], timeout=ATTEMPT_TIMEOUT_S)
            sent, in_flight, at = sent + 1, in_flight + 1, time.monotonic()
            future.add_done_callback(lambda f: answered.put((i, at, f, attempt)))

        while True:
            now = time.monotonic()
            while now < self.window[1] and next_new <= now and self.issued < len(self.payloads):
                send(self.issued, 0)
                self.issued, next_new = self.issued + 1, next_new + self.interval_s
            while due and due[0][0] <= now:
                _, i, attempt = heapq.heappop(due)
                send(i, attempt)
            while not answered.empty():
                i, at, future, attempt = answered.get()
                in_flight -= 1
                if (wait := self._answer(i, at, future, attempt)) is not None:
                    heapq.heappush(due, (time.monotonic() + wait, i, attempt + 1))
            if now >= self.window[1] and not in_flight and not due:
                self.drained_at = now
                break
            if now > self.window[1] + drain_timeout_s:
                log(f"not drained {drain_timeout_s:g} s after the load stopped: {in_flight} in flight, "
                    f"{len(due)} waiting to be re-sent")  # fmt: skip
                break
            if now - last_report >= 5:
                last_report = now
                log(f"  t={now - start:5.1f}s: {self.issued} new, {len(self.acked)} acknowledged, {in_flight} "
                    f"in flight, {len(due)} waiting to be re-sent; answers {dict(self.answers)}")  # fmt: skip
            time.sleep(0.002)
        for channel in links:
            channel.close()

    def _answer(self, i: int, sent_at: float, future: Any, attempt: int) -> float | None:
        """Record an answer; the seconds to wait before re-sending, or None."""
        error = future.exception()
        code = "OK" if error is None else error.code().name
        self.attempts.append((sent_at, time.monotonic(), code))
        self.answers[code] += 1
        if error is None:
            self.acked.add(i)
            return None
        # The longer of RetryInfo's delay and a jittered exponential backoff (exporterhelper's
        # rule; --initial-backoff 0: the delay alone, as the Python SDK does); 0.5 s at least
        # when the answer has no delay.
        backoff = min(30.0, self.initial_backoff_s * 1.5**attempt) * random.uniform(0.5, 1.5)
        details, python = retry_info(error)
        wait = max(details, backoff) if details is not None else max(backoff, 0.5)
        if code == "UNAVAILABLE":
            self.missing_retry_info += details is None or python is None
            return wait
        if code == "RESOURCE_EXHAUSTED" and details is None:
            self.bare_resource_exhausted += 1
            return None
        if code in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED"):
            return wait
        self.other_failures[code] += 1  # not retryable: would be dropped
        return None


# --- report and main ------------------------------------------------------------------------------
def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else math.nan


def report(args: argparse.Namespace, rate: dict[str, Any], load: Overload, rss: RssSampler,
           rss_before: float, stored: int, duplicates: int) -> None:  # fmt: skip
    w0, w1 = load.window
    timed = [(answered - sent, code) for sent, answered, code in load.attempts if w0 <= sent <= w1]
    latencies = [latency for latency, _ in timed]
    ok = [latency for latency, code in timed if code == "OK"]
    acked = sum(1 for _, answered, code in load.attempts if code == "OK" and w0 <= answered <= w1)
    offered, sustained = (n * ITEMS_PER_PAYLOAD / args.seconds for n in (load.issued, acked))
    sent, p99 = load.issued * ITEMS_PER_PAYLOAD, percentile(latencies, 99)
    drain = f"{load.drained_at - w1:.1f} s" if load.drained_at else "NOT within --drain-timeout"
    size = len(load.payloads[0]) / 1e3 if load.payloads else 0
    main_cores, worker_cores = rss.cpu_cores(w0, w1)
    # fmt: off
    print("\n".join((
        f"\n== otel-bridge backpressure: {args.streams} streams, ingest workers {args.workers}, "
        f"{ITEMS_PER_PAYLOAD}-span requests of {size:.0f} kB",
        f"sustainable: {rate['spans_per_s']:9,.0f} spans/s closed loop ({rate['acked']} requests in "
        f"{args.measure_seconds:g} s, answers {rate['codes']}; CPU: receiver process {rate['cpu'][0]:.2f} "
        f"cores, ingest workers {rate['cpu'][1]:.2f})",
        f"offered    : {offered:9,.0f} spans/s open loop for {args.seconds:g} s ({load.issued} new requests, "
        f"{offered / max(rate['spans_per_s'], 1):.2f}x sustainable)",
        f"sustained  : {sustained:9,.0f} spans/s acknowledged during the overload (CPU: receiver process "
        f"{main_cores:.2f} cores, ingest workers {worker_cores:.2f})",
        f"answers    : {dict(load.answers)} over {len(load.attempts)} attempts, re-sends included",
        f"latency    : p50 {percentile(latencies, 50):.2f} s, p99 {p99:.2f} s per attempt sent in the "
        f"overload (OK only: p50 {percentile(ok, 50):.2f} s, p99 {percentile(ok, 99):.2f} s)",
        f"RSS        : max {rss.max_total:.0f} MiB receiver + ingest workers, {rss.max_main:.0f} MiB receiver "
        f"process ({rss_before:.0f} MiB before the overload; {rss.samples} samples)",
        f"drain      : everything stored {drain} after the load stopped",
        f"stored     : {stored:,} of {sent:,} spans sent ({len(load.acked)} of {load.issued} requests "
        f"acknowledged), {duplicates} duplicates",
    )))
    for name, value, target, passed in (
        ("RetryInfo", f"{load.missing_retry_info} of {load.answers['UNAVAILABLE']} UNAVAILABLE without it in "
         "both trailers", "0", load.missing_retry_info == 0),
        ("RES_EXH", f"{load.bare_resource_exhausted} bare RESOURCE_EXHAUSTED", "0", not load.bare_resource_exhausted),
        ("other", f"{dict(load.other_failures)} non-retryable answers", "{}", not load.other_failures),
        ("p99", f"{p99:.2f} s", f"<= {P99_TARGET_S:g} s", p99 <= P99_TARGET_S),
        ("RSS", f"{rss.max_total:.0f} MiB", f"<= {RSS_TARGET_MIB} MiB", rss.max_total <= RSS_TARGET_MIB),
        ("stored", f"{stored:,} = {sent:,}, {duplicates} duplicates", "stored = sent, 0 duplicates",
         stored == sent and not duplicates and load.drained_at is not None),
    ):
        print(f"{name:11s}: {value} (target {target}): {'PASS' if passed else 'FAIL'}")
    # fmt: on
    print(f"machine    : {machine_info()}")


# (flag, type, default, metavar, help)
OPTIONS: tuple[tuple[str, Any, Any, str | None, str], ...] = (
    ("--seconds", float, 30.0, None, "overload duration (default 30)"),
    ("--measure-seconds", float, 8.0, None, "closed-loop window (default 8)"),
    ("--streams", int, 4, None, "closed-loop senders, connections, and the receiver's concurrent exports (default 4)"),
    ("--factor", float, 2.0, None, "offered / sustainable rate (default 2)"),
    ("--workers", str, "auto", None, "OTEL_BRIDGE_INGEST_WORKERS (default auto = one per CPU)"),
    ("--max-queued", int, None, "N", "OTEL_BRIDGE_MAX_QUEUED_EXPORTS (default: the receiver's)"),
    ("--retry-after", float, None, "S", "OTEL_BRIDGE_RETRY_AFTER_S, RetryInfo's delay (default: the receiver's)"),
    ("--initial-backoff", float, 0.0, "S", "a refused Export waits the longer of RetryInfo's delay and this "
     "backoff, x1.5 per retry, 50%% jitter (default 0: the delay alone, as the Python SDK; the Collector: 5)"),
    ("--drain-timeout", float, 300.0, "S", "stop re-sending this long after the overload (default 300)"),
    ("--seed", int, 7, None, "workload seed (default 7)"),
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    for flag, kind, default, metavar, help_text in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=help_text)
    args = parser.parse_args(argv)
    if min(args.seconds, args.measure_seconds, args.streams, args.factor) <= 0:
        parser.error("--seconds, --measure-seconds, --streams and --factor must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    for value, env in ((args.max_queued, "OTEL_BRIDGE_MAX_QUEUED_EXPORTS"),
                       (args.retry_after, "OTEL_BRIDGE_RETRY_AFTER_S")):  # fmt: skip
        if value is not None:
            os.environ[env] = str(value)  # start_receiver passes the environment on
    root = Path(tempfile.mkdtemp(prefix="otel-bridge-backpressure-"))
    server: Any = None
    receiver = None
    log(f"machine: {machine_info()}")
    try:
        log("starting embedded PostgreSQL and migrating a fresh database")
        server, url = ingest.start_postgres(root)
        closed = math.ceil((args.measure_seconds + WARMUP_S) * SPEC.expected_max_items_per_s / ITEMS_PER_PAYLOAD)  # fmt: skip
        log(f"pre-encoding {closed} distinct {ITEMS_PER_PAYLOAD}-span payloads for the closed loop")
        pool = SPEC.build(closed, args.seed)
        receiver, endpoint, receiver_log = ingest.start_receiver(url, root, secrets.token_hex(16), args.streams,
                                                                 args.workers)  # fmt: skip
        ingest.wait_serving(receiver, endpoint)
        log(f"receiver pid {receiver.pid} SERVING on {endpoint}; closed loop: {args.streams} streams, "
            f"{WARMUP_S:g} s warm-up + {args.measure_seconds:g} s")  # fmt: skip
        rate = sustainable_rate(
            endpoint, receiver.pid, pool.payloads, args.streams, args.measure_seconds
        )
        log(f"sustainable: {rate['spans_per_s']:,.0f} spans/s (answers {rate['codes']})")
        if rate["exhausted"]:
            log("note: the closed loop ran out of payloads: the rate is a lower bound")
        per_s = args.factor * rate["spans_per_s"] / ITEMS_PER_PAYLOAD
        count = math.ceil(per_s * args.seconds) + 1
        log(f"pre-encoding {count} more payloads: {args.factor:g}x = {per_s:.1f} requests/s for {args.seconds:g} s")  # fmt: skip
        payloads = SPEC.build(closed + count, args.seed).payloads[closed:]  # none sent before
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE " + ", ".join(SPEC.tables + SPEC.derived_tables))
        rss = RssSampler(receiver.pid)
        rss_before = rss.sample()[0]
        rss.start()
        load = Overload(payloads, 1.0 / per_s, args.seconds, args.initial_backoff)
        log(f"overload: {per_s:.1f} requests/s open loop over {args.streams} connections; refused "
            "requests are re-sent until stored")  # fmt: skip
        load.run(endpoint, args.streams, args.drain_timeout)
        rss.stop()
        stored, duplicates = stored_spans(url)
        lines = receiver_log.read_text(errors="replace").strip().splitlines()
        log(f"receiver logged {len(lines)} lines" + (f", the last: {lines[-1][:200]}" if lines else ""))  # fmt: skip
        report(args, rate, load, rss, rss_before, stored, duplicates)
        return 0
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        ingest.stop_process(receiver, "receiver")
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
