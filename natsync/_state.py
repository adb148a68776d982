"""The states of a client's connection (constants only: no threads, no locks).

The state is read without a lock on fast paths (one attribute load) and changed only
under the client's lock, with the client's ``_state_cond`` notified.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DISCONNECTED",
    "CONNECTING",
    "CONNECTED",
    "RECONNECTING",
    "DRAINING_SUBS",
    "DRAINING_PUBS",
    "CLOSED",
    "LAZY",
    "STATE_NAMES",
    "CONNECTED_STATES",
]

# connection states
DISCONNECTED: Final = 0
CONNECTING: Final = 1
CONNECTED: Final = 2
RECONNECTING: Final = 3
DRAINING_SUBS: Final = 4
DRAINING_PUBS: Final = 5
CLOSED: Final = 6
LAZY: Final = 7  # connect(lazy=True) and not used yet: the first use connects

STATE_NAMES = {
    DISCONNECTED: "disconnected",
    CONNECTING: "connecting",
    CONNECTED: "connected",
    RECONNECTING: "reconnecting",
    DRAINING_SUBS: "draining",
    DRAINING_PUBS: "draining",
    CLOSED: "closed",
    LAZY: "lazy",
}

# the states with a live connection to write to
CONNECTED_STATES: Final = (CONNECTED, DRAINING_SUBS, DRAINING_PUBS)
