"""Zero-code setup: `opentelemetry-instrument python app.py` runs `configure()` through these
entry points (`opentelemetry_distro`, `opentelemetry_configurator`, see pyproject.toml)."""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _BaseConfigurator


class OtelBridgeDistro(BaseDistro):  # type: ignore[misc]
    """Defaults that make the instrumentations emit what otel-bridge maps best."""

    def _configure(self, **kwargs: Any) -> None:
        from otel_bridge.instrumentation.sdk import apply_env_defaults

        apply_env_defaults()


class OtelBridgeConfigurator(_BaseConfigurator):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        from otel_bridge.instrumentation.sdk import configure

        configure()
