"""The NATS client protocol, sans-IO.

:class:`Parser` is fed the bytes a server sent and returns events; the encoders
build the bytes a client sends; the validators check subjects, queues and sizes
before anything is encoded. Nothing here touches sockets, threads or clocks.

Events returned by :meth:`Parser.feed`:

* a message object built by the parser's ``make_msg(subject, sid, reply, hdr, data)``
  (``hdr`` is the raw header block or ``None``),
* :data:`PING`, :data:`PONG`, :data:`OK` (singletons),
* :class:`Info` (the decoded INFO object),
* :class:`Err` (the text of a ``-ERR``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from .errors import BadSubjectError, ProtocolError

__all__ = [
    "Parser",
    "MsgRun",
    "Info",
    "Err",
    "PING",
    "PONG",
    "OK",
    "PING_CMD",
    "PONG_CMD",
    "encode_connect",
    "encode_pub",
    "encode_sub",
    "encode_unsub",
    "validate_subject",
    "validate_queue",
    "pub_prefix",
    "MAX_CONTROL_LINE",
    "MAX_PAYLOAD_SIZE",
]

#: A protocol line longer than this (bytes, without CRLF) is a :class:`~natsync.errors.ProtocolError`.
MAX_CONTROL_LINE: Final = 1024 * 1024
#: A size field above this (bytes) is a :class:`~natsync.errors.ProtocolError`.
MAX_PAYLOAD_SIZE: Final = 64 * 1024 * 1024

#: The bytes of a client PING.
PING_CMD: Final = b"PING\r\n"
#: The bytes of a client PONG.
PONG_CMD: Final = b"PONG\r\n"


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name: str = name

    def __repr__(self) -> str:
        return self.name


#: The event :meth:`Parser.feed` returns for a PING from the server.
PING: Final = _Marker("PING")
#: The event for a PONG.
PONG: Final = _Marker("PONG")
#: The event for a ``+OK`` (verbose mode).
OK: Final = _Marker("OK")


class Info:
    """An INFO from the server: ``data`` is the decoded JSON object."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data: dict[str, Any] = data

    def __repr__(self) -> str:
        return f"Info({self.data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Info) and other.data == self.data


