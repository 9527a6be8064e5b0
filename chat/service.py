"""The chat service: each call is one transaction that changes the data and writes its events.

Events (protocol §5) are emitted inside the transaction that makes the change, so they commit
with it and are published after the commit. Writers that touch a chat's messages or members
lock the chat row first (`queries.lock_chat`), then the members' streams (inside `tx.emit`), so
concurrent writers queue instead of deadlocking and every member sees events in commit order.

Abuse limits (protocol §6): a chat has at most `max_members` members; a user who blocks another
cannot be added to a chat by them; each new post spends a token of the sender's posting `Limit`
on the shared `RateLimiter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chat import queries
from chat.events import (
    CHAT_CREATED,
    CHAT_MEMBER_ADDED,
    CHAT_MEMBER_LEFT,
    CHAT_MESSAGE,
    CHAT_READ,
    ChatOut,
    Membership,
    MessageOut,
    ReadUpTo,
)
from chat.push import chat_topic
from chat.queries import ChatRow, chat_json
from hub.db import Database, rfc3339, utcnow
from hub.errors import Conflict, Forbidden, Invalid, NotFound
from hub.events import EventBus, Transaction
from hub.idempotency import KeyedRequest, StoredAnswer, answer_once
from hub.push_rules import close_pushed
from hub.ratelimit import Limit, RateLimiter
from hub.users import existing_user_ids


def _no_chat(chat_id: int) -> NotFound:
    # Same words for a missing chat and a chat of others: a stranger learns nothing.
    return NotFound(f"no chat {chat_id} among yours")


def _blocked_by(blockers: Sequence[int]) -> Forbidden:
    listed = ", ".join(map(str, blockers))
    return Forbidden(f"user {listed} blocks you: you cannot add them to a chat" if len(blockers) == 1
                     else f"users {listed} block you: you cannot add them to a chat")


class ChatService:
    def __init__(self, db: Database, events: EventBus, limiter: RateLimiter, post_limit: Limit, *,
                 max_members: int, push: bool) -> None:
        self._db = db
        self._events = events
        self._limiter = limiter
        self._post_limit = post_limit  # per sender: CHAT_POST_RATE a second, bursts of CHAT_POST_BURST
        self._max_members = max_members
        self._push = push  # Web Push on: reads close what was pushed (a statement per post or read)

    async def create_chat(self, creator_id: int, title: str, member_ids: Sequence[int]) -> dict[str, Any]:
        """Create a chat of the creator and `member_ids`; emits `chat.created` to every member.
        422 for unknown users or more than `max_members` members, 403 if one of them blocks the
        creator."""
        everyone = sorted(set(member_ids) | {creator_id})
        if len(everyone) > self._max_members:
            raise Invalid({"member_ids": f"a chat has at most {self._max_members} members, the "
                                         f"creator included; this one would have {len(everyone)}"})
        async with self._events.transaction() as tx:
            known = await existing_user_ids(tx.session, everyone)
            unknown = sorted(set(member_ids) - known)
            if unknown:
                listed = ", ".join(map(str, unknown))
                raise Invalid({"member_ids": f"unknown user ids: {listed}"})
            blockers = await queries.blockers_among(tx.session, member_ids, creator_id)
            if blockers:
                raise _blocked_by(blockers)
            now = utcnow()
            chat_id = await queries.insert_chat(tx.session, title, creator_id, everyone, now)
            members = (await queries.members_of(tx.session, [chat_id]))[chat_id]
            chat = chat_json(ChatRow(chat_id, title, now, 0), members)
            # validated against the declared object: 1,000 members take about a millisecond
            await tx.emit(everyone, CHAT_CREATED(ChatOut.model_validate(chat)))
        return chat

    async def list_chats(self, user_id: int) -> list[dict[str, Any]]:
        """The user's chats, latest activity first, each with the user's unread count."""
        async with self._db.sessions() as session:
            rows = await queries.chats_of_member(session, user_id)
            members = await queries.members_of(session, [row.id for row in rows])
        return [chat_json(row, members[row.id]) for row in rows]

    async def get_chat(self, user_id: int, chat_id: int) -> dict[str, Any]:
        async with self._db.sessions() as session:
            row = await queries.chat_of_member(session, chat_id, user_id)
            if row is None:
                raise _no_chat(chat_id)
            members = await queries.members_of(session, [chat_id])
        return chat_json(row, members[chat_id])

    async def add_member(self, caller_id: int, chat_id: int, user_id: int) -> dict[str, Any]:
        """Add `user_id` to a chat of the caller; emits `chat.member_added` to every member,
        the new one included. Returns the chat as the caller sees it. 403 if `user_id` blocks
        the caller, 422 when the chat already has `max_members` members."""
        async with self._events.transaction() as tx:
            session = tx.session
            head = await queries.lock_chat(session, chat_id, caller_id)
            if head is None:
                raise _no_chat(chat_id)
            if not await existing_user_ids(session, [user_id]):
                raise Invalid({"user_id": f"unknown user id {user_id}"})
            if await queries.is_member(session, chat_id, user_id):
                raise Conflict(f"user {user_id} is already a member of chat {chat_id}")
            if await queries.blockers_among(session, [user_id], caller_id):
                raise _blocked_by([user_id])
            if await queries.member_count(session, chat_id) >= self._max_members:
                raise Invalid({"user_id": f"chat {chat_id} is full: a chat has at most "
                                          f"{self._max_members} members"})
            await queries.insert_member(session, chat_id, user_id, head, utcnow())
            member_ids = await queries.member_ids(session, chat_id)
            await tx.emit(member_ids, CHAT_MEMBER_ADDED(Membership(chat_id=chat_id, user_id=user_id)))
            row = await queries.chat_of_member(session, chat_id, caller_id)
            members = await queries.members_of(session, [chat_id])
        assert row is not None  # the caller's membership is held by the chat lock
        return chat_json(row, members[chat_id])

    async def leave(self, user_id: int, chat_id: int) -> None:
        """Remove the caller from the chat, read marker and all; emits `chat.member_left` to the
        remaining members, none to the leaver, who from then on is a stranger to the chat (404,
        no events) unless added again, as a newcomer. The last member to leave deletes the
        chat with its messages: nobody could reach it again."""
        async with self._events.transaction() as tx:
            session = tx.session
            # The chat lock orders the leave with posts and adds: a post that commits after
            # this one no longer counts the leaver among its recipients.
            if await queries.lock_chat(session, chat_id, user_id) is None:
                raise _no_chat(chat_id)
            await queries.delete_member(session, chat_id, user_id)
            remaining = await queries.member_ids(session, chat_id)
            if remaining:
                await tx.emit(remaining, CHAT_MEMBER_LEFT(Membership(chat_id=chat_id, user_id=user_id)))
            else:
                await queries.delete_chat(session, chat_id)

    async def post_message(self, sender_id: int, chat_id: int, text: str,
                           idempotency_key: str | None = None) -> tuple[StoredAnswer, bool]:
        """Append a message and its `chat.message` event for every member, the sender included.
        Posting also moves the sender's own read marker to the message (no `chat.read` event:
        the members learn of it from the message itself), so one's own messages are never unread.

        With an `idempotency_key` the sender already used on this call within 24 h, the first
        answer comes back and nothing is written or published (409 if the key came with another
        chat or text); a concurrent duplicate loses on the key's primary key and answers with
        the winner's stored answer. Returns the answer and whether it is a replay.

        A new post (not a replay) spends one unit of the sender's posting allowance first; with
        none left it is 429 with the seconds until the next post is accepted, and nothing is
        written (no message, no event, no idempotency key)."""
        keyed = KeyedRequest.of(f"chat:{sender_id}", idempotency_key, f"{chat_id}\n{text}".encode())

        async def post(tx: Transaction) -> StoredAnswer:
            head = await queries.lock_chat(tx.session, chat_id, sender_id)
            if head is None:
                raise _no_chat(chat_id)
            now = utcnow()
            message_id, member_ids = await queries.insert_message(tx.session, chat_id, head,
                                                                  sender_id, text, now)
            event = CHAT_MESSAGE(MessageOut(
                id=message_id, chat_id=chat_id, sender_id=sender_id,
                sender_username=head.member_name, text=text, created_at=rfc3339(now)))
            await tx.emit(member_ids, event)
            # The sender has read the chat up to here: notifications of it close on their devices.
            if self._push:
                await close_pushed(tx.session, sender_id, chat_topic(chat_id), message_id)
            return StoredAnswer(201, event.data_json)  # the answer is the event's data, as encoded

        async def spend_allowance() -> None:
            await self._limiter.enforce(self._post_limit, str(sender_id), "posting too fast")

        return await answer_once(self._db, self._events, keyed, post, before_work=spend_allowance)

    async def messages(self, user_id: int, chat_id: int, before_id: int | None,
                       limit: int) -> dict[str, Any]:
        """A page of messages, newest first; `next_before_id` is None on the last page."""
        async with self._db.sessions() as session:
            if not await queries.is_member(session, chat_id, user_id):
                raise _no_chat(chat_id)
            items = await queries.message_page(session, chat_id, before_id, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return {"items": items, "next_before_id": items[-1]["id"] if more else None}

    async def mark_read(self, user_id: int, chat_id: int, message_id: int) -> None:
        """Move the user's read marker forward to `message_id`; emits `chat.read` to the other
        members when it moved. A message of another chat is refused (422)."""
        async with self._events.transaction() as tx:
            session = tx.session
            if not await queries.is_member(session, chat_id, user_id):
                raise _no_chat(chat_id)
            seq = await queries.message_seq(session, chat_id, message_id)
            if seq is None:
                raise Invalid({"message_id": f"chat {chat_id} has no message {message_id}"})
            if await queries.advance_read(session, chat_id, user_id, message_id, seq):
                others = [uid for uid in await queries.member_ids(session, chat_id) if uid != user_id]
                await tx.emit(others, CHAT_READ(ReadUpTo(chat_id=chat_id, user_id=user_id,
                                                         message_id=message_id)))
                if self._push:
                    await close_pushed(session, user_id, chat_topic(chat_id), message_id)

    async def block(self, blocker_id: int, blocked_id: int) -> None:
        """`blocker_id` blocks `blocked_id` (again is no change). 422 for oneself or an unknown
        user. Chats they already share stay as they are: either may leave."""
        if blocker_id == blocked_id:
            raise Invalid({"user_id": "you cannot block yourself"})
        async with self._db.sessions.begin() as session:
            if not await existing_user_ids(session, [blocked_id]):
                raise Invalid({"user_id": f"unknown user id {blocked_id}"})
            await queries.insert_block(session, blocker_id, blocked_id, utcnow())

    async def unblock(self, blocker_id: int, blocked_id: int) -> None:
        """Lift the block if there is one; 404 for an unknown user."""
        async with self._db.sessions.begin() as session:
            if not await existing_user_ids(session, [blocked_id]):
                raise NotFound(f"no user {blocked_id}")
            await queries.delete_block(session, blocker_id, blocked_id)

    async def blocks(self, blocker_id: int) -> list[dict[str, Any]]:
        """The users `blocker_id` blocks, in user-id order."""
        async with self._db.sessions() as session:
            return await queries.blocks_of(session, blocker_id)
