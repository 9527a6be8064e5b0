"""The chat's signals (protocol §11): presence of members and typing, live only.

Nothing here is stored or numbered: presence and typing frames go out through the core's
`Signals` to the other members' open connections, and a client that reconnects re-reads
presence over REST (`online`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from chat import queries
from hub.db import Database
from hub.errors import NotFound, RateLimited
from hub.presence import Presence
from hub.ratelimit import Limit, RateLimiter
from hub.signals import Signals

ANNOUNCE_CHUNK = 512


def _no_chat(chat_id: int) -> NotFound:
    return NotFound(f"no chat {chat_id} among yours")


class ChatLive:
    """Presence and typing of chat members. `typing_limit` forwards one typing signal per user
    and chat per CHAT_TYPING_INTERVAL seconds (the rest are dropped).

    Typing reads a chat's members from a cache kept `members_ttl` seconds (at most
    `members_cached` chats, the oldest dropped first), so someone typing costs no query per
    frame. A user not among the cached members is looked up again, so a new member types at
    once; one who left this process's chat is forgotten at once (`forget`), and one who left
    through another process may still send typing signals for `members_ttl` seconds."""

    def __init__(self, db: Database, signals: Signals, presence: Presence, limiter: RateLimiter,
                 typing_limit: Limit, *, members_ttl: float = 2.0,
                 members_cached: int = 10_000) -> None:
        self._db = db
        self._signals = signals
        self._presence = presence
        self._limiter = limiter
        self._typing_limit = typing_limit
        self._members_ttl = members_ttl
        self._members_cached = members_cached
        self._members: dict[int, tuple[float, frozenset[int]]] = {}  # chat -> (expiry, members)
        presence.listen(self.announce)

    def forget(self, chat_id: int) -> None:
        """The chat's membership changed: the next typing reads it again."""
        self._members.pop(chat_id, None)

    async def _typing_members(self, user_id: int, chat_id: int) -> frozenset[int]:
        now = time.monotonic()
        cached = self._members.get(chat_id)
        if cached is not None and cached[0] > now and user_id in cached[1]:
            return cached[1]
        async with self._db.sessions() as session:
            members = frozenset(await queries.member_ids(session, chat_id))
        self._members.pop(chat_id, None)
        while len(self._members) >= self._members_cached:
            del self._members[next(iter(self._members))]
        self._members[chat_id] = (now + self._members_ttl, members)
        return members

    async def online(self, user_id: int, chat_id: int) -> list[int]:
        """The chat's members online, ascending; NotFound for a non-member."""
        async with self._db.sessions() as session:
            members = await queries.member_ids(session, chat_id)
        if user_id not in members:
            raise _no_chat(chat_id)
        return await self._presence.online(members)

    async def typing(self, user_id: int, chat_id: int) -> bool:
        """Tell the other members that `user_id` types; NotFound for a non-member. False when
        throttled (dropped)."""
        members = await self._typing_members(user_id, chat_id)
        if user_id not in members:
            raise _no_chat(chat_id)
        try:  # a dropped one is counted in hub_rate_limited_total{limit="chat_typing"}
            await self._limiter.enforce(self._typing_limit, f"{user_id}:{chat_id}", "typing")
        except RateLimited:
            return False
        others = [member for member in members if member != user_id]
        await self._signals.send(others, {"type": "typing", "chat_id": chat_id,
                                          "user_id": user_id})
        return True

    async def typing_frame(self, user_id: int, frame: Mapping[str, Any]) -> tuple[str, str] | None:
        """The `typing` client frame: an error frame's (code, detail), or None."""
        chat_id = frame.get("chat_id")
        if type(chat_id) is not int or not 0 < chat_id < 2**31:
            return "bad_frame", "expected {\"type\": \"typing\", \"chat_id\": <a chat id>}"
        try:
            await self.typing(user_id, chat_id)
        except NotFound:
            return "forbidden", f"chat {chat_id} is not among yours"
        return None

    async def announce(self, user_ids: list[int], online: bool) -> None:
        """A presence listener: tell the online members of these users' chats. Their chats and
        who of those is online are read in chunks of `ANNOUNCE_CHUNK` users (one query and one
        lookup each, however many users come or go at once); the frames go out in one
        `send_many`, so a member hears of every change in the batch in one message."""
        frames: list[tuple[list[int], dict[str, Any]]] = []
        here: set[int] = set()
        for start in range(0, len(user_ids), ANNOUNCE_CHUNK):
            changed = set(user_ids[start:start + ANNOUNCE_CHUNK])
            async with self._db.sessions() as session:
                chats = await queries.chats_of_users(session, changed)
            if not chats:
                continue
            listening, held_here = await self._presence.audience(
                {member for members in chats.values() for member in members})
            here |= held_here
            frames += [
                ([member for member in members if member != user_id and member in listening],
                 {"type": "presence", "chat_id": chat_id, "user_id": user_id, "online": online})
                for chat_id, members in chats.items()
                for user_id in members if user_id in changed]
        await self._signals.send_many(frames, here)
