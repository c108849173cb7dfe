"""Dashboard queries on raw rows against the daily rollups, and insert latency while retention
drops a partition, on a throwaway embedded PostgreSQL, in one run.

    .venv/bin/python benchmarks/queries.py [--rows 10000000] [--repeat 5] [--check] [--keep]

1. Starts an embedded PostgreSQL in a temporary directory and migrates it.
2. Generates --rows `api_performance_metrics` rows and --rows/10 `user_page_views` rows over the
   last 90 days, server-side (`INSERT ... SELECT ... FROM generate_series`, 1M rows a statement,
   in time order like real ingest) into real monthly partitions: 30 endpoint paths (40 routes, 5
   methods, popularity skewed), 3 services, 2 environments, 5,000 users with a fixed role (8
   roles, skewed), lognormal response times with a 1% slow tail, 2% 5xx. Then VACUUM ANALYZE.
3. Times `rollups.refresh` for the 90 days.
4. Times two dashboard queries for the last 30 days, raw then rollup, interleaved, --repeat
   times (medians): p95 response time by endpoint, and daily active users. Target: raw/rollup
   >= 20x (PASS/FAIL is information; --check makes a FAIL exit 1). The rollup DAU must equal
   the raw DAU exactly (exit 1 otherwise); the rollup p95 is an approximation, its error is
   printed.
5. Fills an expired monthly partition (5 months back), then runs `maintenance.run` (90-day raw
   retention: it detaches and drops that partition) while a writer commits 50-row inserts 50
   times a second and a reader runs the raw p95 query on the parent table back to back. Prints
   commit latency before, during and after maintenance, and any DETACH retry.

Progress goes to stderr, the result block to stdout. The data directory is removed at the end
(also on Ctrl-C or SIGTERM) unless --keep.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from otel_bridge import maintenance, rollups
from otel_bridge.database import EmbeddedPostgres, migrate

sys.path.insert(0, str(Path(__file__).parent))  # when imported rather than run as a script
from queries_data import (  # noqa: E402
    AFTER_S,
    BASELINE_S,
    DAYS,
    EXPIRED_API_ROWS,
    EXPIRED_MONTHS_BACK,
    EXPIRED_PAGE_VIEWS,
    P95_RAW,
    PANELS,
    ROLE_SLOTS,
    ROUTES,
    TARGET_SPEEDUP,
    USERS,
    WINDOW_DAYS,
    WRITE,
    WRITER_BATCH,
    WRITER_INTERVAL_S,
    WRITER_WARMUP_S,
    Generated,
    connect,
    generate,
    generate_all,
    log,
    machine_info,
)


# --- steps 3 and 4: rollups and the dashboard queries -------------------------------------------
def build_rollups(conn: Any, now: datetime) -> tuple[float, dict[str, int]]:
    first, end = (now - timedelta(days=DAYS)).date(), now.date() + timedelta(days=1)
    log(f"rollups.refresh for {first}..{end - timedelta(days=1)}")
    began = time.perf_counter()
    written = rollups.refresh(conn, first, end)
    took = time.perf_counter() - began
    # Autovacuum would analyze the freshly filled rollups soon after; without statistics the
    # planner would guess their size.
    conn.execute("ANALYZE " + ", ".join(rollups.ROLLUPS))
    return took, written


def window(now: datetime) -> dict[str, Any]:
    """The last WINDOW_DAYS whole UTC days (today included), as timestamps and as days."""
    to_day = now.date() + timedelta(days=1)
    from_day = to_day - timedelta(days=WINDOW_DAYS)
    as_ts = lambda d: datetime(d.year, d.month, d.day, tzinfo=timezone.utc)  # noqa: E731
    return {"from_day": from_day, "to_day": to_day, "from_ts": as_ts(from_day), "to_ts": as_ts(to_day)}


@dataclass
class Panel:
    raw_ms: list[float] = field(default_factory=list)
    rollup_ms: list[float] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)
    rollup: list[Any] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return statistics.median(self.raw_ms) / max(statistics.median(self.rollup_ms), 1e-6)


def time_panels(conn: Any, params: dict[str, Any], repeat: int) -> dict[str, Panel]:
    """Raw, rollup, raw, rollup...: both see the same cache state and machine noise."""
    panels = {name: Panel() for name in PANELS}
    for run in range(1, repeat + 1):
        for name, (raw_sql, rollup_sql) in PANELS.items():
            panel = panels[name]
            for sql_text, times, kind in ((raw_sql, panel.raw_ms, "raw"), (rollup_sql, panel.rollup_ms, "rollup")):
                began = time.perf_counter()
                rows = conn.execute(sql_text, params).fetchall()
                times.append((time.perf_counter() - began) * 1000)
                setattr(panel, kind, rows)
            log(f"  run {run}/{repeat} {name}: raw {panel.raw_ms[-1]:.1f} ms, rollup {panel.rollup_ms[-1]:.1f} ms")
    return panels


def p95_errors(panel: Panel) -> list[tuple[float, str, float, float]]:
    """Relative error of the rollup p95 against the exact one per endpoint, worst first:
    (error, endpoint, exact, rollup); an endpoint missing from the rollup counts as infinite."""
    rollup = {endpoint: float(value) for endpoint, value in panel.rollup}
    out = []
    for endpoint, exact in panel.raw:
        approx = rollup.get(endpoint)
        error = float("inf") if approx is None else abs(approx - exact) / exact if exact else 0.0
        out.append((error, endpoint, float(exact), float("nan") if approx is None else approx))
    return sorted(out, reverse=True)


# --- step 5: retention under load -----------------------------------------------------------------
class Writer(threading.Thread):
    """Commits a 50-row INSERT every WRITER_INTERVAL_S, like a loaded receiver; records latencies."""

    def __init__(self, url: str) -> None:
        super().__init__(name="writer", daemon=True)
        self.url, self.stop = url, threading.Event()
        self.commits: list[tuple[float, float]] = []  # (perf_counter at start, latency ms)
        self.error: BaseException | None = None
        self.rng = random.Random(7)

    def batch(self) -> list[list[Any]]:
        now = datetime.now(timezone.utc)
        picked = self.rng.choices(ROUTES[:12], k=WRITER_BATCH)  # the popular routes
        users = [self.rng.randrange(USERS) for _ in picked]
        return [[r[1] for r in picked], [r[0] for r in picked], [now] * len(picked),
                [round(r[2] * self.rng.lognormvariate(0, 0.5), 2) for r in picked],
                [f"user-{u:05d}" for u in users], [ROLE_SLOTS[u * 37 % 100] for u in users],
                [r[3] for r in picked]]  # fmt: skip

    def run(self) -> None:
        try:
            with connect(self.url) as conn:
                next_at = time.perf_counter()
                while not self.stop.is_set():
                    params = self.batch()
                    began = time.perf_counter()
                    conn.execute(WRITE, params)
                    self.commits.append((began, (time.perf_counter() - began) * 1000))
                    # A stalled commit is not made up for with a burst: keep the pace from now.
                    next_at = max(next_at + WRITER_INTERVAL_S, time.perf_counter())
                    self.stop.wait(next_at - time.perf_counter())
        except BaseException as exc:  # reported in the result block
            self.error = exc


class Reader(threading.Thread):
    """Runs the raw p95 dashboard query on the parent table back to back: the worst case for
    DETACH, whose ACCESS EXCLUSIVE lock on the parent must wait for each running SELECT."""

    def __init__(self, url: str, params: dict[str, Any]) -> None:
        super().__init__(name="reader", daemon=True)
        self.url, self.params, self.stop = url, params, threading.Event()
        self.queries: list[tuple[float, float]] = []  # (perf_counter at start, seconds)
        self.conn: psycopg.Connection[Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.url) as conn:
                self.conn = conn
                while not self.stop.is_set():
                    began = time.perf_counter()
                    try:
                        conn.execute(P95_RAW, self.params).fetchall()
                    except psycopg.errors.QueryCanceled:
                        break  # our own cancel at the end
                    self.queries.append((began, time.perf_counter() - began))
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        if self.conn is not None and self.is_alive():
            self.conn.cancel_safe(timeout=5)  # do not wait seconds for the last query
        self.join(timeout=30)


class Captured(logging.Handler):
    """Keeps the maintenance log lines (DETACH retries are logged at INFO) with their times."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.perf_counter(), record.getMessage()))
        log(f"  maintenance log: {record.getMessage()}")


