"""Previous points of cumulative metric series, for turning counters into rates.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Rates need the previous point of the same series. Requests of one app are spread over ingest
worker processes (and over receivers behind a load balancer), so the previous point lives in the
database, read and updated in the transaction that stores the new one.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create metric_series_state."""
    op.execute(
        """
        CREATE TABLE metric_series_state (
          series_key TEXT PRIMARY KEY,
          value DOUBLE PRECISION NOT NULL,
          time_unix_nano BIGINT NOT NULL,
          start_time_unix_nano BIGINT NOT NULL,
          updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    """Drop metric_series_state."""
    op.execute("DROP TABLE metric_series_state")
