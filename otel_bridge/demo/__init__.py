"""`otel-bridge demo`: an instrumented example app, a crowd using it, and what the tables got."""

from __future__ import annotations

from otel_bridge.demo.runner import run_demo

__all__ = ["run_demo"]