@dataclass
class Retention:
    windows: dict[str, list[float]] = field(default_factory=dict)
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (s after maintenance start, ms)
    maintenance_s: float = 0.0
    report: maintenance.MaintenanceReport | None = None
    error: str = ""
    retries: list[tuple[float, str]] = field(default_factory=list)
    reader_s: list[float] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def fill_expired(conn: Any, now: datetime) -> list[str]:
    """A month partition past the 90-day raw retention, per table, with rows in it."""
    month = now.date().replace(day=1)
    for _ in range(EXPIRED_MONTHS_BACK):
        month = (month - timedelta(days=1)).replace(day=1)
    start = datetime(month.year, month.month, 1, tzinfo=timezone.utc)
    end = datetime.combine((month + timedelta(days=32)).replace(day=1), datetime.min.time(), timezone.utc)
    names = []
    for table, rows in (("user_page_views", EXPIRED_PAGE_VIEWS), ("api_performance_metrics", EXPIRED_API_ROWS)):
        conn.execute("SELECT otel_bridge_partition_month(%s, %s)", (table, month))
        generate(conn, table, start, end, rows)
        names.append(f"{table}_p{month:%Y%m}")
    return names


def retention_under_load(url: str, conn: Any, params: dict[str, Any]) -> Retention:
    out = Retention()
    log(f"filling expired partitions ({EXPIRED_MONTHS_BACK} months back)")
    out.expired = fill_expired(conn, datetime.now(timezone.utc))
    conn.execute("CHECKPOINT")  # the load's dirty pages are not flushed during the latency windows
    captured = Captured()
    mlog = logging.getLogger(maintenance.__name__)
    mlog.addHandler(captured)
    mlog.setLevel(logging.INFO)
    writer, reader = Writer(url), Reader(url, params)
    try:
        began = time.perf_counter()
        writer.start()
        reader.start()
        log(f"writer ({WRITER_BATCH}-row commits every {WRITER_INTERVAL_S * 1000:.0f} ms) and reader (raw p95 "
            f"query back to back) running; {BASELINE_S:g} s baseline")  # fmt: skip
        writer.stop.wait(WRITER_WARMUP_S + BASELINE_S)
        log(f"maintenance.run(raw_days={DAYS}) while both keep going")
        m_start = time.perf_counter()
        try:
            out.report = maintenance.run(url, maintenance.MaintenanceSettings(raw_days=DAYS))
        except Exception as exc:  # e.g. "could not detach ...: the table stayed busy"
            out.error = f"{type(exc).__name__}: {exc}"
            log(f"  maintenance failed: {out.error}")
        m_end = time.perf_counter()
        out.maintenance_s = m_end - m_start
        for line in out.report.lines() if out.report else []:
            log(f"  {line}")
        log(f"maintenance done in {out.maintenance_s:.1f} s; {AFTER_S:g} s more")
        writer.stop.wait(AFTER_S)
    finally:
        writer.stop.set()
        reader.finish()
        writer.join(timeout=30)
        mlog.removeHandler(captured)
    bounds = {"before": (began + WRITER_WARMUP_S, m_start), "during": (m_start, m_end), "after": (m_end, float("inf"))}
    out.windows = {name: [ms for t, ms in writer.commits if lo <= t < hi] for name, (lo, hi) in bounds.items()}
    out.stalls = [(t - m_start, ms) for t, ms in writer.commits if ms >= 100]
    out.retries = [(t - m_start, msg) for t, msg in captured.records if "waited too long" in msg]
    out.reader_s = [s for _, s in reader.queries]
    out.problems = [f"{name} failed: {type(e).__name__}: {e}" for name, e in (("writer", writer.error),
                    ("reader", reader.error)) if e is not None]  # fmt: skip
    return out


