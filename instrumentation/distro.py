"""Zero-code setup: `opentelemetry-instrument python app.py` runs `configure()` through these
entry points (`opentelemetry_distro`, `opentelemetry_configurator`, see pyproject.toml)."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _BaseConfigurator


class OtelBridgeDistro(BaseDistro):  # type: ignore[misc]
    """Defaults that make the instrumentations emit what otel-bridge maps best."""

    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http,database")
        # ASGI's per-send/receive child spans carry nothing the tables need.
        os.environ.setdefault("OTEL_PYTHON_ASGI_EXCLUDED_SPANS", "send,receive")


class OtelBridgeConfigurator(_BaseConfigurator):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        from otel_bridge.instrumentation.sdk import configure

        configure()
