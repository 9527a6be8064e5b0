"""Accounts: sessions (refresh families) that logout and password changes revoke.

Revision ID: 0003_sessions
Revises: 0001
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from hub.db import UTCDateTime, utcnow

revision: str = "0003_sessions"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_auth_sessions_user_id", "auth_sessions", ["user_id"])
    op.create_index("ix_auth_sessions_revoked_at", "auth_sessions", ["revoked_at"])
    # Families issued before sessions existed keep working (or stay revoked).
    op.get_bind().execute(sa.text(
        "INSERT INTO auth_sessions (id, user_id, created_at, revoked_at) "
        "SELECT family, MIN(user_id), :now, "
        "CASE WHEN SUM(CASE WHEN revoked THEN 1 ELSE 0 END) > 0 THEN :now END "
        "FROM refresh_tokens GROUP BY family"
    ).bindparams(sa.bindparam("now", utcnow(), type_=UTCDateTime())))


def downgrade() -> None:
    op.drop_table("auth_sessions")