# --- the result block -----------------------------------------------------------------------------
def latency(values: list[float]) -> str:
    if not values:
        return "no commits"
    p99 = statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]
    return f"{len(values):4d} commits, p50 {statistics.median(values):6.1f} ms, p99 {p99:7.1f} ms, max {max(values):7.1f} ms"


def report(args: argparse.Namespace, gen: Generated, rollup_s: float, written: dict[str, int],
           panels: dict[str, Panel], dau_ok: bool, ret: Retention) -> bool:  # fmt: skip
    """Print the result block; True when every speedup meets the target."""
    print(f"\n== otel-bridge dashboard queries: {gen.api_rows:,} API rows + {gen.page_views:,} page views "
          f"over {DAYS} days; panels over the last {WINDOW_DAYS} days, median of {args.repeat}")
    print(f"generation : api_performance_metrics {gen.api_s:.1f} s ({gen.api_rows / gen.api_s:,.0f} rows/s), "
          f"user_page_views {gen.page_views_s:.1f} s ({gen.page_views / gen.page_views_s:,.0f} rows/s), "
          f"indexes {gen.index_s:.1f} s, VACUUM ANALYZE {gen.vacuum_s:.1f} s")
    print(f"on disk    : api_performance_metrics {gen.api_bytes / 2**20:,.0f} MiB, user_page_views "
          f"{gen.page_view_bytes / 2**20:,.0f} MiB (indexes included)")
    rows = ", ".join(f"{table} {n:,}" for table, n in written.items())
    print(f"rollups    : refresh of {DAYS + 1} days in {rollup_s:.1f} s ({rows} rows)")
    passed = True
    for name, panel in panels.items():
        ok = panel.speedup >= TARGET_SPEEDUP
        passed &= ok
        print(f"{name:15s}: raw {statistics.median(panel.raw_ms):9.1f} ms, rollup {statistics.median(panel.rollup_ms):7.1f} ms, "
              f"speedup {panel.speedup:7.1f}x (target >= {TARGET_SPEEDUP:g}x): {'PASS' if ok else 'FAIL'}")  # fmt: skip
    errors = p95_errors(panels["p95 by endpoint"])
    error, endpoint, exact, approx = errors[0]
    print(f"p95 accuracy   : request-weighted mean of daily p95s vs exact p95 over {len(errors)} endpoints: "
          f"max error {error:.1%} ({endpoint}: exact {exact:.1f} ms, rollup {approx:.1f} ms), median "
          f"{statistics.median(e for e, *_ in errors):.1%}, {sum(e > 0.1 for e, *_ in errors)} above 10%")
    days = len(panels["DAU"].raw)
    print(f"DAU check      : rollup {'equals' if dau_ok else 'DIFFERS FROM'} raw on {days} days "
          f"(raw DAU {min(n for _, n in panels['DAU'].raw):,}-{max(n for _, n in panels['DAU'].raw):,})")
    print(f"retention      : maintenance.run {ret.maintenance_s:.1f} s, expired partitions dropped: "
          f"{', '.join(ret.report.partitions_dropped) if ret.report else 'none'}"
          f"{'; FAILED ' + ret.error if ret.error else ''}")
    for name, values in ret.windows.items():
        print(f"  commits {name:6s}: {latency(values)}")
    retries = "; ".join(f"+{t:.1f} s {msg}" for t, msg in ret.retries) or "none"
    print(f"  DETACH retries: {len(ret.retries)} ({retries})")
    stalls = ", ".join(f"+{t:.1f} s {ms:.0f} ms" for t, ms in ret.stalls) or "none"
    print(f"  commits >= 100 ms (s after maintenance start): {stalls}")
    if ret.reader_s:
        print(f"  reader: {len(ret.reader_s)} raw p95 queries on the parent, median {statistics.median(ret.reader_s):.1f} s, "
              f"max {max(ret.reader_s):.1f} s")  # fmt: skip
    for problem in ret.problems:
        print(f"  {problem}")
    print(f"machine        : {machine_info()}")
    return passed


