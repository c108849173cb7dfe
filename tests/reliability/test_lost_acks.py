"""Lost acks are retried without duplicates (research/reliability.md §6 test 2).

A proxy between the senders and the receiver loses 2 % of the Export answers after the receiver
committed; the senders re-send those batches, which are already stored. Pass: missing = 0 and
duplicates = 0. A control run on a table without its primary key shows exactly 100 duplicate rows
per lost answer, which proves the counts can see duplicates at all.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.reliability.export_stream import (
    SPANS_PER_BATCH,
    ExportStream,
    committed_batches,
    stored_spans,
)
from tests.reliability.tcp_proxy import ResponseDroppingProxy


def _batches(long_run: bool) -> int:
    return 600 if long_run else 100  # §6: 60,000 spans; CI: 10,000


@pytest.mark.parametrize(
    ("protocol", "primary_key"),
    [("grpc", True), ("http", True), ("grpc", False)],
    ids=["grpc", "http", "control-without-pk"],
)
def test_answers_lost_after_commit_are_resent_without_duplicates(
    protocol: str, primary_key: bool, db_url: str, start_bridge: Any, long_run: bool
) -> None:
    if not primary_key:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE api_performance_metrics DROP CONSTRAINT api_performance_metrics_pkey"
            )
    bridge = start_bridge(db_url, OTEL_BRIDGE_RETRY_AFTER_S="0.2")
    port = bridge.port if protocol == "grpc" else int(bridge.http_endpoint.rsplit(":", 1)[1])
    proxy = ResponseDroppingProxy(port, "h2" if protocol == "grpc" else "http1", drop_every=50)
    # The control gives each sender its own connection, so that a lost answer fails exactly one
    # committed Export; otherwise senders share one, as a Collector's consumers do, and a lost
    # connection also fails the Exports still in flight, which commit after it.
    stream = ExportStream(proxy.endpoint, protocol=protocol, senders=4, own_connections=not primary_key,
                          check_url=db_url)  # fmt: skip
    try:
        stream.start()
        stream.wait_acked(_batches(long_run))
        stream.finish()
    finally:
        stream.close()
        proxy.close()

    stored, duplicates = stored_spans(db_url)
    sent = stream.sent_batches * SPANS_PER_BATCH
    print(f"\nlost acks ({protocol}, primary key {primary_key}): {stream.summary()}; answers={proxy.responses} "
          f"dropped={proxy.dropped}; stored={stored} duplicates={duplicates}")  # fmt: skip
    assert proxy.dropped > 0 and not stream.given_up
    # Answers were lost after COMMIT: those batches were re-sent although already stored.
    assert stream.resent_committed >= proxy.dropped
    assert committed_batches(db_url) == set(range(stream.sent_batches))  # missing = 0
    assert set(stream.codes) <= {"OK", "UNAVAILABLE", "DISCONNECTED"}, stream.codes
    assert not stream.not_committed_on_ok
    if primary_key:
        assert (stored, duplicates) == (sent, 0)
    else:
        assert (
            duplicates
            == proxy.dropped * SPANS_PER_BATCH
            == stream.resent_committed * SPANS_PER_BATCH
        )
        assert stored == sent + duplicates
