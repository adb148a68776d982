"""The subscription table of one client.

It maps sids to the subscriptions the reader routes messages to (``ACTIVE`` and
``DRAINING`` ones), keeps the callback subscriptions whose delivery thread still runs
(``drain()`` and ``close()`` wait for those, including one that ended by its
auto-unsubscribe limit), and the request mux's inbox subscription.

Threads and guards: every method is called with the client's lock held (the guard of
the table), except that the reader thread looks sids up in :attr:`SubTable.by_sid`
without it: one ``dict.get``, which is atomic on every CPython build (the dict's own
lock on free-threaded CPython); a subscription removed meanwhile is ENDED, which its
own lock tells the reader, and drops what it gets. Each subscription's state is
changed only under that same lock. No user code runs here.
"""

from __future__ import annotations

import itertools

from . import _protocol as protocol
from .subscription import ACTIVE, Subscription

__all__ = ["SubTable"]


class SubTable:
    """Subscriptions by sid, and the callback subscriptions still delivering."""

    __slots__ = ("by_sid", "delivering", "resp", "_sids")

    def __init__(self) -> None:
        self.by_sid: dict[int, Subscription] = {}  # routed to: ACTIVE and DRAINING
        self.delivering: dict[int, Subscription] = {}  # callback subs whose thread runs
        self.resp: Subscription | None = None  # the request mux's inbox subscription
        self._sids = itertools.count(1)

    def next_sid(self) -> int:
        """A sid never used by this client."""
        return next(self._sids)

    def add(self, sub: Subscription) -> None:
        """Route *sub*'s messages; track its delivery thread, if it has one."""
        self.by_sid[sub.sid] = sub
        if sub._thread is not None:
            self.delivering[sub.sid] = sub

    def remove(self, sub: Subscription) -> None:
        """Stop routing to *sub* (its delivery thread, if any, is still tracked)."""
        if self.by_sid.get(sub.sid) is sub:
            del self.by_sid[sub.sid]

    def finished(self, sub: Subscription) -> None:
        """*sub*'s delivery thread ends."""
        if self.delivering.get(sub.sid) is sub:
            del self.delivering[sub.sid]

    def user_subs(self) -> list[Subscription]:
        """Every routed subscription but the request inbox."""
        return [s for s in self.by_sid.values() if s is not self.resp]

    def resend(self) -> bytearray:
        """SUB (and UNSUB with what is left of an auto-unsubscribe count) for every ACTIVE
        subscription, for a new connection. A draining one is not sent again: its
        interest ended with the old connection."""
        out = bytearray()
        for sub in self.by_sid.values():
            if sub._state != ACTIVE:
                continue
            out += protocol.encode_sub(sub.subject, sub.sid, sub.queue)
            sub._received_at_sub = sub._received  # the server counts from this SUB
            if sub._max is not None:
                left = sub._max - sub._received
                out += protocol.encode_unsub(sub.sid, left) if left > 0 else protocol.encode_unsub(sub.sid)
        return out

    def take_all(self) -> list[Subscription]:
        """Every subscription (routed or still delivering); nothing is routed after."""
        subs = list(self.by_sid.values()) + [s for s in self.delivering.values() if s.sid not in self.by_sid]
        self.by_sid.clear()
        return subs

    def __len__(self) -> int:
        return len(self.by_sid)