# --- main -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000,
                        help="api_performance_metrics rows over 90 days; page views are a tenth (default 10,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each query, median (default 5)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a speedup is below the target")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and print its path")
    args = parser.parse_args(argv)
    if args.rows < 1000 or args.repeat < 1:
        parser.error("--rows must be >= 1000 and --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    root = Path(tempfile.mkdtemp(prefix="otel-bridge-queries-"))
    server = EmbeddedPostgres(root)
    log(f"machine: {machine_info()}")
    try:
        log(f"starting embedded PostgreSQL in {root} and migrating")
        url = server.start()
        migrate(url)
        with connect(url) as conn:
            # A bulk load of gigabytes: avoid a checkpoint every 1 GB of WAL (the default).
            conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
            conn.execute("SELECT pg_reload_conf()")
            now = datetime.now(timezone.utc)
            gen = generate_all(conn, args.rows, now)
            rollup_s, written = build_rollups(conn, now)
            log(f"rollups built in {rollup_s:.1f} s: {written}")
            conn.execute("CHECKPOINT")
            params = window(now)
            log(f"timing the panels for {params['from_day']}..{params['to_day'] - timedelta(days=1)}, {args.repeat} runs")
            panels = time_panels(conn, params, args.repeat)
            for error, endpoint, exact, approx in p95_errors(panels["p95 by endpoint"]):
                if error > 0.1:  # the paths whose methods differ in speed, mostly
                    log(f"  rollup p95 off by {error:.1%}: {endpoint} (exact {exact:.1f} ms, rollup {approx:.1f} ms)")
            dau_ok = [(d, int(n)) for d, n in panels["DAU"].raw] == [(d, int(n)) for d, n in panels["DAU"].rollup]
            ret = retention_under_load(url, conn, params)
        passed = report(args, gen, rollup_s, written, panels, dau_ok, ret)
        if not dau_ok:
            print("DAU rollup differs from the raw DAU: a rollup bug", file=sys.stderr)
            return 1
        return 1 if args.check and not passed else 0
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        server.stop()
        if args.keep:
            print(f"data kept in {root} (EmbeddedPostgres(Path('{root}')).start() serves it again)")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
