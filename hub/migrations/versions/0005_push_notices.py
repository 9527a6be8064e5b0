"""Web Push: the notifications a device may still show (to close them once read elsewhere), and
each push's `Urgency`.

Revision ID: 0005_push_notices
Revises: 0004_push
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_push_notices"
down_revision: str | None = "0004_push"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "push_notices",
        sa.Column("subscription_id", sa.Integer(),
                  sa.ForeignKey("push_subscriptions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("topic", sa.String(32), primary_key=True),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("push_outbox") as batch:
        batch.add_column(sa.Column("urgency", sa.String(8), nullable=False,
                                   server_default="normal"))


def downgrade() -> None:
    with op.batch_alter_table("push_outbox") as batch:
        batch.drop_column("urgency")
    op.drop_table("push_notices")
