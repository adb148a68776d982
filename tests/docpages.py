"""Parse the executable examples out of reStructuredText pages (``README.rst``, ``docs/``).

This implements the documentation convention of the project (``tests/test_docs.py`` runs
what is parsed here):

* every ``.. code-block:: python`` block runs; a page's blocks run in order in one shared
  namespace, against one fresh nats-server started for the page;
* page declarations, reST comments before the first block::

      .. natsync-test: server=jetstream       (the default: JetStream on, no auth)
      .. natsync-test: server=token:mytoken   (``--auth mytoken``, JetStream on)
      .. natsync-test: server=none            (no server)
      .. natsync-test: env NAME=VALUE         (repeatable)

* declarations for the next block: ``.. natsync-test: skip REASON`` (not executed) and
  ``.. natsync-test: check-output`` (console blocks: expected output is compared);
* ``.. natsync-test-setup`` with an indented Python body: hidden code run in the page's
  namespace before the next block;
* in ``.. code-block:: console`` blocks each line starting with ``$ natsync `` is run as a
  process (``NATS_URL`` set to the page's server) and must exit 0; other ``$`` lines are
  not run.

``127.0.0.1:4222`` and ``localhost:4222`` (and a bare ``localhost``/``127.0.0.1`` host in a
NATS URL) are rewritten to the page server's address.  Anything this parser does not
understand in a ``natsync-test`` comment is an error naming the page and line.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Block",
    "Command",
    "DocPageError",
    "Page",
    "match_output",
    "parse_page",
    "rewrite_urls",
]

_DIRECTIVE_RE = re.compile(r"^(\s*)\.\. code-block::\s*(\S+)\s*$")
_DECL_RE = re.compile(r"^\.\. natsync-test:\s*(.*?)\s*$")
_SETUP_RE = re.compile(r"^\.\. natsync-test-setup\s*$")
_OPTION_RE = re.compile(r"^\s+:[\w-]+:")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

SERVER_KINDS = ("jetstream", "token", "none")


class DocPageError(ValueError):
    """A ``natsync-test`` declaration that cannot be understood (page and line named)."""


@dataclass
class Command:
    """One ``$ natsync ...`` line of a console block and the output expected after it."""

    line: int
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    """A code block to run: ``python`` code, a ``console`` block or hidden ``setup`` code."""

    kind: str  # "python", "console" or "setup"
    line: int  # 1-based line of the first line of the body in the page
    code: str
    skip: str | None = None
    check_output: bool = False
    commands: list[Command] = field(default_factory=list)


@dataclass
class Page:
    """The runnable content of one page."""

    path: Path
    server: str = "jetstream"
    token: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)

    @property
    def runnable(self) -> bool:
        """True if the page has anything to execute (a python block or a natsync command)."""
        for block in self.blocks:
            if block.skip is not None:
                continue
            if block.kind == "python" or (block.kind == "console" and block.commands):
                return True
        return False


def _indented_body(lines: list[str], start: int, min_indent: int) -> tuple[list[str], int, int]:
    """The indented body that starts at index *start* (after optional options and blank
    lines): (dedented lines, 0-based index of the first body line, index after the body)."""
    i = start
    while i < len(lines) and _OPTION_RE.match(lines[i]):
        i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    first = i
    body: list[str] = []
    while i < len(lines):
        line = lines[i]
        if line.strip() and (len(line) - len(line.lstrip())) <= min_indent:
            break
        body.append(line)
        i += 1
    while body and not body[-1].strip():
        body.pop()
    return textwrap.dedent("\n".join(body)).splitlines(), first, i


def _parse_console(body: list[str], first_line: int) -> list[Command]:
    commands: list[Command] = []
    current: Command | None = None
    i = 0
    while i < len(body):
        raw = body[i]
        if raw.startswith("$ "):
            text = raw[2:]
            line = first_line + i
            while text.endswith("\\") and i + 1 < len(body):
                i += 1
                text = text[:-1].rstrip() + " " + body[i].strip()
            if text.startswith("natsync ") or text == "natsync":
                current = Command(line=line, text=text)
                commands.append(current)
            else:
                current = None  # pip, make, ...: shown, not run
        elif current is not None and raw.strip():
            current.expected.append(raw.strip())
        i += 1
    return commands


def parse_page(path: Path, text: str | None = None) -> Page:
    """Parse *path* (or *text*, reported as *path*) into a :class:`Page`.

    Raises:
        DocPageError: for an unknown or misplaced ``natsync-test`` declaration.
    """
    if text is None:
        text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    page = Page(path=path)
    pending_skip: str | None = None
    pending_check = False
    pending_setup: list[Block] = []
    seen_block = False
    i = 0

    def where(idx: int) -> str:
        return f"{path}:{idx + 1}"

    while i < len(lines):
        line = lines[i]
        decl = _DECL_RE.match(line)
        if decl:
            words = decl.group(1)
            if words.startswith("server="):
                if seen_block:
                    raise DocPageError(f"{where(i)}: 'server=' must come before the first block")
                value = words[len("server=") :]
                if value in ("jetstream", "none"):
                    page.server, page.token = value, None
                elif value.startswith("token:") and len(value) > len("token:"):
                    page.server, page.token = "token", value[len("token:") :]
                else:
                    raise DocPageError(
                        f"{where(i)}: unknown server {value!r}; use server=jetstream, "
                        "server=token:TOKEN or server=none"
                    )
            elif words.startswith("env "):
                if seen_block:
                    raise DocPageError(f"{where(i)}: 'env' must come before the first block")
                name, sep, value = words[4:].strip().partition("=")
                if not sep or not _ENV_NAME_RE.match(name):
                    raise DocPageError(f"{where(i)}: write 'env NAME=VALUE' (got {words!r})")
                page.env[name] = value
            elif words == "skip" or words.startswith("skip "):
                reason = words[4:].strip()
                if not reason:
                    raise DocPageError(f"{where(i)}: 'skip' needs a reason: 'skip REASON'")
                pending_skip = reason
            elif words == "check-output":
                pending_check = True
            else:
                raise DocPageError(
                    f"{where(i)}: unknown natsync-test declaration {words!r}; known: "
                    "server=..., env NAME=VALUE, skip REASON, check-output"
                )
            i += 1
            continue
        if _SETUP_RE.match(line):
            body, first, i = _indented_body(lines, i + 1, 0)
            if not body:
                raise DocPageError(f"{where(first - 1)}: natsync-test-setup without an indented body")
            pending_setup.append(Block(kind="setup", line=first + 1, code="\n".join(body)))
            continue
        directive = _DIRECTIVE_RE.match(line)
        if directive and directive.group(2) in ("python", "console"):
            indent = len(directive.group(1))
            body, first, i = _indented_body(lines, i + 1, indent)
            kind = directive.group(2)
            block = Block(kind=kind, line=first + 1, code="\n".join(body), skip=pending_skip)
            if kind == "console":
                block.commands = _parse_console(body, first + 1)
                block.check_output = pending_check
            elif pending_check:
                raise DocPageError(f"{where(first - 1)}: check-output applies to console blocks only")
            if pending_skip is None:
                page.blocks.extend(pending_setup)
            page.blocks.append(block)
            seen_block = True
            pending_skip, pending_check, pending_setup = None, False, []
            continue
        i += 1
    if pending_skip is not None or pending_check or pending_setup:
        raise DocPageError(f"{path}: a natsync-test declaration or setup is not followed by a block")
    return page


_HOSTPORT_RE = re.compile(r"\b(?:localhost|127\.0\.0\.1):4222\b")
_BARE_HOST_RE = re.compile(
    r"((?:nats|tls|ws|wss)://(?:[^\s/@'\"]*@)?|[\"'][^\s/@'\"]*@)(?:localhost|127\.0\.0\.1)(?![\w.:-])"
)


def rewrite_urls(text: str, hostport: str | None) -> str:
    """Point ``localhost:4222``/``127.0.0.1:4222`` and bare loopback hosts in NATS URLs at
    *hostport* (``"127.0.0.1:41234"``); unchanged when there is no server."""
    if hostport is None:
        return text
    text = _HOSTPORT_RE.sub(hostport, text)
    return _BARE_HOST_RE.sub(lambda m: m.group(1) + hostport, text)


def match_output(expected: list[str], output: str) -> str | None:
    """Check that each expected line appears, in order, in *output* (``...`` matches
    anything within a line).  Returns None when it does, else what is missing."""
    out_lines = [line.strip() for line in output.splitlines()]
    pos = 0
    for want in expected:
        if want == "...":
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        while pos < len(out_lines) and not pattern.search(out_lines[pos]):
            pos += 1
        if pos >= len(out_lines):
            return f"expected line not found (in order): {want!r}"
        pos += 1
    return None