class Err:
    """A ``-ERR`` from the server: ``text`` without the quotes."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text: str = text

    def __repr__(self) -> str:
        return f"Err({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Err) and other.text == self.text


MakeMsg = Callable[[str, int, "str | None", "bytes | None", bytes], Any]


def _default_make_msg(subject: str, sid: int, reply: str | None, hdr: bytes | None, data: bytes) -> Any:
    return (subject, sid, reply, hdr, data)


# Each known operation with the byte that must follow its name.
_JSON: Final = json.JSONDecoder()


def _decode_json(raw: bytes | bytearray | memoryview) -> Any:
    """``json.loads`` of UTF-8 *raw*, without its encoding detection (INFO is UTF-8)."""
    text = bytes(raw).decode("utf-8").strip()
    obj, end = _JSON.raw_decode(text)
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return obj


_OPS: Final = (b"MSG ", b"HMSG ", b"PING\r", b"PONG\r", b"+OK\r", b"-ERR ", b"INFO ")
_OPS_TAB: Final = (b"MSG\t", b"HMSG\t", b"-ERR\t", b"INFO\t", b"-ERR\r")
# PING/PONG/+OK followed by blanks before CRLF are accepted by the full-line path, so a
# cut-short line must not be rejected for them (chunking must not change the outcome).
_OPS_BLANK: Final = (b"PING ", b"PING\t", b"PONG ", b"PONG\t", b"+OK ", b"+OK\t")


def _valid_prefix(head: bytes) -> bool:
    """Could *head* (the start of an operation, maybe cut short) begin a known op?"""
    up = head.upper()
    for op in _OPS + _OPS_TAB + _OPS_BLANK:
        n = min(len(up), len(op))
        if up[:n] == op[:n]:
            return True
    return False


class MsgRun:
    """Consecutive messages for one subscription id, as :meth:`Parser.feed_runs` returns them.

    ``msgs`` is the list of message objects in arrival order, ``nbytes`` the sum of their
    payload sizes (headers included for HMSG).
    """

    __slots__ = ("sid", "msgs", "nbytes")

    def __init__(self, sid: int) -> None:
        self.sid: int = sid
        self.msgs: list[Any] = []
        self.nbytes: int = 0

    def __repr__(self) -> str:
        return f"MsgRun(sid={self.sid}, {len(self.msgs)} msgs, {self.nbytes} bytes)"


# A buffer up to this size is split at every CRLF once, and runs of MSG lines are taken
# from the pieces (a larger buffer holds a large payload: it is parsed by position).
_SPLIT_MAX: Final = 1024 * 1024


class Parser:
    """Incremental parser of the server-to-client protocol.

    ``feed(data)`` takes any chunk of the byte stream and returns the events
    completed by it; partial operations are kept until more bytes arrive. Any
    chunking of a stream gives the same events. Malformed input raises
    :class:`~natsync.errors.ProtocolError`; after that the parser must not be used again.

    Messages are built by *make_msg* (``make_msg(subject, sid, reply, hdr, data)``),
    or, when *msg_type* is given, without a call: ``msg_type.__new__(msg_type)`` and
    then the slots ``_client`` (*owner*), ``subject``, ``sid``, ``reply``, ``_hdr``,
    ``_headers`` (None) and ``data`` are assigned (a Python call per message costs as
    much as the parsing).
    """

    __slots__ = ("_chunks", "_have", "_need", "_in_line", "_make_msg", "_heads", "_msg_type", "_owner")

    def __init__(
        self, make_msg: MakeMsg | None = None, *, msg_type: type | None = None, owner: object = None
    ) -> None:
        self._chunks: list[bytes] = []
        self._have = 0  # bytes held in _chunks
        self._need = 1  # bytes needed before another parse attempt is worth it
        # True while _chunks hold an unfinished control line whose operation was already
        # checked: more bytes without a line end need no re-join and re-scan (which would
        # make a slowly arriving line quadratic).
        self._in_line = False
        self._make_msg: MakeMsg = make_msg or _default_make_msg
        self._msg_type = msg_type
        self._owner = owner
        # Whole MSG control lines already validated ("MSG <subject> <sid> [reply] <size>"),
        # with their parsed values and the bytes the operation takes (line, payload and two
        # CRLFs): a stream repeats them, and a lookup costs less than a parse.
        self._heads: dict[bytes, tuple[str, int, str | None, int, int]] = {}

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed."""
        return self._have

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Parse *data* and return the list of completed events (one per message)."""
        events = self.feed_runs(data)
        for ev in events:
            if ev.__class__ is MsgRun:
                break
        else:
            return events
        flat: list[Any] = []
        for ev in events:
            if ev.__class__ is MsgRun:
                flat += ev.msgs
            else:
                flat.append(ev)
        return flat

    def feed_runs(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Like :meth:`feed`, but consecutive messages may come grouped in a :class:`MsgRun`
        (messages for one sid); a message may also come alone, as in :meth:`feed`."""
        if not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            if self._in_line and b"\r\n" not in data and not (data[0] == 10 and self._chunks[-2][-1] == 13):
                if self._have - (data[-1] == 13) > MAX_CONTROL_LINE:
                    raise ProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes without CRLF")
                return []
            buf = b"".join(self._chunks)
            self._chunks = []
        else:
            buf = data
            if buf[:4] == b"MSG ":
                # one whole MSG and nothing else (a reply, a request, a message of a
                # quiet subject): parsed without the run machinery below
                end = buf.find(b"\r\n", 4, MAX_CONTROL_LINE + 1)
                if end > 0:
                    args = self._msg_line(buf[:end])
                    if args[4] == len(buf) and buf[-2:] == b"\r\n":
                        subject, sid, reply, size, _ = args
                        payload = buf[end + 2 : -2]
                        if self._msg_type is None:
                            return [self._make_msg(subject, sid, reply, None, payload)]
                        return [self._new_msg(subject, sid, reply, None, payload)]
            if len(buf) < self._need:
                self._chunks.append(buf)
                self._have = len(buf)
                return []
        events: list[Any] = []
        append = events.append
        make_msg = self._make_msg
        mt = self._msg_type
        owner = self._owner
        new = object.__new__
        heads = self._heads
        heads_get = heads.get
        find = buf.find
        n = len(buf)
        pos = 0
        need = 1
        in_line = False
        # The fast path: buf split at every CRLF once; parts[i] starts at byte p. Every
        # operation ends with a CRLF, so an operation boundary is always a part boundary.
        parts: list[bytes] | None = None
        i = p = 0
        lim = -1 if n > _SPLIT_MAX else 0  # parts[i] may be a control line while i < lim
        run = MsgRun(-1)  # never appended: sids are never negative
        run_sid = -1
        run_add: Callable[[Any], None] = events.append
        while pos < n:
            if lim >= 0 and buf[pos] == 77:  # "M": maybe a MSG line seen before (HMSG: never)
                if parts is None:
                    parts = buf.split(b"\r\n")
                    lim = len(parts) - 2  # the last part is not followed by CRLF
                while p < pos:
                    p += len(parts[i]) + 2
                    i += 1
                if p != pos:  # cannot happen (see above); parse by position then
                    lim = -1
                first = i
                while i < lim:
                    known = heads_get(parts[i])
                    if known is None:
                        # a new line: checked here (a line with a reply subject, such as
                        # a JetStream delivery or a reply to a request, is seen once:
                        # not worth a place in the cache)
                        line = parts[i]
                        if line[:4] != b"MSG " or len(line) > MAX_CONTROL_LINE:
                            break
                        known = _msg_args(line)
                        if known[2] is None:
                            if len(heads) >= 256:
                                heads.clear()
                            heads[line] = known
                    subject, sid, reply, size, step = known
                    data = parts[i + 1]
                    if len(data) != size:  # the payload holds a CRLF (or the size lied)
                        break
                    m: Any
                    if mt is None:
                        m = make_msg(subject, sid, reply, None, data)
                    else:
                        m = new(mt)
                        m._client = owner
                        m.subject = subject
                        m.sid = sid
                        m.reply = reply
                        m._hdr = None
                        m._headers = None
                        m.data = data
                    if sid != run_sid:
                        run = MsgRun(sid)
                        run_add = run.msgs.append
                        append(run)
                        run_sid = sid
                    run_add(m)
                    run.nbytes += size
                    i += 2
                    p += step
                if i != first:
                    pos = p
                    continue
            run_sid = -1  # what follows starts a new run
            end = find(b"\r\n", pos)
            if end < 0:
                self._check_partial_line(buf, pos, n)
                need = n - pos + 1
                in_line = need > 6  # the operation was checked on its first 6 bytes
                break
            if end - pos > MAX_CONTROL_LINE:
                raise ProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes")
            line = buf[pos:end]
            if line[:4] == b"MSG ":
                subject, sid, reply, size, step = self._msg_line(line)
                start = end + 2
                stop = start + size
                if stop + 2 > n:
                    need = stop + 2 - pos
                    break
                if buf[stop] != 13 or buf[stop + 1] != 10:  # CRLF (indexing: no slice object)
                    raise ProtocolError("MSG payload is not followed by CRLF: the size field lied")
                append(
                    make_msg(subject, sid, reply, None, buf[start:stop])
                    if mt is None
                    else self._new_msg(subject, sid, reply, None, buf[start:stop])
                )
                pos = stop + 2
                continue
            parts_ = line.split(None, 1)
            op = parts_[0].upper() if parts_ else b""
            # The operation starts the line and ends at a space, a tab or the line end (as
            # the cut-short check in _valid_prefix assumes): " PING", "PING\n" are unknown.
            if not line[:1].strip() or line[len(op) : len(op) + 1] not in (b"", b" ", b"\t"):
                raise ProtocolError(f"unknown protocol operation: {_show(line)}")
            if op == b"MSG" or op == b"HMSG":  # HMSG, and MSG in lower case or with tabs
                subject, sid, reply, hsize, size = _msg_line(op, parts_, line)
                start = end + 2
                stop = start + size
                if stop + 2 > n:
                    need = stop + 2 - pos
                    break
                if buf[stop : stop + 2] != b"\r\n":
                    raise ProtocolError(f"{op.decode()} payload is not followed by CRLF: the size field lied")
                hdr = None
                if op == b"HMSG":
                    hdr = buf[start : start + hsize]
                    if not hdr.startswith(b"NATS/"):
                        raise ProtocolError("HMSG header block does not start with NATS/1.0")
                payload = buf[start + hsize : stop]
                append(
                    make_msg(subject, sid, reply, hdr, payload)
                    if mt is None
                    else self._new_msg(subject, sid, reply, hdr, payload)
                )
                pos = stop + 2
                continue
            pos = end + 2
            if op == b"PING" and len(parts_) == 1:
                append(PING)
            elif op == b"PONG" and len(parts_) == 1:
                append(PONG)
            elif op == b"+OK" and len(parts_) == 1:
                append(OK)
            elif op == b"-ERR":
                text = parts_[1].strip() if len(parts_) > 1 else b""
                if len(text) >= 2 and text[:1] == b"'" and text[-1:] == b"'":
                    text = text[1:-1]
                append(Err(text.decode("utf-8", "replace")))
            elif op == b"INFO":
                try:
                    info = _decode_json(parts_[1]) if len(parts_) > 1 else None
                except (ValueError, RecursionError):
                    info = None
                if not isinstance(info, dict):
                    raise ProtocolError("INFO is not a JSON object")
                append(Info(info))
            else:
                raise ProtocolError(f"unknown protocol operation: {_show(line)}")
        if pos < n:
            rest = buf[pos:]
            self._chunks = [rest]
            self._have = len(rest)
            self._need = need
            self._in_line = in_line
        else:
            self._have = 0
            self._need = 1
            self._in_line = False
        return events

    def _msg_line(self, line: bytes) -> tuple[str, int, str | None, int, int]:
        """A ``MSG `` control line's values (see :func:`_msg_args`), from the cache of
        lines seen before; a new line without a reply subject is kept (one with a reply,
        such as a JetStream delivery or a reply to a request, is seen once)."""
        heads = self._heads
        known = heads.get(line)
        if known is None:
            known = _msg_args(line)
            if known[2] is None:
                if len(heads) >= 256:
                    heads.clear()
                heads[line] = known
        return known

    def _new_msg(self, subject: str, sid: int, reply: str | None, hdr: bytes | None, data: bytes) -> Any:
        mt = self._msg_type
        m: Any = object.__new__(mt)  # type: ignore[arg-type]
        m._client = self._owner
        m.subject = subject
        m.sid = sid
        m.reply = reply
        m._hdr = hdr
        m._headers = None
        m.data = data
        return m

    @staticmethod
    def _check_partial_line(buf: bytes, pos: int, n: int) -> None:
        if n - pos - (buf[n - 1] == 13) > MAX_CONTROL_LINE:  # a final CR may be the line's own
            raise ProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes without CRLF")
        head = buf[pos : pos + 6]
        if not _valid_prefix(head):
            raise ProtocolError(f"unknown protocol operation: {_show(head)}")


