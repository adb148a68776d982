"""Fast unique identifiers for inbox subjects (the NUID scheme of the NATS clients).

A NUID is 22 base-62 characters: a 12-character random prefix, renewed when the
sequence runs out, followed by a 10-character sequence that grows by a random step.
"""

from __future__ import annotations

import os
import secrets
import threading

__all__ = ["NUID", "next_nuid", "reseed_nuid"]

_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE = 62
_PREFIX_LEN = 12
_SEQ_LEN = 10
_MAX_SEQ = _BASE**_SEQ_LEN
_MIN_INC = 33
_MAX_INC = 333


class NUID:
    """A generator of unique ids; :meth:`next` is thread-safe."""

    __slots__ = ("_lock", "_prefix", "_seq", "_inc")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefix = b""
        self._seq = 0
        self._inc = 0
        self._reset()

    def _reset(self) -> None:
        self._prefix = bytes(_DIGITS[b % _BASE] for b in secrets.token_bytes(_PREFIX_LEN))
        self._seq = secrets.randbelow(_MAX_SEQ)
        self._inc = _MIN_INC + secrets.randbelow(_MAX_INC - _MIN_INC)

    def next(self) -> str:
        """Return a new unique id."""
        with self._lock:
            self._seq += self._inc
            if self._seq >= _MAX_SEQ:
                self._reset()
            seq = self._seq
            prefix = self._prefix
        out = bytearray(_SEQ_LEN)
        for i in range(_SEQ_LEN - 1, -1, -1):
            seq, r = divmod(seq, _BASE)
            out[i] = _DIGITS[r]
        return (prefix + out).decode("ascii")


_global = NUID()


def next_nuid() -> str:
    """Return a new unique id from the process-wide generator."""
    return _global.next()


def reseed_nuid() -> None:
    """Give the process-wide generator a new lock and a new random state.

    Called in a forked child (before anything else makes an id): without it, parent and
    child would hand out the same inbox prefixes and replies would cross between them.
    The lock is replaced, never acquired: the parent may have held it at the fork.
    """
    _global._lock = threading.Lock()
    _global._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reseed_nuid)
