"""Errors that say whether trying again can help.

    BridgeError
    ├── PermanentError    the input is bad: retrying the same data fails the same way
    │                     (gRPC INVALID_ARGUMENT, HTTP 400)
    └── RetryableError    the backend is down or busy: the sender should retry later
                          (gRPC UNAVAILABLE + RetryInfo, HTTP 503 + Retry-After)

Foreign exceptions (psycopg, protobuf) are translated into these at the edge that raises them,
so the receiver has one table from error to protocol status (`otel_bridge.receiver.status`).
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error otel-bridge raises on purpose."""


class PermanentError(BridgeError):
    """The request itself is invalid; never retry it."""


class RetryableError(BridgeError):
    """A transient failure (database unreachable, overloaded); the sender should retry."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
