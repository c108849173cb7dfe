"""Migrations on a real PostgreSQL: round trip, and agreement with schema.py and the row types."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import psycopg
from sqlalchemy.dialects import postgresql

from otel_bridge.database import current_revision, ensure_partitions, migrate
from otel_bridge.exporters.rows import EVENT_ROW_TYPES, QueryPatternRow
from otel_bridge.schema import PARTITIONED_TABLES, metadata

HEAD = "0005"

PG_TYPE_NAMES = {"uuid": "uuid", "text": "text", "timestamptz": "timestamp with time zone",
                 "float8": "double precision", "int4": "integer", "int8": "bigint",
                 "bool": "boolean", "jsonb": "jsonb", "numeric": "numeric"}  # fmt: skip


def _type_name(compiled: str) -> str:
    """SQLAlchemy's DDL type -> information_schema's data_type."""
    name = compiled.lower().split("(")[0]
    return "array" if name.endswith("[]") else name


def columns(url: str) -> dict[str, dict[str, tuple[str, bool]]]:
    """table -> column -> (data type, nullable), for parent tables only."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable = 'YES' "
            "FROM information_schema.columns c JOIN pg_class k ON k.relname = c.table_name "
            "WHERE c.table_schema = current_schema() AND NOT k.relispartition"
        ).fetchall()
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, data_type, nullable in found:
        out.setdefault(table, {})[column] = (data_type, nullable)
    return out


def test_upgrade_downgrade_upgrade(empty_db_url: str, rows: Any) -> None:
    migrate(empty_db_url)
    assert current_revision(empty_db_url) == HEAD
    migrate(empty_db_url, "base", downgrade=True)
    assert current_revision(empty_db_url) is None
    assert rows(empty_db_url, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
                              "AND tablename <> 'alembic_version'")[0][0] == 0  # fmt: skip
    migrate(empty_db_url)
    assert current_revision(empty_db_url) == HEAD


def test_schema_description_matches_the_migrated_database(db_url: str) -> None:
    actual = columns(db_url)
    actual.pop("alembic_version")
    # Views are queries, not tables: described by their migration only.
    assert set(actual.pop("error_group_resolution")) >= {"fingerprint", "time_to_resolve"}
    assert set(actual) == set(metadata.tables)
    dialect = postgresql.dialect()
    for table in metadata.sorted_tables:
        described = {
            c.name: (_type_name(c.type.compile(dialect=dialect)), c.nullable and not c.primary_key)
            for c in table.columns
        }
        for name, (data_type, nullable) in actual[table.name].items():
            assert name in described, f"{table.name}.{name} is missing from schema.py"
            want_type, want_nullable = described[name]
            assert want_type == data_type.lower(), f"{table.name}.{name}: {want_type} vs {data_type}"
            assert want_nullable == nullable, f"{table.name}.{name} nullability"
        assert set(described) == set(actual[table.name]), table.name


def test_row_types_match_their_tables(db_url: str) -> None:
    actual = columns(db_url)
    for row_type in (*EVENT_ROW_TYPES, QueryPatternRow):
        table = actual[row_type.table]
        for field, pg_type in zip(row_type._fields, row_type.pg_types):
            assert table[field][0] == PG_TYPE_NAMES[pg_type], f"{row_type.table}.{field}"


def test_monthly_partitions_and_default_partition(db_url: str, rows: Any) -> None:
    month = datetime.now(timezone.utc).strftime("%Y%m")
    for table in PARTITIONED_TABLES:
        parts = {r[0] for r in rows(db_url, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                             "WHERE i.inhparent = %s::regclass", (table.name,))}  # fmt: skip
        assert f"{table.name}_p{month}" in parts and f"{table.name}_default" in parts
        assert len(parts) == 4, parts  # this month, two ahead, default


def test_rows_of_an_unpartitioned_month_land_in_default_then_move(db_url: str, rows: Any) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO api_performance_metrics (id, endpoint_path, http_method, request_timestamp, "
            "response_time_ms, slow_request) VALUES (gen_random_uuid(), '/x', 'GET', now() + interval '5 months', 1, false)"
        )
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics_default")[0][0] == 1
    assert ensure_partitions(db_url, months_ahead=6) > 0
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics_default")[0][0] == 0
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics")[0][0] == 1
