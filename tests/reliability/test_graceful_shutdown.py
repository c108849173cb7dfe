"""SIGTERM under load (research/reliability.md §6 test 15, shutdown part).

`otel-bridge serve` runs as its own process, as in production, while Collector-like senders stream
Exports into it; it gets SIGTERM mid-stream. Pass: it exits 0 within 10 s; every OK-acked span
is in the database (0 acked-but-uncommitted: checked when each OK arrives and again once the
process is gone); every Export got OK or UNAVAILABLE (no other code, no hang); then a new
`serve` on the same port takes the senders' retries, and stored = sent with 0 duplicates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.export_stream import (
    SPANS_PER_BATCH,
    Attempt,
    ExportStream,
    committed_batches,
    stored_spans,
)
from tests.reliability.receiver_process import free_port, wait_serving
from tests.reliability.slow_commit import install_slow_commit, set_commit_latency

EXIT_LIMIT_S = 10.0


def _serve(
    db_url: str, data_dir: Path, port: int, workers: str | None, log: Path, **extra: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OTEL_BRIDGE_DATABASE_URL": db_url,
        "OTEL_BRIDGE_GRPC_LISTEN": f"127.0.0.1:{port}",
        "OTEL_BRIDGE_HTTP_LISTEN": "127.0.0.1:0",
        "OTEL_BRIDGE_DATA_DIR": str(data_dir),
        "OTEL_BRIDGE_MAINTENANCE_INTERVAL_S": "0",
        "OTEL_BRIDGE_IP_HASH_KEY": "test-key-0123456789abcdef",
        "OTEL_BRIDGE_RETRY_AFTER_S": "0.5",
        **extra,
    }
    env.pop("OTEL_BRIDGE_INGEST_WORKERS", None)
    if workers is not None:
        env["OTEL_BRIDGE_INGEST_WORKERS"] = workers
    with log.open("ab") as out:
        # Its own session: a signal meant for the test runner's group must not reach it.
        return subprocess.Popen([str(Path(sys.executable).parent / "otel-bridge"), "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _terminate(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM to the receiver's main process (as `docker stop` or `kill` would), then wait; the
    exit code and how long the shutdown took."""
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("serve did not exit within 60 s of SIGTERM") from None
    return code, time.monotonic() - sent


@dataclass
class Shutdown:
    """What a SIGTERM mid-stream did, and what the senders saw until a second `serve` took over."""

    exit_code: int
    exit_s: float
    signalled: float  # time.monotonic() of the SIGTERM
    acked_before_exit: set[int]
    committed_at_exit: set[int]
    in_flight: list[Attempt]  # sent before the SIGTERM, answered after it
    second_exit_code: int
    stream: ExportStream
    log: Path

    def summary(self, db_url: str) -> str:
        stored, duplicates = stored_spans(db_url)
        answered = sorted(round(a.answered_at - self.signalled, 2) for a in self.in_flight)
        return (f"exit {self.exit_code} after {self.exit_s:.2f} s; in flight at SIGTERM: "
                f"{[a.code for a in self.in_flight]}, answered {answered} s after it; acked before exit="
                f"{len(self.acked_before_exit)} batches, acked but not committed="
                f"{len(self.acked_before_exit - self.committed_at_exit)}; {self.stream.summary()}; "
                f"stored={stored} duplicates={duplicates}; second serve exit {self.second_exit_code}")  # fmt: skip


def _sigterm_mid_stream(
    db_url: str,
    tmp_path: Path,
    workers: str | None,
    stream: Callable[[str], ExportStream],
    warm_up: Callable[[ExportStream], None],
    after_exit: Callable[[], None] = lambda: None,
    **serve_env: str,
) -> Shutdown:
    """`serve` under a stream of Exports gets SIGTERM once `warm_up` returns; then a new `serve`
    on the same port takes the senders' retries until every batch is acknowledged."""
    port, log = free_port(), tmp_path / "serve.log"
    receivers = [_serve(db_url, tmp_path, port, workers, log, **serve_env)]
    senders = stream(f"127.0.0.1:{port}")
    try:
        wait_serving(receivers[0], f"127.0.0.1:{port}", log, 60.0)
        senders.start()
        warm_up(senders)
        signalled = time.monotonic()
        exit_code, exit_s = _terminate(receivers[0])
        acked_before_exit = set(senders.acked)
        committed_at_exit = committed_batches(db_url)
        in_flight = [a for a in list(senders.attempts) if a.sent_at < signalled < a.answered_at]
        after_exit()

        receivers.append(_serve(db_url, tmp_path, port, workers, log))
        wait_serving(receivers[1], f"127.0.0.1:{port}", log, 60.0)
        senders.wait_acked(len(acked_before_exit) + 20)
        senders.finish()
        second_exit_code, _ = _terminate(receivers[1])
    finally:
        senders.close()
        for process in receivers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    return Shutdown(exit_code, exit_s, signalled, acked_before_exit, committed_at_exit, in_flight,
                    second_exit_code, senders, log)  # fmt: skip


