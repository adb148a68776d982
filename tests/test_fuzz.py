"""Property-based tests of the protocol parser, the encoders and the header codec.

The number of examples comes from ``NATSYNC_FUZZ_EXAMPLES`` (300 by default so that
``make test`` stays fast; ``make fuzz`` sets 100000). Without the variable the runs are
derandomized (the same examples every time, no example database); with it they are
random and failures are saved for replay.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natsync._protocol import (
    MAX_CONTROL_LINE,
    MAX_PAYLOAD_SIZE,
    OK,
    PING,
    PONG,
    Err,
    Info,
    MsgRun,
    Parser,
    encode_pub,
    validate_queue,
    validate_subject,
)
from natsync.errors import BadHeaderError, BadSubjectError, ProtocolError
from natsync.headers import Headers, decode_headers, encode_headers

FUZZING = "NATSYNC_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("NATSYNC_FUZZ_EXAMPLES", "300"))

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(divisor: int = 1) -> Callable[[F], F]:
    """Hypothesis settings for these tests; *divisor* scales down examples of costly tests."""
    kwargs: dict[str, Any] = {}
    if not FUZZING:
        kwargs["database"] = None
    return settings(
        max_examples=max(5, EXAMPLES // divisor),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=not FUZZING,
        **kwargs,
    )


# ------------------------------------------------------------------------------ strategies


def _subject_char_ok(c: str) -> bool:
    # independent restatement of the rule: no whitespace, no C0/DEL/C1 controls
    o = ord(c)
    return not (o <= 0x20 or 0x7F <= o <= 0x9F or c.isspace() or c == ".")


token_chars = st.one_of(
    st.sampled_from([chr(c) for c in range(33, 127) if c != ord(".")]),
    st.characters(exclude_categories=["Cs"]).filter(_subject_char_ok),
)
tokens = st.one_of(st.text(token_chars, min_size=1, max_size=8), st.sampled_from(["*", ">", "_INBOX", "a"]))
subjects = st.lists(tokens, min_size=1, max_size=5).map(".".join)
sids = st.one_of(st.integers(0, 1000), st.integers(0, 2**64 - 1))

payloads = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from([b"\r\n", b"\r", b"\n", b"PING\r\n", b"MSG a 1 1\r\n", b"x", b"\x00", b" "]),
        max_size=10,
    ).map(b"".join),
)

header_names = st.text(
    st.sampled_from([chr(c) for c in range(33, 127) if c != ord(":")]), min_size=1, max_size=12
)
header_values = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=20)
header_pairs = st.lists(st.tuples(header_names, header_values), max_size=8)

# A separator between fields: a run of spaces and tabs, mostly one space.
seps = st.one_of(st.just(b" "), st.text(" \t", min_size=1, max_size=3).map(str.encode))

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _case(draw: st.DrawFn, op: str) -> bytes:
    flags = draw(st.lists(st.booleans(), min_size=len(op), max_size=len(op)))
    return "".join(c.lower() if f else c for c, f in zip(op, flags)).encode()


@st.composite
def server_ops(draw: st.DrawFn) -> tuple[bytes, Any]:
    """One server-to-client operation: (wire bytes as a server could send them, expected event)."""
    kind = draw(st.sampled_from(["MSG", "HMSG", "PING", "PONG", "+OK", "-ERR", "INFO"]))
    if kind in ("MSG", "HMSG"):
        subject = draw(subjects)
        sid = draw(sids)
        reply = draw(st.none() | subjects)
        payload = draw(payloads)
        hdr: bytes | None = None
        sizes = [b"%d" % len(payload)]
        if kind == "HMSG":
            hdr = draw(
                st.one_of(
                    header_pairs.map(encode_headers),
                    st.sampled_from(
                        [
                            b"NATS/1.0 503\r\n\r\n",
                            b"NATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n",
                            b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 1\r\n\r\n",
                        ]
                    ),
                )
            )
            sizes = [b"%d" % len(hdr), b"%d" % (len(hdr) + len(payload))]
        fields = [_case(draw, kind), subject.encode(), b"%d" % sid]
        if reply is not None:
            fields.append(reply.encode())
        fields += sizes
        line = fields[0]
        for f in fields[1:]:
            line += draw(seps) + f
        if draw(st.booleans()):
            line += draw(seps)
        return line + b"\r\n" + (hdr or b"") + payload + b"\r\n", (subject, sid, reply, hdr, payload)
    if kind in ("PING", "PONG", "+OK"):
        trail = draw(st.sampled_from([b"", b"", b" ", b"\t", b" \t "]))
        return _case(draw, kind) + trail + b"\r\n", {"PING": PING, "PONG": PONG, "+OK": OK}[kind]
    if kind == "-ERR":
        text = draw(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=40))
        return _case(draw, kind) + draw(seps) + b"'" + text.encode() + b"'\r\n", Err(text)
    data = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
    body = json.dumps(data, ensure_ascii=draw(st.booleans())).encode()
    trail = draw(st.sampled_from([b"", b" ", b"\t"]))
    return _case(draw, "INFO") + draw(seps) + body + trail + b"\r\n", Info(data)


streams = st.lists(server_ops(), max_size=12)

_INTERESTING = [
    b"\r\n", b"\r", b"\n", b" ", b"\t", b"-", b"0", b"9999999999", b"67108865", b"MSG ", b"HMSG ", b"INFO ",
    b"-ERR ", b"PING", b"NATS/1.0", b"{", b"[", b"\xff", b"\x00",
]  # fmt: skip


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """A valid stream damaged by random byte flips, insertions, deletions and truncation."""
    data = bytearray(b"".join(w for w, _ in draw(st.lists(server_ops(), max_size=8))))
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]))
        i = draw(st.integers(0, len(data)))
        if kind == "flip" and i < len(data):
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[i:i] = draw(st.one_of(st.sampled_from(_INTERESTING), st.binary(min_size=1, max_size=8)))
        elif kind == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[i:]
        elif kind == "duplicate":
            j = draw(st.integers(i, len(data)))
            data[j:j] = data[i:j]
    return bytes(data)


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def pieces_of(data: bytes, max_pieces: int = 30) -> st.SearchStrategy[list[bytes]]:
    """*data* split at random points (some pieces may be empty)."""
    return st.lists(st.integers(0, len(data)), max_size=max_pieces).map(lambda pts: split_at(data, pts))


def _largest_number(data: bytes) -> int:
    """An upper bound of any size field the stream could declare."""
    best = 0
    for digits in re.findall(rb"\d+", data):
        best = max(best, MAX_PAYLOAD_SIZE if len(digits) > 9 else min(int(digits), MAX_PAYLOAD_SIZE))
    return best


def _check_event(ev: Any) -> None:
    if ev is PING or ev is PONG or ev is OK:
        return
    if isinstance(ev, Info):
        assert type(ev.data) is dict
        return
    if isinstance(ev, Err):
        assert type(ev.text) is str
        ev.text.encode()  # never a lone surrogate
        return
    subject, sid, reply, hdr, data = ev
    assert type(subject) is str and type(sid) is int and sid >= 0
    assert reply is None or type(reply) is str
    assert hdr is None or (type(hdr) is bytes and hdr.startswith(b"NATS/"))
    assert type(data) is bytes
    subject.encode()
    if reply is not None:
        reply.encode()


class SlotMsg:
    """A message type for ``Parser(msg_type=...)`` (the slots it fills, as natsync.Msg)."""

    __slots__ = ("_client", "subject", "sid", "reply", "_hdr", "_headers", "data")


OWNER = object()


def _slot_as_tuple(m: Any) -> tuple[Any, ...]:
    assert type(m) is SlotMsg and m._client is OWNER and m._headers is None
    return (m.subject, m.sid, m.reply, m._hdr, m.data)


def runs_parser() -> Parser:
    return Parser(msg_type=SlotMsg, owner=OWNER)


def feed_runs_flat(p: Parser, piece: bytes) -> list[Any]:
    """``p.feed_runs(piece)`` checked (a run holds messages of its sid, its byte count)
    and flattened into the tuples ``Parser().feed`` gives."""
    out: list[Any] = []
    for ev in p.feed_runs(piece):
        if type(ev) is MsgRun:
            assert ev.msgs and all(m.sid == ev.sid for m in ev.msgs)
            assert ev.nbytes == sum(len(m.data) + len(m._hdr or b"") for m in ev.msgs)
            out += [_slot_as_tuple(m) for m in ev.msgs]
        elif type(ev) is SlotMsg:
            out.append(_slot_as_tuple(ev))
        else:
            out.append(ev)
    return out


def feed_robustly(pieces: list[bytes], runs: bool = False) -> tuple[list[Any], bool]:
    """Feed *pieces* to a new parser: (events, whether it raised ProtocolError).

    Any other exception fails the test. After every feed the buffered bytes must stay
    within a control line, the chunk just fed and the largest size the stream declares.
    With *runs* the parser builds messages itself and :meth:`Parser.feed_runs` is used.
    """
    p = runs_parser() if runs else Parser()
    largest = _largest_number(b"".join(pieces))
    events: list[Any] = []
    try:
        for piece in pieces:
            got = feed_runs_flat(p, piece) if runs else p.feed(piece)
            assert p.buffered <= MAX_CONTROL_LINE + len(piece) + largest + 4, (
                f"{p.buffered} bytes buffered: more than a control line, a chunk and a payload"
            )
            for ev in got:
                _check_event(ev)
            events += got
    except ProtocolError:
        return events, True
    return events, False


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def check_chunking_does_not_matter(blob: bytes, pieces: list[bytes], runs: bool = False) -> None:
    """Fed one byte at a time, no event is lost to an error in the same feed: the reference.

    Any other chunking gives a prefix of its events (events parsed in a feed that then
    raises are lost with it), all of them if it did not raise, and raises if and only if
    the reference does.
    """
    ref, ref_err = feed_robustly(bytewise(blob))
    got, err = feed_robustly(pieces, runs)
    assert err == ref_err
    assert got == ref[: len(got)]
    if not err:
        assert got == ref


# ----------------------------------------------------------------- (a) chunking invariance


@fuzz()
@given(ops=streams, data=st.data())
def test_any_split_of_a_valid_stream_gives_the_same_events(
    ops: list[tuple[bytes, Any]], data: st.DataObject
) -> None:
    wire = b"".join(w for w, _ in ops)
    expected = [e for _, e in ops]
    p = Parser()
    assert p.feed(wire) == expected
    assert p.buffered == 0
    p = Parser()
    got: list[Any] = []
    for piece in data.draw(pieces_of(wire)):
        got += p.feed(piece)
    assert got == expected
    assert p.buffered == 0


@fuzz()
@given(ops=streams)
def test_valid_stream_byte_at_a_time(ops: list[tuple[bytes, Any]]) -> None:
    wire = b"".join(w for w, _ in ops)
    p = Parser()
    got: list[Any] = []
    for i in range(len(wire)):
        got += p.feed(wire[i : i + 1])
    assert got == [e for _, e in ops]


# --------------------------------------------------------------- (b) robustness and memory


@fuzz()
@given(data=st.data(), blob=st.binary(max_size=2000))
def test_arbitrary_bytes_only_protocol_errors(data: st.DataObject, blob: bytes) -> None:
    check_chunking_does_not_matter(blob, data.draw(pieces_of(blob)))


@fuzz()
@given(data=st.data(), blob=mutated_streams())
def test_mutated_streams_only_protocol_errors(data: st.DataObject, blob: bytes) -> None:
    check_chunking_does_not_matter(blob, data.draw(pieces_of(blob)))


# Streams that repeat their operations, so that the parser's fast path (control lines it
# has seen before, taken from a buffer split at every CRLF) runs on most messages.
repeated_streams = st.tuples(streams, st.integers(2, 5)).map(lambda t: t[0] * t[1])


@fuzz()
@given(ops=repeated_streams, data=st.data())
def test_any_split_of_repeated_streams_feed_runs_gives_the_same_events(
    ops: list[tuple[bytes, Any]], data: st.DataObject
) -> None:
    wire = b"".join(w for w, _ in ops)
    expected = [e for _, e in ops]
    p = runs_parser()
    assert feed_runs_flat(p, wire) == expected
    assert p.buffered == 0
    p = runs_parser()
    got: list[Any] = []
    for piece in data.draw(pieces_of(wire)):
        got += feed_runs_flat(p, piece)
    assert got == expected
    assert p.buffered == 0


@st.composite
def mutated_repeated_streams(draw: st.DrawFn) -> bytes:
    """A repeated valid stream with one to three bytes damaged, inserted or cut."""
    data = bytearray(b"".join(w for w, _ in draw(repeated_streams)))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["set", "insert", "delete"]))
        if kind == "set" and i < len(data):
            data[i] = draw(st.sampled_from(b"\r\n 0912Mx\x00"))
        elif kind == "insert":
            data[i:i] = draw(st.sampled_from(_INTERESTING))
        else:
            del data[i : i + draw(st.integers(1, 4))]
    return bytes(data)


@fuzz()
@given(data=st.data(), blob=st.one_of(mutated_streams(), mutated_repeated_streams()))
def test_mutated_streams_feed_runs_only_protocol_errors(data: st.DataObject, blob: bytes) -> None:
    check_chunking_does_not_matter(blob, data.draw(pieces_of(blob)), runs=True)


@fuzz()
@given(ops=streams, blob=mutated_streams())
def test_valid_prefix_then_garbage_keeps_valid_events(ops: list[tuple[bytes, Any]], blob: bytes) -> None:
    wire = b"".join(w for w, _ in ops)
    events, _ = feed_robustly(bytewise(wire + blob))
    expected = [e for _, e in ops]
    assert events[: len(expected)] == expected


@fuzz(divisor=10)
@given(
    ops=st.lists(server_ops(), max_size=3),
    prefix=st.sampled_from(
        [
            b"INFO ",
            b'INFO {"a":"',
            b"-ERR '",
            b"MSG a 1 ",
            b"msg\ta\t1\t",
            b"HMSG a 1 ",
            b"PING ",
            b"+OK\t",
            b"",
        ]
    ),
    pattern=st.binary(min_size=1, max_size=64).filter(
        lambda b: b"\r\n" not in b + b and not b.startswith(b"\n")
    ),
    chunk=st.integers(16 * 1024, 256 * 1024),
)
def test_control_line_is_capped(
    ops: list[tuple[bytes, Any]], prefix: bytes, pattern: bytes, chunk: int
) -> None:
    """A line that never ends is an error by 1 MiB, and never holds more than that."""
    head = b"".join(w for w, _ in ops)
    line = prefix + (pattern * (MAX_CONTROL_LINE // len(pattern) + 2))[: MAX_CONTROL_LINE + 10]
    stream = head + line
    p = Parser()
    with pytest.raises(ProtocolError):
        for i in range(0, len(stream), chunk):
            p.feed(stream[i : i + chunk])
            assert p.buffered <= MAX_CONTROL_LINE + 1


# ------------------------------------------------------------------ (c) header round trip


def _grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, v in pairs:
        out.setdefault(n, []).append(v)
    return out


@fuzz()
@given(pairs=header_pairs, form=st.sampled_from(["pairs", "headers", "dict", "dict-of-lists", "built"]))
def test_headers_round_trip(pairs: list[tuple[str, str]], form: str) -> None:
    if form == "dict":
        given_: Any = dict(pairs)
        expected = list(given_.items())
    elif form == "dict-of-lists":
        given_ = _grouped(pairs)
        expected = [(n, v) for n, vs in given_.items() for v in vs]
    elif form == "headers":
        given_ = Headers(pairs)
        expected = pairs
    elif form == "built":
        given_ = Headers()
        for n, v in pairs:
            given_.add(n, v)
        expected = pairs
    else:
        given_ = pairs
        expected = pairs
    block = encode_headers(given_)
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    assert block.count(b"\r\n") == len(expected) + 2, "one line per value"
    decoded = decode_headers(block)
    # Blanks around a value are not significant in the NATS/1.0 (HTTP-like) format.
    assert decoded.multi_items() == [(n, v.strip(" \t")) for n, v in expected]
    assert decoded.status is None
    for n, v in expected:
        assert n in decoded and n.upper() in decoded and n.lower() in decoded
        assert v.strip(" \t") in decoded.get_all(n)


@fuzz()
@given(pairs=header_pairs.filter(lambda ps: all(v == v.strip(" \t") for _, v in ps)))
def test_headers_round_trip_equal(pairs: list[tuple[str, str]]) -> None:
    h = Headers(pairs)
    assert decode_headers(encode_headers(h)) == h


SPECIALS = list(" \t\r\n\x00\x1f\x7f\x85\xa0\u2028\u3000\ufeff\ud800\udfff.*>:ü")
# any str; and valid-looking strings with one character that matters to the validators
any_text = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
    st.builds(
        lambda a, c, b: a + c + b, st.text(token_chars, max_size=4), st.sampled_from(SPECIALS), subjects
    ),
)


@fuzz()
@given(name=any_text, value=any_text)
def test_any_header_is_rejected_cleanly_or_round_trips(name: str, value: str) -> None:
    try:
        block = encode_headers({name: value})
    except BadHeaderError:
        return
    assert decode_headers(block).multi_items() == [(name, value.strip(" \t"))]


@fuzz()
@given(
    status=st.integers(100, 999),
    desc=st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=30),
)
def test_status_line_parses(status: int, desc: str) -> None:
    h = decode_headers(f"NATS/1.0 {status} {desc}\r\nK: v\r\n\r\n".encode())
    assert h.status == status
    assert h.description == desc.strip()
    assert h.multi_items() == [("K", "v")]


# ------------------------------------------------------------ (d) publish then echo back


def _echo_as_server(wire: bytes, sid: int) -> bytes:
    """Turn a client's PUB/HPUB into the MSG/HMSG the server would deliver for *sid*."""
    end = wire.index(b"\r\n")
    op, subject, *rest = wire[:end].split(b" ")
    new_op = {b"PUB": b"MSG", b"HPUB": b"HMSG"}[op]
    return b" ".join([new_op, subject, b"%d" % sid, *rest]) + wire[end:]


