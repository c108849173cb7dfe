"""Ack only after COMMIT, also when the database is slower than the sender's deadline
(research/reliability.md §6 test 3).

The injected latency sits inside COMMIT itself (`slow_commit.py`): an answer sent before COMMIT
would reach the sender seconds before the rows are visible. Each transaction's logged commit time
is compared with the time the sender received each OK.

Pass: every OK was received after its batch's commit and with the rows visible; senders that
timed out retried; missing = 0 and duplicates = 0 after recovery.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.reliability.export_stream import (
    SPANS_PER_BATCH,
    ExportStream,
    batch_route,
    committed_batches,
    stored_spans,
)
from tests.reliability.slow_commit import install_slow_commit, set_commit_latency


@pytest.mark.parametrize("workers", ["2", "0"], ids=["worker-processes", "in-process"])
def test_ok_only_after_commit_when_commits_outlast_the_deadline(
    workers: str, db_url: str, start_bridge: Any, long_run: bool
) -> None:
    # §6: 6 s of latency over the Collector's 5 s timeout, for 30 s. CI: 2.5 s over 1.5 s, for 4 s.
    latency_s, deadline_s, window_s = (6.0, 5.0, 30.0) if long_run else (2.5, 1.5, 4.0)
    install_slow_commit(db_url)
    bridge = start_bridge(
        db_url, OTEL_BRIDGE_INGEST_WORKERS=workers, OTEL_BRIDGE_RETRY_AFTER_S="0.2"
    )
    stream = ExportStream(
        bridge.endpoint, senders=4, attempt_timeout_s=deadline_s, pace_s=0.05, check_url=db_url
    )
    try:
        stream.start()
        stream.wait_acked(20)
        set_commit_latency(db_url, latency_s)
        time.sleep(window_s)
        set_commit_latency(db_url, 0)
        stream.wait_acked(len(stream.acked) + 20)
        stream.finish()
    finally:
        stream.close()

    stored, duplicates = stored_spans(db_url)
    with psycopg.connect(db_url) as conn:
        commits = conn.execute(
            "SELECT endpoint_path, count(*), extract(epoch FROM min(committed_at)) FROM fault_commit_log "
            "GROUP BY endpoint_path"
        ).fetchall()  # fmt: skip
    committed_at = {path: float(at) for path, _, at in commits}
    oks = [a for a in stream.attempts if a.code == "OK"]
    early = [
        a for a in oks if not committed_at.get(batch_route(a.batch), float("inf")) < a.answered_wall
    ]
    timed_out = {a.batch for a in stream.attempts if a.code == "DEADLINE_EXCEEDED"}
    print(f"\nack after commit ({workers} workers): {stream.summary()}; timed-out batches={len(timed_out)}; "
          f"OKs before their commit={len(early)}; stored={stored} duplicates={duplicates}")  # fmt: skip

    assert timed_out, "the injected latency must outlast the senders' deadline"
    assert timed_out <= stream.acked and not stream.given_up  # the timed-out senders retried
    assert not early and not stream.not_committed_on_ok
    assert all(n == 1 for _, n, _ in commits), "each batch is committed by exactly one transaction"
    assert set(stream.codes) <= {"OK", "DEADLINE_EXCEEDED", "UNAVAILABLE"}, stream.codes
    assert committed_batches(db_url) == set(range(stream.sent_batches))  # missing = 0
    assert (stored, duplicates) == (stream.sent_batches * SPANS_PER_BATCH, 0)