def _msg_args(line: bytes) -> tuple[str, int, str | None, int, int]:
    """Check a ``MSG `` line (without CRLF): ``(subject, sid, reply, size, bytes taken)``."""
    args = line[4:].split()
    nargs = len(args)
    if nargs == 3:
        subj, sidb, sizeb = args
        reply = None
    elif nargs == 4:
        subj, sidb, replyb, sizeb = args
        try:
            reply = replyb.decode()
        except UnicodeDecodeError:  # another client's non-UTF-8 bytes: kept readable
            reply = replyb.decode("utf-8", "replace")
    else:
        raise ProtocolError(f"malformed MSG line: {_show(line)}")
    if not sizeb.isdigit() or not sidb.isdigit() or len(sizeb) > 20 or len(sidb) > 20:
        raise ProtocolError(f"malformed MSG line: {_show(line)}")
    size = int(sizeb)
    sid = int(sidb)
    if size > MAX_PAYLOAD_SIZE:
        raise ProtocolError(f"MSG size {size} is over the {MAX_PAYLOAD_SIZE} byte limit")
    try:
        subject = subj.decode()
    except UnicodeDecodeError:
        subject = subj.decode("utf-8", "replace")
    return subject, sid, reply, size, len(line) + size + 4


def _msg_line(op: bytes, parts: list[bytes], line: bytes) -> tuple[str, int, str | None, int, int]:
    """Check the arguments of a MSG or HMSG line: ``(subject, sid, reply, hdr size, total size)``."""
    args = parts[1].split() if len(parts) > 1 else []
    hmsg = op == b"HMSG"
    nums = args[-2:] if hmsg else args[-1:]
    if len(args) - hmsg not in (3, 4) or not args[1].isdigit() or len(args[1]) > 20:
        raise ProtocolError(f"malformed {op.decode()} line: {_show(line)}")
    if any(not x.isdigit() or len(x) > 20 for x in nums):
        raise ProtocolError(f"malformed {op.decode()} line: {_show(line)}")
    size = int(nums[-1])
    hsize = int(nums[0]) if hmsg else 0
    if size > MAX_PAYLOAD_SIZE:
        raise ProtocolError(f"{op.decode()} size {size} is over the {MAX_PAYLOAD_SIZE} byte limit")
    if hsize > size:
        raise ProtocolError(f"HMSG header size {hsize} is larger than the total size {size}")
    reply = args[2].decode("utf-8", "replace") if len(args) - hmsg == 4 else None
    return args[0].decode("utf-8", "replace"), int(args[1]), reply, hsize, size


