"""App-side instrumentation: make a Python service emit what otel-bridge maps.

    from otel_bridge.instrumentation import configure
    telemetry = configure("cqms-api", service_version="2.4.1", environment="production")

or, with no code, `opentelemetry-instrument python app.py` (see distro.py). Importing this
package imports nothing else: no gRPC, psycopg_pool, SQLAlchemy or Alembic until `configure()`
is called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["configure"]


def configure(*args: Any, **kwargs: Any) -> Any:
    """See `otel_bridge.instrumentation.sdk.configure`."""
    from otel_bridge.instrumentation.sdk import configure as _configure

    return _configure(*args, **kwargs)
