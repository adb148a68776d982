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

MAX_CONTROL_LINE: Final = 1024 * 1024  # a line longer than this without CRLF is an error
MAX_PAYLOAD_SIZE: Final = 64 * 1024 * 1024  # any size field above this is an error

PING_CMD: Final = b"PING\r\n"
PONG_CMD: Final = b"PONG\r\n"


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PING: Final = _Marker("PING")
PONG: Final = _Marker("PONG")
OK: Final = _Marker("OK")


class Info:
    """An INFO from the server: ``data`` is the decoded JSON object."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Info({self.data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Info) and other.data == self.data


class Err:
    """A ``-ERR`` from the server: ``text`` without the quotes."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Err({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Err) and other.text == self.text


MakeMsg = Callable[[str, int, "str | None", "bytes | None", bytes], Any]


def _default_make_msg(subject: str, sid: int, reply: str | None, hdr: bytes | None, data: bytes) -> Any:
    return (subject, sid, reply, hdr, data)


# Each known operation with the byte that must follow its name.
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


class Parser:
    """Incremental parser of the server-to-client protocol.

    ``feed(data)`` takes any chunk of the byte stream and returns the events
    completed by it; partial operations are kept until more bytes arrive. Any
    chunking of a stream gives the same events. Malformed input raises
    :class:`ProtocolError`; after that the parser must not be used again.
    """

    __slots__ = ("_chunks", "_have", "_need", "_in_line", "_make_msg", "_heads")

    def __init__(self, make_msg: MakeMsg | None = None) -> None:
        self._chunks: list[bytes] = []
        self._have = 0  # bytes held in _chunks
        self._need = 1  # bytes needed before another parse attempt is worth it
        # True while _chunks hold an unfinished control line whose operation was already
        # checked: more bytes without a line end need no re-join and re-scan (which would
        # make a slowly arriving line quadratic).
        self._in_line = False
        self._make_msg: MakeMsg = make_msg or _default_make_msg
        # MSG arguments without reply ("<subject> <sid> <size>") already validated, with
        # their parsed values: a stream repeats them, and a lookup costs less than a parse.
        self._heads: dict[bytes, tuple[str, int, int]] = {}

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed."""
        return self._have

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Parse *data* and return the list of completed events."""
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
            if len(buf) < self._need:
                self._chunks.append(buf)
                self._have = len(buf)
                return []
        events: list[Any] = []
        append = events.append
        make_msg = self._make_msg
        heads = self._heads
        find = buf.find
        n = len(buf)
        pos = 0
        need = 1
        in_line = False
        while pos < n:
            end = find(b"\r\n", pos)
            if end < 0:
                self._check_partial_line(buf, pos, n)
                need = n - pos + 1
                in_line = need > 6  # the operation was checked on its first 6 bytes
                break
            if buf.startswith(b"MSG ", pos):  # fast path (one call, no slice)
                head = buf[pos + 4 : end]
                known = heads.get(head)
                if known is not None:
                    subject, sid, size = known
                    start = end + 2
                    stop = start + size
                    if stop + 2 > n:
                        need = stop + 2 - pos
                        break
                    if buf[stop] != 13 or buf[stop + 1] != 10:
                        raise ProtocolError("MSG payload is not followed by CRLF: the size field lied")
                    append(make_msg(subject, sid, None, None, buf[start:stop]))
                    pos = stop + 2
                    continue
                if end - pos > MAX_CONTROL_LINE:
                    raise ProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes")
                args = head.split()
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
                    raise ProtocolError(f"malformed MSG line: {_show(buf[pos:end])}")
                if not sizeb.isdigit() or not sidb.isdigit():
                    raise ProtocolError(f"malformed MSG line: {_show(buf[pos:end])}")
                try:
                    size = int(sizeb)
                    sid = int(sidb)
                except ValueError:  # more digits than int() accepts
                    raise ProtocolError(f"malformed MSG line: {_show(buf[pos:end])}") from None
                if size > MAX_PAYLOAD_SIZE:
                    raise ProtocolError(f"MSG size {size} is over the {MAX_PAYLOAD_SIZE} byte limit")
                start = end + 2
                stop = start + size
                if stop + 2 > n:
                    need = stop + 2 - pos
                    break
                if buf[stop] != 13 or buf[stop + 1] != 10:  # CRLF (indexing: no slice object)
                    raise ProtocolError("MSG payload is not followed by CRLF: the size field lied")
                try:
                    subject = subj.decode()
                except UnicodeDecodeError:
                    subject = subj.decode("utf-8", "replace")
                if reply is None:
                    if len(heads) >= 256:
                        heads.clear()
                    heads[head] = (subject, sid, size)
                append(make_msg(subject, sid, reply, None, buf[start:stop]))
                pos = stop + 2
                continue
            if end - pos > MAX_CONTROL_LINE:
                raise ProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes")
            line = buf[pos:end]
            parts = line.split(None, 1)
            op = parts[0].upper() if parts else b""
            # The operation starts the line and ends at a space, a tab or the line end (as
            # the cut-short check in _valid_prefix assumes): " PING", "PING\n" are unknown.
            if not line[:1].strip() or line[len(op) : len(op) + 1] not in (b"", b" ", b"\t"):
                raise ProtocolError(f"unknown protocol operation: {_show(line)}")
            if op == b"MSG" or op == b"HMSG":  # HMSG, and MSG in lower case or with tabs
                subject, sid, reply, hsize, size = _msg_line(op, parts, line)
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
                append(make_msg(subject, sid, reply, hdr, buf[start + hsize : stop]))
                pos = stop + 2
                continue
            pos = end + 2
            if op == b"PING" and len(parts) == 1:
                append(PING)
            elif op == b"PONG" and len(parts) == 1:
                append(PONG)
            elif op == b"+OK" and len(parts) == 1:
                append(OK)
            elif op == b"-ERR":
                text = parts[1].strip() if len(parts) > 1 else b""
                if len(text) >= 2 and text[:1] == b"'" and text[-1:] == b"'":
                    text = text[1:-1]
                append(Err(text.decode("utf-8", "replace")))
            elif op == b"INFO":
                try:
                    info = json.loads(parts[1]) if len(parts) > 1 else None
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

    @staticmethod
    def _check_partial_line(buf: bytes, pos: int, n: int) -> None:
        if n - pos - (buf[n - 1] == 13) > MAX_CONTROL_LINE:  # a final CR may be the line's own
            raise ProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes without CRLF")
        head = buf[pos : pos + 6]
        if not _valid_prefix(head):
            raise ProtocolError(f"unknown protocol operation: {_show(head)}")


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
    """Return *subject* if valid, else raise :class:`BadSubjectError`.

    Valid: a non-empty str without whitespace or control characters and without
    empty tokens (``a..b``, a leading or trailing dot).
    """
    if type(subject) is not str:
        raise BadSubjectError(f"{what} must be str, not {type(subject).__name__}")
    if not subject:
        raise BadSubjectError(f"{what} is empty: give a subject such as 'orders.new'")
    if _BAD_CHARS.search(subject):
        raise BadSubjectError(f"{what} {subject!r} contains whitespace or control characters: remove them")
    if subject[0] == "." or subject[-1] == "." or ".." in subject:
        raise BadSubjectError(f"{what} {subject!r} has an empty token: remove the extra '.'")
    return subject


def validate_queue(queue: object) -> str:
    """Return *queue* if it is a valid queue group name, else raise :class:`BadSubjectError`."""
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
    """The validated ``PUB subject [reply] `` prefix (without the size)."""
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
