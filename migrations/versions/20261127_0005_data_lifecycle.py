"""Data lifecycle: sessions get finalized, any month can get its partition, and page usage has a
daily rollup.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

`otel_bridge_partition_month(parent, month)` creates one monthly partition (moving the month's
rows out of the DEFAULT partition when some already landed there): `otel-bridge maintain` uses it
for months of backfilled or late data, so retention can drop whole partitions for them too.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTITION_MONTH = r"""
CREATE FUNCTION otel_bridge_partition_month(parent TEXT, month_start DATE)
RETURNS BOOLEAN LANGUAGE plpgsql AS $fn$
DECLARE
  part TEXT := parent || '_p' || to_char(month_start, 'YYYYMM');
  time_column TEXT;
  month_end DATE := (month_start + interval '1 month')::date;
BEGIN
  IF to_regclass(quote_ident(part)) IS NOT NULL THEN
    RETURN false;
  END IF;
  time_column := trim(both '"' FROM substring(pg_get_partkeydef(to_regclass(quote_ident(parent))) FROM '\((.*)\)'));
  BEGIN
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', part, parent, month_start, month_end);
  EXCEPTION WHEN check_violation THEN
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', part, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
                   parent || '_default', time_column, month_start, time_column, month_end, part);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, part, month_start, month_end);
  END;
  RETURN true;
END
$fn$;
"""


# Retention drops expired monthly partitions: DETACH and DROP need the table's owner, so the
# receiver's writer role (`otel-bridge roles`) calls this (SECURITY DEFINER there) instead.
DROP_PARTITION = r"""
CREATE FUNCTION otel_bridge_drop_partition(parent TEXT, part TEXT)
RETURNS VOID LANGUAGE plpgsql AS $fn$
BEGIN
  IF part !~ ('^' || parent || '_p[0-9]{6}$') THEN
    RAISE EXCEPTION 'not a monthly partition of %: %', parent, part;
  END IF;
  EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', parent, part);
  EXECUTE format('DROP TABLE %I', part);
END
$fn$;
"""


def upgrade() -> None:
    """Add user_sessions.finalized_at and otel_bridge_partition_month()."""
    op.execute("ALTER TABLE user_sessions ADD COLUMN finalized_at TIMESTAMPTZ")
    op.execute(PARTITION_MONTH)
    op.execute(DROP_PARTITION)
    # Page views and time on page per page slug (the seed's per-feature usage), per day.
    op.execute(
        """
        CREATE TABLE daily_page_analytics (
          day DATE NOT NULL,
          service_name TEXT NOT NULL,
          environment TEXT NOT NULL DEFAULT '',
          page_slug TEXT NOT NULL,
          user_role TEXT NOT NULL DEFAULT '',
          page_views INTEGER NOT NULL DEFAULT 0,
          unique_users INTEGER NOT NULL DEFAULT 0,
          avg_time_on_page_s DOUBLE PRECISION,
          avg_scroll_depth DOUBLE PRECISION,
          updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
          PRIMARY KEY (day, service_name, environment, page_slug, user_role)
        )
        """
    )


def downgrade() -> None:
    """Drop them."""
    op.execute("DROP TABLE daily_page_analytics")
    op.execute("DROP FUNCTION otel_bridge_drop_partition(TEXT, TEXT)")
    op.execute("DROP FUNCTION otel_bridge_partition_month(TEXT, DATE)")
    op.execute("ALTER TABLE user_sessions DROP COLUMN finalized_at")
