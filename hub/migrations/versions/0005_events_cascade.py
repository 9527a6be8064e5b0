"""PostgreSQL: events lose their foreign key to streams; a trigger deletes a stream's events.

The foreign key's check ran once per appended event (a lookup and a KEY SHARE lock of the
stream row, which the append had just locked and advanced itself): about half of PostgreSQL's
time per event in a 1,000-user publish (bench/README.md). Every append inserts events only for
stream rows it holds locked, so the check never refused anything; what the key still did is
the cascade when a user (and so their stream) is deleted, which the trigger now does. SQLite
keeps the foreign key.

Revision ID: 0005_events_cascade
Revises: 0001
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_events_cascade"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_constraint("fk_events_user_id_streams", "events", type_="foreignkey")
    op.execute("""
        CREATE FUNCTION delete_stream_events() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM events WHERE user_id = OLD.user_id;
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER streams_delete_events AFTER DELETE ON streams
        FOR EACH ROW EXECUTE FUNCTION delete_stream_events()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER streams_delete_events ON streams")
    op.execute("DROP FUNCTION delete_stream_events()")
    op.execute("DELETE FROM events WHERE user_id NOT IN (SELECT user_id FROM streams)")
    op.create_foreign_key("fk_events_user_id_streams", "events", "streams", ["user_id"],
                          ["user_id"], ondelete="CASCADE")
