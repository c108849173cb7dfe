"""The receivers' "sender will retry" warning is rate-limited per reason, and counts what it held back."""

from __future__ import annotations

import logging

import pytest

from otel_bridge.receiver import status
from otel_bridge.receiver.status import RetryLog


def test_one_line_per_reason_and_interval_with_the_suppressed_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: now[0])
    retry_log = RetryLog(logging.getLogger("test.retry"), interval_s=10.0)
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        for _ in range(500):
            retry_log.warning("TraceService", "receiver overloaded")
        retry_log.warning("LogsService", "database unavailable")  # another reason: its own line
        now[0] += 10.0
        retry_log.warning("TraceService", "receiver overloaded")
    assert [r.getMessage() for r in caplog.records] == [
        "TraceService export not stored, sender will retry: receiver overloaded",
        "LogsService export not stored, sender will retry: database unavailable",
        "TraceService export not stored, sender will retry: receiver overloaded (499 more since the last such line)",
    ]
