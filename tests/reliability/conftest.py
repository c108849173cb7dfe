"""Reliability tests run short in `make test`; `OTEL_BRIDGE_LONG_TESTS=1` (or `make test-long`)
runs the longer variants with research/reliability.md §6's full volumes and durations."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def long_run() -> bool:
    """True when the long variants were asked for."""
    return os.environ.get("OTEL_BRIDGE_LONG_TESTS", "") not in ("", "0", "false", "no")
