"""The credential resolver: which credentials go into CONNECT.

Pure: given the server being dialled, the credential options and the INFO nonce, it
returns the auth fields of CONNECT.  It is called afresh for every connect and reconnect
attempt.  The rules (API.md, "Which credentials go into CONNECT"):

1. A server whose URL carries user info uses the URL's credentials only: ``TOKEN@`` and
   ``:TOKEN@`` send ``auth_token``, ``USER:PASS@`` sends ``user``/``pass``.  The ``token``
   (str), ``user`` and ``password`` options are not sent.  A callable ``token`` still
   applies (as nats.go's ``TokenHandler``), except together with a URL token, which is
   an error.
2. Otherwise the options: ``token`` (a str, or a callable called on every attempt) and/or
   ``user``/``password``.  What is set is sent.
3. A server discovered from INFO ``connect_urls`` uses the options and, when they hold no
   credentials, the user info inherited from the explicit URL connected when it was
   learned, read with the rules of 1.
4. A callable ``token`` together with a token in any URL is a ``ValueError``.

Empty strings count as unset and are never sent.  No secret is ever put in ``repr()`` or
an exception message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from ._servers import Server

__all__ = ["Credentials", "TokenOption", "check_credentials", "resolve_connect_auth"]

TokenOption: TypeAlias = str | Callable[[], str] | None
"""The ``token`` option: a str, a callable returning one, or None."""


def _describe_secret(value: object) -> str:
    if value is None:
        return "None"
    if callable(value):
        return "<callable>"
    return "<set>"


@dataclass(frozen=True, repr=False)
class Credentials:
    """Credentials given as options to ``connect()``.

    Attributes:
        token: an auth token, or a callable returning one (called on every connect and
            reconnect attempt, for rotating tokens), or None.
        user: user name for user/password auth, or None.
        password: password for user/password auth, or None.
        extra: a seam for NKEY/JWT: if set, it is called with the INFO nonce (or None)
            on every attempt and returns further CONNECT fields (``nkey``, ``sig``,
            ``jwt``) to merge in.  It applies whether or not the URL carries user info.
    """

    token: TokenOption = None
    user: str | None = None
    password: str | None = None
    extra: Callable[[str | None], dict[str, str]] | None = None

    def __repr__(self) -> str:
        return (
            f"Credentials(token={_describe_secret(self.token)}, user={self.user!r}, "
            f"password={_describe_secret(self.password)}, extra={_describe_secret(self.extra)})"
        )

    @property
    def has_any(self) -> bool:
        """True if any credential option is set (an empty str counts as unset)."""
        return bool(self.token or self.user or self.password or self.extra is not None)


def check_credentials(creds: Credentials, servers: Sequence[Server]) -> None:
    """Check the credential options against the servers, before any socket is opened.

    Raises:
        TypeError: ``token`` is not a str, a callable or None; ``user`` or ``password``
            is not a str or None; ``extra`` is not callable or None.
        ValueError: ``token`` is a callable and a server URL carries a token too (as
            nats.go's ``ErrTokenAlreadySet``).  The message shows redacted URLs only.
    """
    token = creds.token
    if token is not None and not isinstance(token, str) and not callable(token):
        raise TypeError(
            f"option 'token' must be a str, a callable returning a str, or None, not {type(token).__name__}"
        )
    for name, value in (("user", creds.user), ("password", creds.password)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"option {name!r} must be a str or None, not {type(value).__name__}")
    if creds.extra is not None and not callable(creds.extra):
        raise TypeError(f"credential 'extra' must be callable or None, not {type(creds.extra).__name__}")
    if callable(token):
        with_token = [s.redacted() for s in servers if s.url_token is not None]
        if with_token:
            raise ValueError(
                "option 'token' is a callable, but the server URL "
                f"{', '.join(repr(u) for u in with_token)} already carries a token; "
                "use only one: remove the token from the URL or drop the 'token' option"
            )


def _userinfo_fields(username: str | None, password: str | None) -> dict[str, str]:
    """Read URL user info: ``TOKEN``/``:TOKEN`` -> auth_token, ``USER:PASS`` -> user/pass."""
    fields: dict[str, str] = {}
    if username is None:
        return fields
    if password is None:
        if username:
            fields["auth_token"] = username
    elif username == "":
        if password:
            fields["auth_token"] = password
    else:
        fields["user"] = username
        if password:
            fields["pass"] = password
    return fields


def _call_token(token: Callable[[], str]) -> str:
    value = token()
    if not isinstance(value, str):
        raise TypeError(f"the 'token' callable must return a str, not {type(value).__name__}")
    return value


def _option_fields(creds: Credentials) -> dict[str, str]:
    fields: dict[str, str] = {}
    token = creds.token
    value = _call_token(token) if callable(token) else token
    if value:
        fields["auth_token"] = value
    if creds.user:
        fields["user"] = creds.user
    if creds.password:
        fields["pass"] = creds.password
    return fields


def resolve_connect_auth(server: Server, creds: Credentials, nonce: str | None = None) -> dict[str, str]:
    """Return the auth fields of CONNECT for a connection attempt to *server*.

    The result holds some of ``auth_token``, ``user`` and ``pass`` (see the module
    docstring for the rules), plus what ``creds.extra(nonce)`` returns; on a key clash
    the resolver's own field is kept.  Empty values are never included.  A callable
    ``token`` is called once per call whenever it applies.

    Raises:
        ValueError: ``creds.token`` is callable and the server's URL carries a token.
        TypeError: the ``token`` callable or ``extra`` returned something that is not a
            str (or a dict of str).
    """
    if server.has_userinfo:
        fields = _userinfo_fields(server.username, server.password)
        if callable(creds.token):
            if "auth_token" in fields:
                raise ValueError(
                    f"option 'token' is a callable, but the server URL {server.redacted()!r} already "
                    "carries a token; use only one: remove the token from the URL or drop the 'token' option"
                )
            value = _call_token(creds.token)
            if value:
                fields["auth_token"] = value
    elif server.implicit and not creds.has_any:
        fields = _userinfo_fields(server.inherited_username, server.inherited_password)
    else:
        fields = _option_fields(creds)
    if creds.extra is not None:
        more = creds.extra(nonce)
        if not isinstance(more, dict):
            raise TypeError(f"credential 'extra' must return a dict of str, not {type(more).__name__}")
        for key, value in more.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("credential 'extra' must return a dict of str to str")
            if value and key not in fields:
                fields[key] = value
    return fields
