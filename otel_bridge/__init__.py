"""otel-bridge: an OpenTelemetry (OTLP) backend that writes plain PostgreSQL rows.

Importing this package imports nothing heavy: applications import `otel_bridge.instrumentation`
without pulling in the receiver's gRPC server, psycopg or SQLAlchemy.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
