"""Page leave and frontend performance events, kept so page views and their performance rows can
be completed whatever order events arrive in.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

`otel_bridge.page_leave` (time on page, scroll depth, interactions) may arrive before its page
view, in another request. Stored as rows of their own, they are applied to the view each time
either side arrives (the writer recomputes the touched sessions from stored rows). Web vitals and
navigation/resource timings of one page view arrive as separate events over the page's life; each
`frontend_performance_metrics` row is recomputed from them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create user_page_leaves and frontend_perf_events."""
    op.execute("ALTER TABLE frontend_performance_metrics ADD COLUMN perf_key TEXT")
    op.execute(
        """
        CREATE TABLE user_page_leaves (
          id UUID PRIMARY KEY,
          page_view_id TEXT NOT NULL,
          session_id TEXT NOT NULL,
          left_at TIMESTAMPTZ NOT NULL,
          time_on_page INTEGER,
          scroll_depth INTEGER,
          interactions_count INTEGER,
          created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX idx_user_page_leaves_page_view_id ON user_page_leaves (page_view_id);
        CREATE INDEX idx_user_page_leaves_session_id ON user_page_leaves (session_id);

        CREATE TABLE frontend_perf_events (
          id UUID PRIMARY KEY,
          perf_key TEXT NOT NULL,
          page_view_id TEXT,
          session_id TEXT NOT NULL,
          page_slug TEXT NOT NULL,
          page_path TEXT,
          user_id TEXT,
          user_role TEXT,
          event_name TEXT NOT NULL,
          metric TEXT,
          value DOUBLE PRECISION,
          resource JSONB,
          at TIMESTAMPTZ NOT NULL,
          service_name TEXT NOT NULL,
          service_version TEXT,
          environment TEXT,
          created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX idx_frontend_perf_events_perf_key ON frontend_perf_events (perf_key);
        CREATE INDEX idx_frontend_performance_metrics_perf_key ON frontend_performance_metrics (perf_key);
        """
    )


def downgrade() -> None:
    """Drop user_page_leaves and frontend_perf_events."""
    op.execute("DROP TABLE frontend_perf_events")
    op.execute("DROP TABLE user_page_leaves")
    op.execute("ALTER TABLE frontend_performance_metrics DROP COLUMN perf_key")