@fuzz()
@given(
    subject=subjects,
    reply=st.one_of(st.none(), st.just(""), subjects),
    payload=payloads,
    headers=st.none() | header_pairs,
    sid=sids,
)
def test_publish_round_trip(
    subject: str, reply: str | None, payload: bytes, headers: list[tuple[str, str]] | None, sid: int
) -> None:
    hdr = None if headers is None else encode_headers(headers)
    wire = encode_pub(subject, payload, reply=reply, hdr=hdr)
    assert wire.count(b"\r\n", 0, wire.index(b"\r\n") + 2) == 1
    events = Parser().feed(_echo_as_server(wire, sid))
    assert events == [(subject, sid, reply or None, hdr, payload)]


@fuzz()
@given(subject=any_text)
def test_validated_subjects_are_wire_safe(subject: str) -> None:
    try:
        validate_subject(subject)
    except BadSubjectError:
        return
    raw = subject.encode()  # must not raise: a valid subject can be sent as UTF-8
    assert raw and all(b > 0x20 and b != 0x7F for b in raw)
    assert b"" not in raw.split(b".")
    assert len(raw.split()) == 1
    events = Parser().feed(_echo_as_server(encode_pub(subject, b"x", reply=subject), 1))
    assert events == [(subject, 1, subject, None, b"x")]


@fuzz()
@given(queue=any_text)
def test_validated_queues_are_wire_safe(queue: str) -> None:
    try:
        validate_queue(queue)
    except BadSubjectError:
        return
    raw = queue.encode()
    assert raw and all(b > 0x20 and b != 0x7F for b in raw)
    assert len(raw.split()) == 1