def _show(b: bytes) -> str:
    """A short printable form of protocol bytes for error messages."""
    s = b[:80].decode("ascii", "backslashreplace")
    return repr(s + ("..." if len(b) > 80 else ""))


# --- validation -------------------------------------------------------------------------

# whitespace and control characters (C0, DEL, C1) and any Unicode whitespace
# and lone surrogates (which cannot be encoded as UTF-8)
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\s\ud800-\udfff]")


def validate_subject(subject: object, what: str = "subject") -> str:
    """Return *subject* if valid, else raise :class:`~natsync.errors.BadSubjectError`.

    Valid: a non-empty str without whitespace or control characters and without
    empty tokens (``a..b``, a leading or trailing dot).
    """
    if type(subject) is not str:
        raise BadSubjectError(f"{what} must be str, not {type(subject).__name__}")
    if not subject:
        raise BadSubjectError(f"{what} is empty: give a subject such as 'orders.new'")
    # ASCII (the common case, checked in O(1)): the bad characters are the controls and
    # DEL, which isprintable() finds, and the space; the regex only for the rest
    if (not subject.isprintable() or " " in subject) if subject.isascii() else _BAD_CHARS.search(subject):
        raise BadSubjectError(f"{what} {subject!r} contains whitespace or control characters: remove them")
    if subject[0] == "." or subject[-1] == "." or ".." in subject:
        raise BadSubjectError(f"{what} {subject!r} has an empty token: remove the extra '.'")
    return subject


