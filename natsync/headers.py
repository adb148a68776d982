"""NATS message headers: an ordered multi-value mapping and the ``NATS/1.0`` block codec.

Pure: no sockets, threads or clocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Union

from .errors import BadHeaderError

__all__ = ["Headers", "HeadersInput", "encode_headers", "decode_headers", "validate_header_name"]

#: What ``headers=`` accepts: a :class:`Headers`, a mapping of names to a value or a list of
#: values, or an iterable of ``(name, value)`` pairs.
HeadersInput = Union["Headers", Mapping[str, Union[str, "list[str]"]], Iterable[tuple[str, str]]]

_HDR_LINE = b"NATS/1.0"
# bytes 33..126 except ':'
_NAME_OK = frozenset(range(33, 127)) - {ord(":")}


def validate_header_name(name: object) -> str:
    """Return *name* if it is a valid header name, else raise :class:`BadHeaderError`."""
    if type(name) is not str:
        raise BadHeaderError(f"header name must be str, not {type(name).__name__}")
    if not name:
        raise BadHeaderError("header name is empty: use printable ASCII without ':'")
    if not name.isascii() or not _NAME_OK.issuperset(name.encode("ascii")):
        raise BadHeaderError(
            f"header name {name!r} is invalid: use printable ASCII (33-126) without ':' or whitespace"
        )
    return name


def _validate_value(name: str, value: object) -> str:
    if type(value) is not str:
        raise BadHeaderError(f"header {name!r} value must be str, not {type(value).__name__}")
    if "\r" in value or "\n" in value:
        raise BadHeaderError(
            f"header {name!r} value contains CR or LF: remove line breaks from header values"
        )
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise BadHeaderError(f"header {name!r} value has a lone surrogate: it cannot be sent") from None
    return value


class Headers(MutableMapping[str, str]):
    """An ordered, multi-value mapping of header names to values.

    Names keep the case they were given; lookups also match case-insensitively.
    ``h[name]`` is the first value, :meth:`get_all` returns every value,
    ``h[name] = v`` replaces every value of that name, :meth:`add` appends one.

    A received status line (``NATS/1.0 503 No Responders``) is exposed as
    :attr:`status` (an ``int``, or ``None``) and :attr:`description` (a ``str``).
    """

    __slots__ = ("_items", "status", "description")
    #: The status code of a received status line (``503`` for no responders), or None.
    status: int | None
    #: The text after the status code (``"No Responders"``), ``""`` when there is none.
    description: str

    def __init__(self, data: HeadersInput | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        self.status = None
        self.description = ""
        if data is None:
            return
        if isinstance(data, Headers):
            self._items = list(data._items)
            self.status = data.status
            self.description = data.description
            return
        if isinstance(data, Mapping):
            for name, value in data.items():
                validate_header_name(name)
                if isinstance(value, (list, tuple)):
                    for v in value:
                        self._items.append((name, _validate_value(name, v)))
                else:
                    self._items.append((name, _validate_value(name, value)))
            return
        if isinstance(data, (str, bytes)):  # type: ignore[unreachable]  # a runtime guard for untyped callers
            raise BadHeaderError("headers must be a Headers, a mapping or (name, value) pairs, not a string")
        try:
            pairs = iter(data)
        except TypeError:
            raise BadHeaderError(
                f"headers must be a Headers, a mapping or (name, value) pairs, not {type(data).__name__}"
            ) from None
        for pair in pairs:
            try:
                if isinstance(pair, (str, bytes)):  # "Kv" would unpack as ("K", "v")
                    raise TypeError
                name, value = pair
            except (TypeError, ValueError):
                raise BadHeaderError("headers given as pairs must be (name, value) tuples") from None
            validate_header_name(name)
            self._items.append((name, _validate_value(name, value)))

    def _matches(self, key: str) -> list[int]:
        if type(key) is not str:
            return []
        items = self._items
        exact = [i for i, (n, _) in enumerate(items) if n == key]
        if exact:
            return exact
        low = key.lower()
        return [i for i, (n, _) in enumerate(items) if n.lower() == low]

    def __getitem__(self, key: str) -> str:
        for n, v in self._items:
            if n == key:
                return v
        low = key.lower() if type(key) is str else key
        for n, v in self._items:
            if n.lower() == low:
                return v
        raise KeyError(key)

    def __setitem__(self, key: str, value: str) -> None:
        validate_header_name(key)
        _validate_value(key, value)
        low = key.lower()
        idx = [i for i, (n, _) in enumerate(self._items) if n.lower() == low]
        if not idx:
            self._items.append((key, value))
            return
        self._items[idx[0]] = (key, value)
        for i in reversed(idx[1:]):
            del self._items[i]

    def __delitem__(self, key: str) -> None:
        if type(key) is not str:
            raise KeyError(key)
        low = key.lower()
        before = len(self._items)
        self._items = [(n, v) for n, v in self._items if n.lower() != low]
        if len(self._items) == before:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for n, _ in self._items:
            low = n.lower()
            if low not in seen:
                seen.add(low)
                yield n

    def __len__(self) -> int:
        return len({n.lower() for n, _ in self._items})

    def __contains__(self, key: object) -> bool:
        if type(key) is not str:
            return False
        low = key.lower()
        return any(n.lower() == low for n, _ in self._items)

    def add(self, key: str, value: str) -> None:
        """Append *value* to the values of *key*."""
        validate_header_name(key)
        self._items.append((key, _validate_value(key, value)))

    def get_all(self, key: str) -> list[str]:
        """Return every value of *key* in order (``[]`` if absent)."""
        return [self._items[i][1] for i in self._matches(key)]

    def multi_items(self) -> list[tuple[str, str]]:
        """Return every ``(name, value)`` pair, in order, including repeated names."""
        return list(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items == other._items and self.status == other.status
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        status = f", status={self.status}" if self.status is not None else ""
        return f"Headers({self._items!r}{status})"


def encode_headers(headers: HeadersInput) -> bytes:
    """Validate *headers* and return the ``NATS/1.0`` block, ending with a blank line.

    Raises :class:`BadHeaderError` for anything that is not str names mapping to str
    (or lists of str) values, for invalid names and for CR/LF in values.
    """
    if isinstance(headers, Headers):
        # checked again: a Headers decoded from a received message is built leniently
        items = headers._items
        for hname, hvalue in items:
            validate_header_name(hname)
            _validate_value(hname, hvalue)
    elif isinstance(headers, Mapping):
        items = []
        for name, value in headers.items():
            validate_header_name(name)
            if isinstance(value, (list, tuple)):
                for v in value:
                    items.append((name, _validate_value(name, v)))
            else:
                items.append((name, _validate_value(name, value)))
    else:
        items = Headers(headers)._items
    parts = [_HDR_LINE, b"\r\n"]
    for name, value in items:
        parts.append(f"{name}: {value}\r\n".encode())
    parts.append(b"\r\n")
    return b"".join(parts)


def decode_headers(block: bytes) -> Headers:
    """Parse a ``NATS/1.0`` header block into :class:`Headers`.

    Lenient by design: malformed lines are skipped, never raised on (the block was
    already length-checked by the parser).
    """
    h = Headers()
    text = block.decode("utf-8", "replace")
    lines = text.split("\r\n")
    first = lines[0]
    if first.startswith("NATS/1.0"):
        rest = first[8:].strip()
        if rest:
            code, _, desc = rest.partition(" ")
            if len(code) == 3 and code.isdigit():
                h.status = int(code)
                h.description = desc.strip()
            else:
                h.description = rest
    items = h._items
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        # only blanks are insignificant: str.strip() would also eat e.g. \x1f, \x85, \xa0
        name = name.strip(" \t")
        if name:
            items.append((name, value.strip(" \t")))
    return h
