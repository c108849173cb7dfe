"""Page leave events, kept so page views can be completed whatever order events arrive in.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

`otel_bridge.page_leave` (time on page, scroll depth, interactions) may arrive before its page
view, in another request. Stored as rows of their own, they are applied to the view each time
either side arrives (the writer recomputes the touched sessions from stored rows).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create user_page_leaves."""
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
        """
    )


def downgrade() -> None:
    """Drop user_page_leaves."""
    op.execute("DROP TABLE user_page_leaves")
