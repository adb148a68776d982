"""Go-template expansion of message bodies and headers, with natscli's functions.

Supported: actions ``{{ Name args... }}`` and ``{{ .Field }}`` (spaces inside the braces
optional; ``{{-`` / ``-}}`` trim markers; ``{{/* comments */}}``), with natscli's
functions and fields (internal/util ``PubReplyBodyTemplate``):

==============  ==========================================================
``Count``       the message number (also ``Cnt``, ``.Count``, ``.Cnt``)
``ID``          a NUID, new at each use (also ``.ID``)
``TimeStamp``   the current time in RFC 3339 (``2026-12-06T11:48:16+01:00``)
``Time``        the current time in Go's ``Kitchen`` layout (``3:04PM``)
``Unix``        seconds since 1970; ``UnixNano``: nanoseconds
``Random a b``  a random string of a..b characters from ``[a-zA-Z0-9]``
``Request``     (``reply`` only) the request's body
==============  ==========================================================

Anything else (pipelines, ``if``, ``range``, unknown functions) is a
:class:`TemplateError`; callers then send the text literally, as natscli does.
"""

from __future__ import annotations

import datetime
import random
import re
import string
import time
from dataclasses import dataclass

from .._nuid import next_nuid

__all__ = ["TemplateError", "expand", "has_actions"]

_LETTERS = string.ascii_letters + string.digits
_rng = (
    random.Random()
)  # not for secrets: natscli's math/rand equivalent; random.Random is thread-safe for choice/randint
_TOKEN = re.compile(r'\s*(?:(\.?[A-Za-z_][A-Za-z0-9_]*)|(-?\d+(?:\.\d+)?)|"((?:[^"\\]|\\.)*)"|(\S+))')


class TemplateError(ValueError):
    """A body or header template that cannot be parsed or run."""


@dataclass(frozen=True)
class _Action:
    name: str
    args: tuple[object, ...]


def has_actions(text: str) -> bool:
    """Whether *text* holds ``{{`` at all (nothing to expand otherwise)."""
    return "{{" in text


def _parse(text: str) -> list[str | _Action]:
    parts: list[str | _Action] = []
    pos = 0
    while True:
        i = text.find("{{", pos)
        if i < 0:
            parts.append(text[pos:])
            return parts
        lit = text[pos:i]
        j = text.find("}}", i + 2)
        if j < 0:
            raise TemplateError("unclosed action: '{{' without '}}'")
        inner = text[i + 2 : j]
        if inner.startswith("- ") or inner == "-":
            lit = lit.rstrip()
            inner = inner[1:]
        trim_right = inner.endswith(" -")
        if trim_right:
            inner = inner[:-2]
        parts.append(lit)
        body = inner.strip()
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise TemplateError("unclosed comment")
        else:
            parts.append(_action(body))
        pos = j + 2
        if trim_right:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1


def _action(body: str) -> _Action:
    if not body:
        raise TemplateError("missing value for command")
    tokens: list[object] = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        ident, num, quoted, other = m.groups()
        if ident is not None:
            tokens.append(("ident", ident))
        elif num is not None:
            tokens.append(float(num) if "." in num else int(num))
        elif quoted is not None:
            tokens.append(bytes(quoted, "utf-8").decode("unicode_escape"))
        elif other is not None and other.strip():
            raise TemplateError(
                f"unsupported template syntax {other!r} (pipelines and keywords are not supported)"
            )
    if not tokens or not isinstance(tokens[0], tuple):
        raise TemplateError(f"unsupported action {{{{{body}}}}}")
    name = str(tokens[0][1])
    if name in ("if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"):
        raise TemplateError(f"the {name!r} keyword is not supported")
    args = tuple(tokens[1:])
    for a in args:
        if isinstance(a, tuple):
            raise TemplateError(f"unsupported argument {a[1]!r} in {{{{{body}}}}}")
    return _Action(name, args)


def _rfc3339(now: datetime.datetime) -> str:
    text = now.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _kitchen(now: datetime.datetime) -> str:
    h = now.hour % 12 or 12
    return f"{h}:{now.minute:02d}{'AM' if now.hour < 12 else 'PM'}"


def _random(*args: object) -> str:
    if len(args) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in args):
        raise TemplateError("Random takes two whole numbers >= 0: {{ Random MIN MAX }}")
    lo, hi = sorted((int(args[0]), int(args[1])))  # type: ignore[call-overload]
    n = _rng.randint(lo, hi)
    return "".join(_rng.choice(_LETTERS) for _ in range(n))


def expand(text: str, count: int, request: str | None = None) -> str:
    """*text* with its template actions replaced, for message number *count* (and, for
    ``reply``, the *request* body).  Raises TemplateError when it cannot be expanded."""
    if "{{" not in text:
        return text
    parts = _parse(text)
    now_ns = time.time_ns()
    now = datetime.datetime.fromtimestamp(now_ns / 1e9).astimezone()
    values: dict[str, object] = {
        "Count": count,
        "Cnt": count,
        "Unix": now_ns // 1_000_000_000,
        "UnixNano": now_ns,
        "TimeStamp": _rfc3339(now),
        "Time": _kitchen(now),
    }
    out: list[str] = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
            continue
        name, args = p.name, p.args
        if name.startswith("."):
            field = name[1:]
            if args:
                raise TemplateError(f"{name} takes no arguments")
            if field == "ID":
                out.append(next_nuid())
            elif field == "Request":
                out.append(request or "")
            elif field in values:
                out.append(str(values[field]))
            else:
                raise TemplateError(f"can't evaluate field {field}")
            continue
        if name == "Random":
            out.append(_random(*args))
            continue
        if args:
            raise TemplateError(f"{name} takes no arguments")
        if name == "ID":
            out.append(next_nuid())
        elif name == "Request" and request:
            out.append(request)
        elif name in values:
            out.append(str(values[name]))
        else:
            raise TemplateError(f'function "{name}" not defined')
    return "".join(out)
