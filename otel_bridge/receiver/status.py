"""One table from otel-bridge errors to OTLP/gRPC statuses (DESIGN §2).

Retryable failures are `UNAVAILABLE` with `google.rpc.RetryInfo` in BOTH trailers: Go, .NET and
the Collector read `grpc-status-details-bin`; the Python SDK exporter reads only
`google.rpc.retryinfo-bin` (research/reliability.md §1.3). Never a bare `RESOURCE_EXHAUSTED`:
the Collector drops those.
"""

from __future__ import annotations

import logging
import math
import time

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from otel_bridge.errors import PermanentError, RetryableError

Metadata = tuple[tuple[str, bytes], ...]


def retry_info_trailers(message: str, delay_s: float) -> Metadata:
    seconds = math.floor(delay_s)
    retry_info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((delay_s - seconds) * 1e9))
    )
    detail = any_pb2.Any()
    detail.Pack(retry_info)
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", retry_info.SerializeToString()),
    )


def status_for(exc: BaseException, default_retry_s: float) -> tuple[grpc.StatusCode, str, Metadata]:
    """(code, message, trailing metadata) to answer for a failed Export."""
    if isinstance(exc, PermanentError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), ()
    if isinstance(exc, RetryableError):
        delay = exc.retry_after_s if exc.retry_after_s is not None else default_retry_s
        return grpc.StatusCode.UNAVAILABLE, str(exc), retry_info_trailers(str(exc), delay)
    # A bug of ours: retrying may help after a fix or restart, and losing data is worse.
    message = f"internal error: {type(exc).__name__}"
    return grpc.StatusCode.UNAVAILABLE, message, retry_info_trailers(message, default_retry_s)


class RetryLog:
    """The "not stored, sender will retry" warning, at most once per reason and interval: under
    overload or a database outage every Export is answered UNAVAILABLE, and one log line each
    (tens of thousands a minute) would bury everything else. Suppressed lines are counted in the
    next one."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, what: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -math.inf) < self._interval_s:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        more = f" ({suppressed} more since the last such line)" if suppressed else ""
        self._log.warning("%s export not stored, sender will retry: %s%s", what, reason, more)
