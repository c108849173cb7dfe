"""Error management: exact affected users per group, the resolution workflow's state, an outbox of
alerts, and resolution times.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

`error_group_users` makes `error_groups.users_affected` exact and cheap: the writer inserts
(fingerprint, user) pairs and counts only the ones that are new. `error_alerts` is an outbox:
the ingest transaction records new groups, regressions and spikes; a notifier outside the ingest
path delivers them to the webhook with retries, so a slow or dead webhook never delays a write.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the error-management tables, columns and view."""
    op.execute(
        """
        ALTER TABLE error_groups ADD COLUMN release_at_resolution TEXT;
        ALTER TABLE error_groups ADD COLUMN regressions INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE error_groups ADD COLUMN last_spike_at TIMESTAMPTZ;

        CREATE TABLE error_group_users (
          fingerprint TEXT NOT NULL,
          user_id TEXT NOT NULL,
          first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
          PRIMARY KEY (fingerprint, user_id)
        );

        CREATE TABLE error_alerts (
          id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          kind TEXT NOT NULL CHECK (kind IN ('new', 'regression', 'spike')),
          fingerprint TEXT NOT NULL,
          payload JSONB NOT NULL,
          created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
          attempts INTEGER NOT NULL DEFAULT 0,
          next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
          delivered_at TIMESTAMPTZ,
          last_error TEXT
        );
        CREATE INDEX idx_error_alerts_pending ON error_alerts (next_attempt_at) WHERE delivered_at IS NULL;

        CREATE VIEW error_group_resolution AS
        SELECT fingerprint, title, error_type, status, first_seen, resolved_at, resolved_by,
               resolved_in_release, resolved_at - first_seen AS time_to_resolve
        FROM error_groups WHERE resolved_at IS NOT NULL;
        """
    )


def downgrade() -> None:
    """Drop them again."""
    op.execute(
        """
        DROP VIEW error_group_resolution;
        DROP TABLE error_alerts;
        DROP TABLE error_group_users;
        ALTER TABLE error_groups DROP COLUMN last_spike_at;
        ALTER TABLE error_groups DROP COLUMN regressions;
        ALTER TABLE error_groups DROP COLUMN release_at_resolution;
        """
    )
