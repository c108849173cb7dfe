"""OTLP receivers: gRPC now, OTLP/HTTP later. They decode and validate requests and hand them
to a `Consumer`; they never touch the database themselves."""
