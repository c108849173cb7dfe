"""The slow baseline for `ingest.py`: a naive SQLAlchemy ORM writer of the same mapped rows.

What an app developer writes first: ORM classes reflected from the tables (automap), one object
per row, `session.add_all(...)` and one commit per Export request, on one connection. It gets
SQLAlchemy 2's batched INSERTs ("insertmanyvalues") for free, but no COPY and no staging. The
receiver's whole path (gRPC, parse, map, COPY) is compared with it in the same run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.ext.automap import automap_base
from sqlalchemy.orm import Session

from otel_bridge.database import sqlalchemy_url
from otel_bridge.exporters.metrics import MetricRows, apply_rates

ORM_SECONDS = 8.0  # the ORM writer is slow: a sample of payloads is enough


def _row_batches(mapped: Any) -> list[list[Any]]:
    """The rows one mapped payload stores, per table (metrics: the samples with their rates,
    computed without previous points: the ORM writer keeps no series state)."""
    if isinstance(mapped, MetricRows):
        apply_rates(mapped, {})
        return [mapped.rows]
    return [rows for rows in mapped.event_rows() if rows]


def orm_write(
    url: str, mapped: list[Any], tables: tuple[str, ...], max_seconds: float
) -> dict[str, Any]:
    """Write payloads one transaction each until done or `max_seconds` passed; rows/s and CPU."""
    engine = create_engine(sqlalchemy_url(url))
    try:
        base = automap_base()
        base.prepare(autoload_with=engine)
        classes = {
            name: getattr(base.classes, name) for name in tables if hasattr(base.classes, name)
        }
        rows = payloads = 0
        own = os.times()
        started = time.perf_counter()
        with Session(engine) as session:
            for payload in mapped:
                for batch in _row_batches(payload):
                    cls, fields = classes[batch[0].table], batch[0]._fields
                    session.add_all([cls(**dict(zip(fields, row, strict=True))) for row in batch])
                    rows += len(batch)
                session.commit()
                payloads += 1
                if time.perf_counter() - started > max_seconds:
                    break
        elapsed, done = time.perf_counter() - started, os.times()
        return {"seconds": elapsed, "rows": rows, "payloads": payloads,
                "cpu_s": done.user + done.system - own.user - own.system}  # fmt: skip
    finally:
        engine.dispose()


def run_orm(spec: Any, url: str, payloads: list[bytes], ip_key: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Map `payloads` (untimed), empty the signal's tables, then time `orm_write` on them."""
    log(f"ORM baseline: mapping up to {len(payloads)} payloads, then writing them with SQLAlchemy ORM "
        f"(add_all + commit per payload) for at most {ORM_SECONDS:g} s")  # fmt: skip
    mapped = spec.map(payloads, ip_key)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(spec.tables + spec.derived_tables))
    return orm_write(url, mapped, spec.tables, ORM_SECONDS)
