"""Server URLs and the server pool.

This module is pure: it parses and redacts server URLs and keeps the pool of servers a
client may connect to (the explicit ones given by the user and the ones discovered from
INFO ``connect_urls``), with the per-server reconnect bookkeeping of nats.go.  It opens
no sockets, starts no threads and reads no clocks.

Accepted URL forms are ``nats://host:port``, ``tls://host:port``, ``host``,
``host:port``, ``[::1]:4222`` and ``[::1]``, each optionally with user info
(``token@``, ``:token@`` or ``user:password@``).  A missing scheme means ``nats``, a
missing port means 4222.  User info is percent-decoded with :func:`urllib.parse.unquote`
(so ``+`` stays ``+``) and is split from the host at the *last* ``@`` of the authority,
so a raw ``@`` inside a token works; a ``:``, ``/``, ``?`` or ``#`` inside a token must
be written ``%3A``, ``%2F``, ``%3F`` or ``%23``.

No secret ever appears in ``repr()``, ``str()``, :meth:`Server.redacted` or an exception
message of this module.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_URL",
    "Server",
    "ServerPool",
    "parse_servers",
    "parse_url",
    "redact_url",
]

#: The server used when ``connect()`` is given none.
DEFAULT_URL: Final = "nats://127.0.0.1:4222"
#: The port of a URL that names none.
DEFAULT_PORT: Final = 4222

_SCHEMES = ("nats", "tls")
_FORMS = (
    "accepted forms are nats://host:port, tls://host:port, host, host:port, [::1]:4222 and [::1], "
    "each optionally with user info (token@, :token@ or user:password@)"
)
# Characters that can never be part of a host name in a URL authority.
_BAD_HOST_CHARS = frozenset(" \t\r\n\f\v/\\?#@[]<>\"'`{}|^%,;")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(eq=False, repr=False)
class Server:
    """One entry of the server pool.

    Servers compare by identity; :attr:`hostport` is the pool's identity key.

    Attributes:
        scheme: ``"nats"`` or ``"tls"`` (TLS required).
        host: host name or IP address; an IPv6 address is kept without brackets.
        port: TCP port.
        username: percent-decoded user part of the URL's user info, or None when the URL
            had no user info.  For ``token@host`` this is the token.
        password: percent-decoded password part, or None when the user info had no ``:``.
        implicit: True for a server learned from INFO ``connect_urls``.
        inherited_username, inherited_password: for an implicit server, the user info of
            the explicit URL that was connected when the server was learned.
        tls_name: host name to verify TLS against instead of :attr:`host` (set for an
            implicit server given as a bare IP, learned while connected by name).
        reconnects: connection attempts since the last successful connect.
        did_connect: True once a connection to this server succeeded.
        last_error: the error of the last failed attempt (not shown in ``repr``).
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit: bool = False
    inherited_username: str | None = None
    inherited_password: str | None = None
    tls_name: str | None = None
    reconnects: int = 0
    did_connect: bool = False
    last_error: BaseException | None = field(default=None, repr=False)

    @property
    def hostport(self) -> str:
        """``host:port``, with an IPv6 address in brackets (``[::1]:4222``)."""
        return f"{_bracket(self.host)}:{self.port}"

    @property
    def has_userinfo(self) -> bool:
        """True if the server's own URL carried user info (even ``:token@``)."""
        return self.username is not None

    @property
    def url_token(self) -> str | None:
        """The token carried by the URL, or None.

        ``token@host`` (no colon) and ``:token@host`` (empty user, a password) carry a
        token; an empty token counts as none.
        """
        if self.username is None:
            return None
        if self.password is None:
            return self.username or None
        if self.username == "":
            return self.password or None
        return None

    @property
    def url_user(self) -> str | None:
        """The user of a ``user:password@`` URL (non-empty user), else None."""
        if self.username and self.password is not None:
            return self.username
        return None

    @property
    def url_password(self) -> str | None:
        """The password of a ``user:password@`` URL (non-empty user and password), else None."""
        if self.username and self.password:
            return self.password
        return None

    @property
    def tls_required(self) -> bool:
        """True if the URL's scheme is ``tls``."""
        return self.scheme == "tls"

    def redacted(self) -> str:
        """Return the URL with its secret masked.

        ``nats://***@host:4222`` for the token forms, ``nats://user:***@host:4222`` for
        user and password, ``nats://host:4222`` without user info.  Inherited user info of
        an implicit server is never shown.
        """
        prefix = f"{self.scheme}://"
        if self.implicit or not self.has_userinfo:
            return f"{prefix}{self.hostport}"
        user = self.url_user
        if user is not None:
            return f"{prefix}{quote(user, safe='')}:***@{self.hostport}"
        return f"{prefix}***@{self.hostport}"

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return (
            f"Server({self.redacted()!r}, implicit={self.implicit}, "
            f"reconnects={self.reconnects}, did_connect={self.did_connect})"
        )


