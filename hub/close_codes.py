"""Every WebSocket close code of the hub's protocol (docs/protocol.md § Close codes), with what
it means, who sends it and what a client does about it. The one source: the hub closes with
these members, the Python client (`hub.client`) decides with `action_for`, and the browser
client's `CloseCode` table (hub/static/hub-client.js) is compared with this enumeration by
tests/test_close_codes.py.

What a client does on a close (`CloseAction`):
- RECONNECT: reconnect with back-off and jitter, then resume (`last_event_id`, `epoch`);
- REFRESH: get a new access token over REST, then reconnect; terminal when the refresh fails;
- TERMINAL: stop; reconnecting as is would repeat the same mistake or refusal.

Ranges, for codes a client does not know (a newer hub's): 4000-4499 reconnect, 4500-4999
terminal, anything else reconnect. Codes 4000-4009 predate the ranges and are fixed by the
contract, each with its own action (4003 is terminal although in the reconnect range); a code
added from now on takes the next free number of its action's range (4010 up, or 4500 up), so
that an older client already does the right thing with it.
"""

from __future__ import annotations

import enum


class CloseAction(enum.StrEnum):
    RECONNECT = "reconnect"
    REFRESH = "refresh"
    TERMINAL = "terminal"


class SentBy(enum.StrEnum):
    HUB = "hub"
    CLIENT = "client"
    NOBODY = "nobody"  # what a client sees or may get from something else (a proxy, a dead link)


RECONNECT_RANGE = range(4000, 4500)
TERMINAL_RANGE = range(4500, 5000)


class CloseCode(enum.IntEnum):
    """A close code; `action`, `sent_by` and `meaning` describe it (docs/protocol.md repeats them)."""

    action: CloseAction
    sent_by: SentBy
    meaning: str

    def __new__(cls, code: int, action: CloseAction, sent_by: SentBy, meaning: str) -> CloseCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.action, member.sent_by, member.meaning = action, sent_by, meaning
        return member

    NORMAL = (1000, CloseAction.RECONNECT, SentBy.CLIENT,
                   "the client closed on purpose (signed out, went offline)")
    GOING_AWAY = (1001, CloseAction.RECONNECT, SentBy.CLIENT, "a browser left the page")
    PROTOCOL_ERROR = (1002, CloseAction.TERMINAL, SentBy.HUB,
                           "a frame breaking RFC 6455 (unmasked, bad opcode or reserved bits, "
                           "a continuation out of place)")
    ABNORMAL = (1006, CloseAction.RECONNECT, SentBy.NOBODY,
                     "the connection dropped without a close frame (network, crash)")
    INVALID_DATA = (1007, CloseAction.TERMINAL, SentBy.HUB,
                         "a text frame (or a close frame's reason) that is not UTF-8")
    POLICY_VIOLATION = (1008, CloseAction.TERMINAL, SentBy.NOBODY,
                             "not sent by the hub; a proxy or another server may send it")
    TOO_BIG = (1009, CloseAction.TERMINAL, SentBy.HUB,
                    "a client message over WS_MAX_MESSAGE_BYTES, or in more than WS_MAX_FRAGMENTS "
                    "fragments")
    INTERNAL = (1011, CloseAction.RECONNECT, SentBy.HUB,
                     "a failure inside the hub, or no answer to the keepalive ping")
    RESTARTING = (1012, CloseAction.RECONNECT, SentBy.HUB,
                       "the hub process is shutting down (deploy, SIGTERM)")
    CLIENT_TIMEOUT = (4000, CloseAction.RECONNECT, SentBy.CLIENT,
                           "the browser client's own code: no welcome or pong in time")
    AUTH_FAILED = (4001, CloseAction.REFRESH, SentBy.HUB,
                        "authentication failed, timed out or expired, or the session was ended")
    FORBIDDEN = (4003, CloseAction.TERMINAL, SentBy.HUB, "a refresh frame carried another user's token")
    RATE_LIMITED = (4008, CloseAction.RECONNECT, SentBy.HUB,
                         "too many client frames, or too many connections for the user")
    SLOW_CONSUMER = (4009, CloseAction.RECONNECT, SentBy.HUB,
                          "the client did not take its events fast enough; it resumes losing nothing")
    HISTORY_GONE = (4010, CloseAction.RECONNECT, SentBy.HUB,
                         "events the connection must still deliver are no longer retained; the "
                         "resume answers recovered: false and the client re-reads its state")


def action_for(code: int) -> CloseAction:
    """What a client does on a close with `code`, known or not (the ranges of the module's docstring)."""
    known = CloseCode._value2member_map_.get(code)
    if isinstance(known, CloseCode):
        return known.action
    return CloseAction.TERMINAL if code in TERMINAL_RANGE else CloseAction.RECONNECT