def _assert_nothing_lost(result: Shutdown, db_url: str) -> None:
    stream = result.stream
    assert result.exit_code == 0 and result.exit_s <= EXIT_LIMIT_S, result.log.read_text()[-3000:]
    assert result.acked_before_exit <= result.committed_at_exit and not stream.not_committed_on_ok
    # The Exports in flight when SIGTERM came finish or are answered UNAVAILABLE.
    assert {a.code for a in result.in_flight} <= {"OK", "UNAVAILABLE"}, result.in_flight
    # The receiver drains before its transports stop, so Exports sent during the shutdown reach a
    # handler and get UNAVAILABLE (0 CANCELLED in 18 runs). One that arrives in the instant grpc
    # stops could still be CANCELLED before any handler runs: nothing of it was stored, and OTLP
    # lists CANCELLED among the retryable codes, so the sender re-sends it (`given_up` stays empty).
    assert set(stream.codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, stream.codes
    assert not stream.given_up
    assert committed_batches(db_url) == set(range(stream.sent_batches))
    assert stored_spans(db_url) == (stream.sent_batches * SPANS_PER_BATCH, 0)  # stored, duplicates
    assert result.second_exit_code == 0


@pytest.mark.parametrize("workers", ["0", None], ids=["in-process", "worker-processes"])
def test_sigterm_mid_stream_loses_no_acked_span_and_a_restart_takes_the_retries(
    workers: str | None, db_url: str, tmp_path: Path, long_run: bool
) -> None:
    result = _sigterm_mid_stream(
        db_url, tmp_path, workers,
        lambda target: ExportStream(target, senders=8 if long_run else 4, check_url=db_url, give_up_after_s=120),
        lambda stream: stream.wait_acked(300 if long_run else 30),
    )  # fmt: skip
    print(f"\ngraceful shutdown (ingest workers {workers or 'default'}): {result.summary(db_url)}")
    _assert_nothing_lost(result, db_url)


@pytest.mark.parametrize("workers", ["0", None], ids=["in-process", "worker-processes"])
def test_sigterm_during_slow_commits_answers_unavailable_when_the_grace_period_ends(
    workers: str | None, db_url: str, tmp_path: Path
) -> None:
    """Commits take 3 s and the grace period is 1 s: the Exports in flight at SIGTERM are
    answered UNAVAILABLE after the grace period instead of OK after their commit, the process
    still exits 0 within 10 s, and their retries (some of which re-send batches that committed
    after the answer) store everything exactly once."""
    grace_s, latency_s = 1.0, 3.0
    install_slow_commit(db_url)

    def warm_up(stream: ExportStream) -> None:
        stream.wait_acked(10)
        set_commit_latency(db_url, latency_s)
        time.sleep(1.0)  # every sender now waits in a 3 s commit

    result = _sigterm_mid_stream(
        db_url, tmp_path, workers,
        lambda target: ExportStream(target, senders=4, attempt_timeout_s=10.0, check_url=db_url, give_up_after_s=120),
        warm_up, lambda: set_commit_latency(db_url, 0), OTEL_BRIDGE_SHUTDOWN_GRACE_S=str(grace_s),
    )  # fmt: skip
    print(f"\nSIGTERM during {latency_s} s commits, grace {grace_s} s (ingest workers {workers or 'default'}): "
          f"{result.summary(db_url)}")  # fmt: skip
    _assert_nothing_lost(result, db_url)
    unavailable = [a for a in result.in_flight if a.code == "UNAVAILABLE"]
    # Answered when the grace period ended, not when their 3 s commit did.
    assert unavailable, result.in_flight
    assert all(a.answered_at - result.signalled < grace_s + 1.5 for a in unavailable), result.in_flight