def validate_queue(queue: object) -> str:
    """Return *queue* if it is a valid queue group name.

    Raises:
        BadSubjectError: for a name that is not a str, is empty, or holds whitespace or
            control characters.
    """
    if type(queue) is not str:
        raise BadSubjectError(f"queue must be str, not {type(queue).__name__}")
    if not queue:
        raise BadSubjectError("queue is empty: give a queue group name or None")
    if _BAD_CHARS.search(queue):
        raise BadSubjectError(f"queue {queue!r} contains whitespace or control characters: remove them")
    return queue


# --- encoders ---------------------------------------------------------------------------


def encode_connect(options: dict[str, Any]) -> bytes:
    """``CONNECT {json}\\r\\n``."""
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + b"\r\n"


def pub_prefix(subject: str, reply: str | None = None) -> bytes:
    """The validated ``PUB subject [reply]`` prefix, with its trailing space (without the size)."""
    validate_subject(subject)
    if reply:
        validate_subject(reply, "reply subject")
        return b"PUB " + subject.encode() + b" " + reply.encode() + b" "
    return b"PUB " + subject.encode() + b" "


def encode_pub(subject: str, payload: bytes, reply: str | None = None, hdr: bytes | None = None) -> bytes:
    """``PUB``/``HPUB`` for *subject*; *hdr* is an encoded header block or None.

    The subject and reply are validated; the payload is taken as is.
    """
    validate_subject(subject)
    tail = b" " + reply.encode() if reply and validate_subject(reply, "reply subject") else b""
    if hdr is None:
        return b"PUB %s%s %d\r\n%s\r\n" % (subject.encode(), tail, len(payload), payload)
    hl = len(hdr)
    return b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject.encode(), tail, hl, hl + len(payload), hdr, payload)


def encode_sub(subject: str, sid: int, queue: str | None = None) -> bytes:
    """``SUB subject [queue] sid``."""
    if queue:
        return b"SUB %s %s %d\r\n" % (subject.encode(), queue.encode(), sid)
    return b"SUB %s %d\r\n" % (subject.encode(), sid)


def encode_unsub(sid: int, max_msgs: int | None = None) -> bytes:
    """``UNSUB sid [max]``."""
    if max_msgs:
        return b"UNSUB %d %d\r\n" % (sid, max_msgs)
    return b"UNSUB %d\r\n" % sid