def redact_url(url: str) -> str:
    """Return *url* with any user info and query masked, for messages and logs.

    Works on any string, even one that is not a valid URL: everything before the last
    ``@`` after the scheme is treated as user info and shown as ``***`` (or ``user:***``
    when it holds a ``:``); a query or fragment after the host is shown as ``?***``.
    """
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    prefix = f"{scheme}://" if sep else ""
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        masked = f"{user}:***@" if colon and user else "***@"
    else:
        masked, hostpart = "", rest
    cut = min((i for i in (hostpart.find("?"), hostpart.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        hostpart = hostpart[:cut] + "?***"
    return f"{prefix}{masked}{hostpart}"


def _error(url: str, problem: str) -> ValueError:
    return ValueError(f"invalid NATS server URL {redact_url(url)!r}: {problem}; {_FORMS}")


def _parse_host(url: str, hostport: str) -> tuple[str, int]:
    """Split an authority without user info into (host, port)."""
    port_text: str | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _error(url, "missing ']' after the IPv6 address")
        inner = unquote(hostport[1:end])  # a zone id may be written %25eth0
        after = hostport[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise _error(url, f"unexpected {after!r} after the IPv6 address")
            port_text = after[1:]
        try:
            host = str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise _error(url, f"{inner!r} in brackets is not an IPv6 address") from None
    else:
        if hostport.count(":") > 1:
            raise _error(url, "an IPv6 address must be written in brackets, e.g. [::1]:4222")
        host, colon, rest = hostport.partition(":")
        if colon:
            port_text = rest
        if not host:
            raise _error(url, "the host is empty")
        bad = sorted(set(host) & _BAD_HOST_CHARS) or [c for c in host if not c.isprintable()]
        if bad:
            raise _error(url, f"the host contains {bad[0]!r}")
        host = host.lower()
    if not port_text:  # no port, or "host:" with an empty one (as nats.go and nats-py read it)
        return host, DEFAULT_PORT
    if not (port_text.isascii() and port_text.isdigit()):
        shown = repr(port_text) if port_text else "empty"
        raise _error(url, f"the port is {shown}, expected a number from 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _error(url, f"the port {port} is out of range, expected 1 to 65535")
    return host, port


def parse_url(url: str) -> Server:
    """Parse one server URL into a :class:`Server`.

    Surrounding whitespace is ignored.  A missing scheme means ``nats`` and a missing
    port means 4222.  User info is split from the host at the last ``@`` and its parts
    are percent-decoded with :func:`urllib.parse.unquote`; user info that decodes to
    nothing (``@host``, ``:@host``) counts as none.  A path of ``/`` alone is tolerated.

    Raises:
        TypeError: *url* is not a str.
        ValueError: another scheme, an empty host, a bad port, a path, query or
            fragment, or an IPv6 address without brackets.  The message names the URL
            with its secret redacted.
    """
    if not isinstance(url, str):
        raise TypeError(f"a server URL must be a str, not {type(url).__name__}")
    text = url.strip()
    if not text:
        raise _error(url, "the URL is empty")
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in _SCHEMES:
            raise _error(url, f"scheme {scheme!r} is not supported (use nats:// or tls://)")
    else:
        scheme, rest = "nats", text
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if tail not in ("", "/"):
        problem = "a path, query or fragment is not allowed"
        if "@" in tail:
            problem += " (percent-encode '/', '?' and '#' inside user info as %2F, %3F and %23)"
        raise _error(url, problem)
    userinfo, at, hostport = authority.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_raw, colon, pass_raw = userinfo.partition(":")
        if user_raw or pass_raw:
            username = unquote(user_raw)
            password = unquote(pass_raw) if colon else None
    else:
        hostport = authority
    host, port = _parse_host(url, hostport)
    return Server(scheme=scheme, host=host, port=port, username=username, password=password)


def parse_servers(servers: str | Sequence[str] | None) -> list[Server]:
    """Parse the ``servers`` option into a list of explicit servers.

    *servers* is None, a str holding one URL or several separated by commas, or a
    sequence of such str.  Empty entries are ignored; with no URL at all the result is
    the default ``nats://127.0.0.1:4222``.  Servers with the same ``host:port`` are kept
    once (the first one wins, with its user info).

    Raises:
        TypeError: *servers* or one of its items is not a str.
        ValueError: a URL is invalid (see :func:`parse_url`).
    """
    items: list[str]
    if servers is None:
        items = []
    elif isinstance(servers, str):
        items = [servers]
    elif isinstance(servers, (bytes, bytearray, memoryview)) or not isinstance(servers, Sequence):
        raise TypeError(
            f"option 'servers' must be a str or a list of str, not {type(servers).__name__}"
        )
    else:
        items = []
        entries: Sequence[object] = servers  # checked at run time: callers are not type-checked
        for index, item in enumerate(entries):
            if not isinstance(item, str):
                kind = type(item).__name__
                raise TypeError(f"option 'servers' must be a str or a list of str; item {index} is a {kind}")
            items.append(item)
    result: list[Server] = []
    seen: set[str] = set()
    for item in items:
        for piece in item.split(","):
            if not piece.strip():
                continue
            server = parse_url(piece)
            if server.hostport not in seen:
                seen.add(server.hostport)
                result.append(server)
    if not result:
        result.append(parse_url(DEFAULT_URL))
    return result


class ServerPool:
    """The ordered pool of servers, following nats.go's ``srvPool``.

    The pool holds the explicit servers and those discovered from INFO
    ``connect_urls``, one entry per ``host:port``.  :attr:`current` is the server of the
    current or last connection attempt.  The pool is not thread-safe; the client guards
    it with its own lock.
    """

    def __init__(
        self, servers: list[Server], randomize: bool = True, rng: random.Random | None = None
    ) -> None:
        """Create a pool from *servers* (shuffled unless *randomize* is False).

        *rng* is the random generator used for shuffling (tests pass a seeded one).
        Servers with a ``host:port`` already seen are left out.
        """
        # the random module's own generator by default: reseeded in a forked child, and
        # no urandom() call per connection
        self._shuffle = rng.shuffle if rng is not None else random.shuffle
        self._randomize = randomize
        self._servers: list[Server] = []
        seen: set[str] = set()
        for server in servers:
            if server.hostport not in seen:
                seen.add(server.hostport)
                self._servers.append(server)
        if randomize:
            self._shuffle(self._servers)
        self._current: Server | None = None

    def __len__(self) -> int:
        return len(self._servers)

    def __iter__(self) -> Iterator[Server]:
        return iter(list(self._servers))

    def __repr__(self) -> str:
        return f"ServerPool({self.redacted_urls()!r}, current={self._current!r})"

    @property
    def current(self) -> Server | None:
        """The server of the current or last connection attempt, or None.

        Raises:
            ValueError: on assignment of a server that is not in the pool.
        """
        return self._current

    @current.setter
    def current(self, server: Server | None) -> None:
        if server is not None and not self._contains(server):
            raise ValueError(f"server {server.redacted()!r} is not in the pool")
        self._current = server

    def _contains(self, server: Server) -> bool:
        return any(s is server for s in self._servers)

    def first_pass(self) -> list[Server]:
        """Return the servers to try on the initial connect: each once, in pool order."""
        return list(self._servers)

    def select_next(self, max_reconnect_attempts: int) -> Server | None:
        """Pick the next server to try and make it :attr:`current` (nats.go ``selectNextServer``).

        The current server moves to the end of the pool, or is dropped when
        *max_reconnect_attempts* is not negative and its ``reconnects`` reached it.  The
        new current server is the head of the pool; None when the pool is empty.  With
        no current server (none yet, or it was removed), the head is taken as is.
        """
        cur = self._current
        if cur is not None and self._contains(cur):
            self._remove(cur)
            if max_reconnect_attempts < 0 or cur.reconnects < max_reconnect_attempts:
                self._servers.append(cur)
        self._current = self._servers[0] if self._servers else None
        return self._current

    def _remove(self, server: Server) -> None:
        self._servers = [s for s in self._servers if s is not server]

    def remove(self, server: Server) -> None:
        """Remove *server* from the pool (nothing happens if it is not there).

        If it was :attr:`current`, :attr:`current` becomes None and the next
        :meth:`select_next` takes the head of the pool.
        """
        self._remove(server)
        if self._current is server:
            self._current = None

    def add_discovered(
        self, connect_urls: Sequence[str], *, scheme: str, learned_from: Server | None
    ) -> list[Server]:
        """Merge INFO ``connect_urls`` into the pool (nats.go ``processInfo``).

        Each entry is ``host:port`` or ``[v6]:port``.  One entry is kept per
        ``host:port``: addresses already in the pool (explicit or implicit) are skipped.
        New servers are implicit, use *scheme*, and inherit the user info of
        *learned_from* (the server connected when the INFO arrived: its own user info,
        or, if it is implicit itself, what it inherited).  A new server given as an IP
        address gets ``tls_name`` = *learned_from*'s ``tls_name``, or its host when that
        is a name.  Implicit servers no longer advertised are then removed, except
        :attr:`current`.  If servers were added and the pool randomizes, all entries but
        the first are shuffled.  An empty *connect_urls* changes nothing (a server
        that does not advertise must not empty the pool).  Entries that cannot be
        parsed are ignored.

        Returns:
            The servers added, in the order they were advertised.

        Raises:
            ValueError: *scheme* is not ``"nats"`` or ``"tls"``.
        """
        if scheme not in _SCHEMES:
            raise ValueError(f"scheme must be 'nats' or 'tls', not {scheme!r}")
        advertised: list[Server] = []
        keys: set[str] = set()
        entries: Sequence[object] = connect_urls  # from the server's JSON: anything goes
        for entry in entries:
            if not isinstance(entry, str) or not entry.strip():
                continue
            try:
                parsed = parse_url(entry if "://" in entry else f"{scheme}://{entry.strip()}")
            except ValueError:
                continue
            if parsed.hostport not in keys:
                keys.add(parsed.hostport)
                advertised.append(parsed)
        if not advertised:
            return []

        self._servers = [
            s for s in self._servers if not s.implicit or s is self._current or s.hostport in keys
        ]

        inherited_user: str | None = None
        inherited_pass: str | None = None
        name_for_ip: str | None = None
        if learned_from is not None:
            if learned_from.has_userinfo:
                inherited_user, inherited_pass = learned_from.username, learned_from.password
            elif learned_from.implicit:
                inherited_user = learned_from.inherited_username
                inherited_pass = learned_from.inherited_password
            if learned_from.tls_name:
                name_for_ip = learned_from.tls_name
            elif not _is_ip(learned_from.host):
                name_for_ip = learned_from.host

        present = {s.hostport for s in self._servers}
        added: list[Server] = []
        for parsed in advertised:
            if parsed.hostport in present:
                continue
            server = Server(
                scheme=scheme,
                host=parsed.host,
                port=parsed.port,
                implicit=True,
                inherited_username=inherited_user,
                inherited_password=inherited_pass,
                tls_name=name_for_ip if _is_ip(parsed.host) else None,
            )
            present.add(server.hostport)
            self._servers.append(server)
            added.append(server)
        if added and self._randomize and len(self._servers) > 2:
            rest = self._servers[1:]
            self._shuffle(rest)
            self._servers[1:] = rest
        return added

    def explicit(self) -> list[Server]:
        """Return the servers given by the user, in pool order."""
        return [s for s in self._servers if not s.implicit]

    def discovered(self) -> list[Server]:
        """Return the servers learned from INFO ``connect_urls``, in pool order."""
        return [s for s in self._servers if s.implicit]

    def redacted_urls(self) -> list[str]:
        """Return the redacted URL of every server, in pool order."""
        return [s.redacted() for s in self._servers]

    def redacted_discovered(self) -> list[str]:
        """Return the redacted URL of every discovered server, in pool order."""
        return [s.redacted() for s in self.discovered()]
