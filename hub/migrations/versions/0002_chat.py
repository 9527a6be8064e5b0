"""Chat: chats, members with read markers, messages.

Revision ID: 0002_chat
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from hub.db import UTCDateTime

revision: str = "0002_chat"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chats",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("title", sa.String(100), nullable=False),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL"),
                  nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_activity_at", UTCDateTime(), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.Column("last_message_id", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_chats_last_activity", "chats", ["last_activity_at", "id"])
    op.create_table(
        "chat_members",
        sa.Column("chat_id", sa.Integer(), sa.ForeignKey("chats.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("joined_at", UTCDateTime(), nullable=False),
        sa.Column("last_read_message_id", sa.BigInteger(), nullable=False),
        sa.Column("last_read_seq", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_chat_members_user_id_chat_id", "chat_members", ["user_id", "chat_id"])
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("chat_id", sa.Integer(), sa.ForeignKey("chats.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sender_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_messages_chat_id_id", "messages", ["chat_id", "id"], unique=True)
    op.create_index("uq_messages_chat_id_seq", "messages", ["chat_id", "seq"], unique=True)
    op.create_index("ix_messages_sender_id", "messages", ["sender_id"])


def downgrade() -> None:
    for table in ("messages", "chat_members", "chats"):
        op.drop_table(table)
