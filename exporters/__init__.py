"""Mapping from OTLP protobuf to table rows (pure functions) and the PostgreSQL writer."""
