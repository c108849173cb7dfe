"""Alembic migrations, shipped inside the package as `otel_bridge.migrations` so that an
installed otel-bridge (a wheel, a container) can migrate its database with `otel-bridge migrate`."""
