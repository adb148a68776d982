"""Tests of natsync.headers: the Headers mapping and the NATS/1.0 block codec (pure)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from natsync.errors import BadHeaderError
from natsync.headers import Headers, decode_headers, encode_headers, validate_header_name

# ------------------------------------------------------------------------- construction


def test_empty() -> None:
    h = Headers()
    assert len(h) == 0 and list(h) == [] and h.multi_items() == []
    assert h.status is None and h.description == ""
    assert Headers(None).multi_items() == []
    assert isinstance(h, MutableMapping)


@pytest.mark.parametrize(
    "data,items",
    [
        ({"K": "v"}, [("K", "v")]),
        ({"K": "v", "L": "w"}, [("K", "v"), ("L", "w")]),
        ({"K": ["a", "b"], "L": "c"}, [("K", "a"), ("K", "b"), ("L", "c")]),
        ({"K": ("a", "b")}, [("K", "a"), ("K", "b")]),
        ({"K": []}, []),
        ({"K": ""}, [("K", "")]),
        ([("K", "v"), ("K", "w"), ("L", "x")], [("K", "v"), ("K", "w"), ("L", "x")]),
        ((("K", "v"),), [("K", "v")]),
        (iter([("a", "1"), ("A", "2")]), [("a", "1"), ("A", "2")]),
        ([], []),
    ],
)
def test_construction(data: Any, items: list[tuple[str, str]]) -> None:
    assert Headers(data).multi_items() == items


def test_construction_from_headers_copies() -> None:
    h = Headers([("K", "v"), ("K", "w")])
    h.status = 503
    h.description = "No Responders"
    c = Headers(h)
    assert c.multi_items() == [("K", "v"), ("K", "w")]
    assert (c.status, c.description) == (503, "No Responders")
    c.add("K", "x")
    assert h.get_all("K") == ["v", "w"], "the copy must not share the original's list"


def test_multi_items_is_a_copy() -> None:
    h = Headers({"K": "v"})
    h.multi_items().append(("X", "y"))
    assert h.multi_items() == [("K", "v")]


@pytest.mark.parametrize(
    "data",
    [
        "K: v",
        b"K: v",
        123,
        {"K": 1},
        {"K": b"v"},
        {"K": None},
        {"K": ["a", 1]},
        {1: "v"},
        {b"K": "v"},
        [("K",)],
        [("K", "v", "w")],
        ["Kv"],
        [1],
        [("K", 1)],
        [(1, "v")],
    ],
    ids=repr,
)
def test_construction_rejects(data: Any) -> None:
    with pytest.raises(BadHeaderError):
        Headers(data)
    with pytest.raises(BadHeaderError):
        encode_headers(data)


# ----------------------------------------------------------------------- mapping methods


def test_getitem_first_value_and_case_insensitive() -> None:
    h = Headers([("Trace-Id", "a"), ("trace-id", "b"), ("X", "1")])
    assert h["Trace-Id"] == "a"
    assert h["TRACE-ID"] == "a"
    assert h["trace-id"] == "b", "an exact match wins over a case-insensitive one"
    assert h["x"] == "1"
    with pytest.raises(KeyError):
        h["missing"]
    with pytest.raises(KeyError):
        h[1]  # type: ignore[index]


def test_get() -> None:
    h = Headers({"K": ["v", "w"]})
    assert h.get("K") == "v"
    assert h.get("k") == "v"
    assert h.get("nope") is None
    assert h.get("nope", "d") == "d"


def test_setitem_replaces_all_values_keeps_position() -> None:
    h = Headers([("A", "1"), ("K", "v"), ("B", "2"), ("k", "w")])
    h["K"] = "x"
    assert h.multi_items() == [("A", "1"), ("K", "x"), ("B", "2")]
    h["b"] = "3"
    assert h.multi_items() == [("A", "1"), ("K", "x"), ("b", "3")], "the new spelling is kept"
    h["New"] = ""
    assert h.multi_items()[-1] == ("New", "")


@pytest.mark.parametrize("name,value", [("", "v"), ("a b", "v"), ("a:b", "v"), ("K", "a\r\nb"), ("K", 1)])
def test_setitem_and_add_validate(name: Any, value: Any) -> None:
    h = Headers({"K": "v"})
    with pytest.raises(BadHeaderError):
        h[name] = value
    with pytest.raises(BadHeaderError):
        h.add(name, value)
    assert h.multi_items() == [("K", "v")], "a rejected change must leave the headers as they were"


def test_add_and_get_all() -> None:
    h = Headers()
    h.add("K", "1")
    h.add("L", "x")
    h.add("K", "2")
    assert h.get_all("K") == ["1", "2"]
    assert h.get_all("k") == ["1", "2"]
    assert h.get_all("L") == ["x"]
    assert h.get_all("missing") == []
    assert h.multi_items() == [("K", "1"), ("L", "x"), ("K", "2")]
    h.add("k", "3")
    assert h.get_all("K") == ["1", "2"], "exact spelling matches first"
    assert h.get_all("KK") == []


def test_delitem_case_insensitive() -> None:
    h = Headers([("K", "1"), ("L", "x"), ("k", "2")])
    del h["K"]
    assert h.multi_items() == [("L", "x")]
    with pytest.raises(KeyError):
        del h["K"]
    del h["l"]
    assert len(h) == 0


def test_pop_and_setdefault_and_update() -> None:
    h = Headers({"K": "v"})
    assert h.pop("k") == "v"
    assert h.pop("k", None) is None
    assert h.setdefault("N", "d") == "d"
    assert h.setdefault("n", "other") == "d"
    h.update({"N": "e", "M": "f"})
    assert h.multi_items() == [("N", "e"), ("M", "f")]


def test_non_str_keys_are_absent_not_errors() -> None:
    h = Headers({"K": "v"})
    one: Any = 1
    assert one not in h
    assert None not in h
    with pytest.raises(KeyError):
        del h[1]  # type: ignore[arg-type]
    assert h.get_all(1) == []  # type: ignore[arg-type]
    assert h.pop(1, "d") == "d"  # type: ignore[call-overload]


def test_contains_len_iter() -> None:
    h = Headers([("Accept", "a"), ("X-Y", "1"), ("accept", "b"), ("Z", "")])
    assert "Accept" in h and "ACCEPT" in h and "x-y" in h and "Z" in h
    assert "Nope" not in h
    assert len(h) == 3, "names differing only in case count once"
    assert list(h) == ["Accept", "X-Y", "Z"], "first spelling, first-seen order"
    assert list(h.keys()) == ["Accept", "X-Y", "Z"]
    assert list(h.values()) == ["a", "1", ""]
    assert list(h.items()) == [("Accept", "a"), ("X-Y", "1"), ("Z", "")]


def test_equality() -> None:
    a = Headers([("K", "1"), ("K", "2")])
    assert a == Headers({"K": ["1", "2"]})
    assert a != Headers({"K": ["2", "1"]})
    assert a != Headers({"k": ["1", "2"]})
    assert Headers({"K": "v"}) == {"K": "v"}
    assert Headers({"K": "v"}) != {"K": "w"}
    b = Headers({"K": "v"})
    c = Headers({"K": "v"})
    c.status = 503
    assert b != c
    assert Headers() != 1
    with pytest.raises(TypeError):
        hash(Headers())


def test_repr() -> None:
    h = Headers({"K": "v"})
    assert repr(h) == "Headers([('K', 'v')])"
    h.status = 503
    assert repr(h) == "Headers([('K', 'v')], status=503)"


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["K", "Trace-Id", "X_Y.z", "!#$%&'*+-.^_`|~", "a" * 300, "\x21\x7e"])
def test_valid_names(name: str) -> None:
    assert validate_header_name(name) == name
    assert Headers({name: "v"})[name] == "v"


BAD_NAMES: list[object] = [
    "",
    ":",
    "a:b",
    "K:",
    " ",
    "a b",
    " K",
    "K ",
    "a\tb",
    "a\rb",
    "a\nb",
    "a\r\nb",
    "\x00",
    "a\x7f",
    "ü",
    "Trace-Ïd",
    "\u2028",
    "a\ud800",
    None,
    1,
    b"K",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names(name: Any) -> None:
    with pytest.raises(BadHeaderError):
        validate_header_name(name)
    with pytest.raises(BadHeaderError):
        Headers({name: "v"})
    with pytest.raises(BadHeaderError):
        Headers([(name, "v")])
    with pytest.raises(BadHeaderError):
        encode_headers({name: "v"})


BAD_VALUES: list[object] = [
    "a\rb",
    "a\nb",
    "a\r\nb",
    "\r",
    "\n",
    "x\r\nInjected: yes",
    "a\ud800",
    None,
    1,
    b"v",
]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_invalid_values(value: Any) -> None:
    with pytest.raises(BadHeaderError):
        Headers({"K": value})
    with pytest.raises(BadHeaderError):
        Headers({"K": ["ok", value]})
    with pytest.raises(BadHeaderError):
        Headers([("K", value)])
    with pytest.raises(BadHeaderError):
        encode_headers({"K": value})
    with pytest.raises(BadHeaderError):
        encode_headers({"K": ["ok", value]})


def test_bad_header_error_is_value_error_and_names_the_header() -> None:
    with pytest.raises(ValueError, match="Trace-Id"):
        Headers({"Trace-Id": "a\nb"})


@pytest.mark.parametrize(
    "value", ["", " ", "a b", "ü", "日本", "a:b", "\t", "'\"", "a\x00b", "\u2028"], ids=repr
)
def test_valid_values(value: str) -> None:
    assert Headers({"K": value})["K"] == value


# -------------------------------------------------------------------------------- codec


def test_encode_exact_bytes() -> None:
    assert encode_headers({}) == b"NATS/1.0\r\n\r\n"
    assert encode_headers({"K": "v"}) == b"NATS/1.0\r\nK: v\r\n\r\n"
    mixed: dict[str, str | list[str]] = {"K": ["a", "b"], "L": ""}
    assert encode_headers(mixed) == b"NATS/1.0\r\nK: a\r\nK: b\r\nL: \r\n\r\n"
    assert encode_headers([("A", "1"), ("b", "2"), ("A", "3")]) == b"NATS/1.0\r\nA: 1\r\nb: 2\r\nA: 3\r\n\r\n"
    assert encode_headers(Headers({"X": "ü"})) == "NATS/1.0\r\nX: ü\r\n\r\n".encode()


def test_encode_is_bytes_counted_block_for_hpub() -> None:
    block = encode_headers({"K": "ü"})
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    assert len(block) == len("NATS/1.0\r\nK: ü\r\n\r\n".encode())


@pytest.mark.parametrize(
    "headers",
    [
        Headers(),
        Headers({"K": "v"}),
        Headers([("K", "1"), ("K", "2"), ("k", "3"), ("Other", "x")]),
        Headers({"Trace-Id": "abc", "Empty": "", "Colon": "a:b: c", "Uni": "ü 日本"}),
        Headers({"Nats-Msg-Id": ["1", "2", "3"]}),
    ],
    ids=repr,
)
def test_round_trip(headers: Headers) -> None:
    block = encode_headers(headers)
    decoded = decode_headers(block)
    assert decoded == headers
    assert decoded.multi_items() == headers.multi_items()
    assert decoded.status is None and decoded.description == ""
    for name in headers:
        assert decoded.get_all(name) == headers.get_all(name)


def test_multi_values_one_per_line() -> None:
    block = encode_headers({"K": ["a", "b", "c"]})
    assert block.split(b"\r\n") == [b"NATS/1.0", b"K: a", b"K: b", b"K: c", b"", b""]
    assert b"a,b" not in block


def test_round_trip_preserves_case() -> None:
    h = decode_headers(encode_headers([("X-MiXeD", "1"), ("x-mixed", "2")]))
    assert h.multi_items() == [("X-MiXeD", "1"), ("x-mixed", "2")]
    assert list(h) == ["X-MiXeD"]
    assert h["X-MIXED"] == "1"


def test_status_is_not_encoded() -> None:
    h = Headers({"K": "v"})
    h.status = 503
    assert encode_headers(h) == b"NATS/1.0\r\nK: v\r\n\r\n"


@pytest.mark.parametrize(
    "block,status,description,items",
    [
        (b"NATS/1.0\r\n\r\n", None, "", []),
        (b"NATS/1.0", None, "", []),
        (b"NATS/1.0 503\r\n\r\n", 503, "", []),
        (b"NATS/1.0 503 No Responders\r\n\r\n", 503, "No Responders", []),
        (b"NATS/1.0 404 Not Found\r\n\r\n", 404, "Not Found", []),
        (
            b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n",
            408,
            "Request Timeout",
            [("Nats-Pending-Messages", "1")],
        ),
        (b"NATS/1.0 100 Idle Heartbeat\r\n\r\n", 100, "Idle Heartbeat", []),
        (b"NATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n", 503, "", [("Nats-Subject", "nobody.home")]),
        (b"NATS/1.0  409   Consumer Deleted  \r\n\r\n", 409, "Consumer Deleted", []),
        (b"NATS/1.0\t503\r\n\r\n", 503, "", []),
    ],
)
def test_status_line(
    block: bytes, status: int | None, description: str, items: list[tuple[str, str]]
) -> None:
    h = decode_headers(block)
    assert h.status == status
    assert h.description == description
    assert h.multi_items() == items
    if status is not None:
        assert Headers(h).status == status


def test_decode_is_lenient() -> None:
    block = b"NATS/1.0\r\nno colon here\r\n: empty name\r\nGood:  spaced value \t\r\nK:v\r\n\xff: x\r\n\r\n"
    h = decode_headers(block)
    assert h.multi_items() == [("Good", "spaced value"), ("K", "v"), ("\ufffd", "x")]


def test_decode_only_trims_blanks() -> None:
    # Only spaces and tabs around a value are insignificant (as in HTTP); other characters
    # that Python counts as whitespace are part of the value.
    h = decode_headers("NATS/1.0\r\nK: \xa0a\x85\u2028\x1f\r\nL: \x0bb\x0c\r\n\r\n".encode())
    assert h["K"] == "\xa0a\x85\u2028\x1f"
    assert h["L"] == "\x0bb\x0c"


def test_decoded_values_with_colons() -> None:
    h = decode_headers(b"NATS/1.0\r\nUrl: http://x:1/a\r\n\r\n")
    assert h["Url"] == "http://x:1/a"


def test_received_headers_are_checked_again_before_sending() -> None:
    # decode_headers is lenient (a lone LF stays in a value); sending them back must not pass it on
    from natsync.errors import BadHeaderError
    from natsync.headers import decode_headers, encode_headers

    received = decode_headers(b"NATS/1.0\r\nX-Bad: a\nb\r\n\r\n")
    assert received["X-Bad"] == "a\nb"
    with pytest.raises(BadHeaderError):
        encode_headers(received)
