"""NKEY and JWT authentication (the optional extra ``natsync[nkeys]``).

:func:`make_signer` turns the ``connect()`` options ``nkeys_seed``, ``nkeys_seed_str``,
``user_credentials``, ``signature_cb`` and ``user_jwt_cb`` into the callable that the
credential resolver (:class:`natsync._auth.Credentials` ``extra``) calls on every
connection attempt with the server's INFO ``nonce``.  It returns the CONNECT fields:

* an NKEY user (``nkeys_seed`` / ``nkeys_seed_str``): ``nkey`` (the public key) and
  ``sig``;
* a JWT user (``user_credentials``, or ``user_jwt_cb`` with ``signature_cb`` or a seed):
  ``jwt`` and ``sig``.

``sig`` is the Ed25519 signature of the nonce, base64url without padding (as nats.go).

Secrets: a seed is read from its file (or taken from ``nkeys_seed_str``) afresh for every
connection attempt, into a ``bytearray`` that is zeroed once the nonce is signed; the
``nkeys`` key pair is wiped too.  Copies that Python makes inside ``base64`` and PyNaCl
are immutable and cannot be wiped; they are dropped at once.  No seed, JWT or signature
is ever put in a log record, an exception message or a ``repr()``.

Files are checked when ``connect()`` is called, before any socket is opened: a missing
file, a file without a seed or JWT, or an invalid seed raises ``ValueError`` (and a
missing ``nkeys`` package ``ImportError``) right there.

Combinations, as nats.go: a seed and ``user_credentials`` exclude each other, as do
``user_credentials`` and the callables; ``user_jwt_cb`` needs ``signature_cb`` or a seed to
sign with; ``signature_cb`` needs ``user_jwt_cb``.  A ``token`` or ``user``/``password`` is
sent alongside (the server decides which applies).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable
from typing import Any

from .errors import NatsError, NkeysNotSupportedError

__all__ = ["NkeysNotSupportedError", "make_signer", "NKEYS_IMPORT_ERROR"]

#: The message of the error raised when NKEY or JWT options are used without the
#: ``nkeys`` package (``pip install 'natsync[nkeys]'``).
NKEYS_IMPORT_ERROR = (
    "NKEY/JWT authentication (nkeys_seed, nkeys_seed_str, user_credentials) needs the 'nkeys' "
    "package: install it with  pip install 'natsync[nkeys]'"
)

PathLike = str | os.PathLike[str]

# A decorated block of a .creds / .nk file: "-----BEGIN ...-----\n<value>\n------END ...------"
# (nats.go nkeys.userConfigRE).
_BLOCK_RE = re.compile(rb"\s*(?:(?:-{3,}[^\n]*-{3,}\r?\n)([\w\-.=]+)(?:\r?\n-{3,}[^\n]*-{3,}(?:\r?\n|\Z)))")
_JWT_RE = re.compile(r"^[\w\-]+\.[\w\-]+\.[\w\-]+$")
_SEED_PREFIXES = (b"SO", b"SA", b"SU")
_SIG_LEN = 64  # Ed25519


def _import_nkeys() -> Any:
    try:
        import nkeys
    except ImportError:
        raise ImportError(NKEYS_IMPORT_ERROR, name="nkeys") from None
    return nkeys


def _wipe(buf: bytearray | None) -> None:
    if buf:
        buf[:] = bytes(len(buf))


def _read_file(path: PathLike, what: str) -> bytearray:
    """Read a whole small file into a bytearray (no intermediate bytes object)."""
    try:
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(os.fstat(f.fileno()).st_size + 1024)
            n = 0
            while True:
                k = f.readinto(memoryview(buf)[n:])
                if not k:
                    break
                n += k
                if n == len(buf):  # the file grew since fstat
                    bigger = bytearray(2 * len(buf))
                    bigger[:n] = buf
                    _wipe(buf)
                    buf = bigger
    except OSError as e:
        raise ValueError(f"cannot read the {what} file {os.fspath(path)!r}: {e.strerror or e}") from None
    del buf[n:]
    return buf


def _blocks(data: bytearray) -> list[tuple[int, int]]:
    return [m.span(1) for m in _BLOCK_RE.finditer(data)]


def _extract_seed(data: bytearray, source: str) -> bytearray:
    """The seed in a decorated .creds/.nk file or a bare seed (nats.go ParseDecoratedNKey)."""
    blocks = _blocks(data)
    seed: bytearray | None = None
    if len(blocks) > 1:
        start, end = blocks[1]
        seed = data[start:end]
    else:
        pos = 0
        size = len(data)
        while pos < size:
            nl = data.find(b"\n", pos)
            stop = size if nl < 0 else nl
            a, b = pos, stop
            while a < b and data[a] in b" \t\r":
                a += 1
            while b > a and data[b - 1] in b" \t\r":
                b -= 1
            if bytes(data[a:a + 2]) in _SEED_PREFIXES:
                seed = data[a:b]
                break
            pos = stop + 1
        if seed is None:
            raise ValueError(f"{source} holds no NKEY seed (a line starting with SU, SA or SO)")
    if bytes(seed[:2]) not in _SEED_PREFIXES:
        _wipe(seed)
        raise ValueError(f"{source} holds no NKEY seed (a line starting with SU, SA or SO)")
    return seed


def _extract_jwt(data: bytearray, source: str) -> str:
    """The JWT in a decorated .creds file or a bare JWT file (nats.go ParseDecoratedJWT)."""
    blocks = _blocks(data)
    if blocks:
        start, end = blocks[0]
        raw = bytes(data[start:end])
    else:
        raw = bytes(data).strip()
    try:
        jwt = raw.decode("ascii")
    except UnicodeDecodeError:
        jwt = ""
    if not _JWT_RE.match(jwt):
        raise ValueError(f"{source} holds no user JWT (header.payload.signature)")
    return jwt


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _checksum_ok(nkeys: Any, seed: bytearray) -> bool:
    """Check the CRC-16 at the end of an encoded seed (nkeys.py does not; nats.go does)."""
    padded = bytearray(seed)
    padded += b"=" * (-len(seed) % 8)
    raw = body = bytearray()
    try:
        raw = bytearray(base64.b32decode(padded))
        body = raw[:-2]
        return len(raw) > 2 and bytes(nkeys.crc16_checksum(body)) == bytes(raw[-2:])
    except (binascii.Error, ValueError):
        return False
    finally:
        _wipe(padded)
        _wipe(raw)
        _wipe(body)


class _KeySource:
    """Where a seed comes from: a file (a bare or decorated seed, or a .creds file) or a str."""

    def __init__(self, *, path: PathLike | None = None, text: str | None = None, what: str = "") -> None:
        self._path = path
        self._text = text
        self._what = what

    def describe(self) -> str:
        if self._path is not None:
            return f"{self._what} file {os.fspath(self._path)!r}"
        return "option 'nkeys_seed_str'"

    def _load(self) -> bytearray:
        if self._path is not None:
            data = _read_file(self._path, self._what)
            try:
                return _extract_seed(data, f"the {self.describe()}")
            finally:
                _wipe(data)
        assert self._text is not None
        data = bytearray(self._text.strip(), "ascii", "replace")
        try:
            return _extract_seed(data, "option 'nkeys_seed_str'")
        finally:
            _wipe(data)

    def sign(self, nonce: bytes) -> tuple[str, bytes]:
        """Read the seed, return (public key, signature of *nonce*); the seed is wiped."""
        nkeys = _import_nkeys()
        seed = self._load()
        kp = None
        try:
            try:
                if not _checksum_ok(nkeys, seed):
                    raise ValueError("checksum")
                kp = nkeys.from_seed(seed)
                public = bytes(kp.public_key).decode("ascii")
                sig = bytes(kp.sign(nonce))
            except Exception as e:  # nkeys raises its own ErrInvalidSeed, binascii errors, ...
                raise ValueError(
                    f"the {self.describe()} does not hold a valid NKEY seed ({type(e).__name__})"
                ) from None
        finally:
            _wipe(seed)
            if kp is not None:
                try:
                    kp.wipe()
                except AttributeError:  # pragma: no cover - already wiped
                    pass
        return public, sig


class _Signer:
    """The ``extra`` callable of :class:`natsync._auth.Credentials`: nonce -> CONNECT fields."""

    def __init__(
        self,
        *,
        key: _KeySource | None,
        jwt_path: PathLike | None,
        signature_cb: Callable[[bytes], bytes] | None,
        user_jwt_cb: Callable[[], str | bytes] | None,
    ) -> None:
        self._key = key
        self._jwt_path = jwt_path
        self._signature_cb = signature_cb
        self._user_jwt_cb = user_jwt_cb

    @property
    def uses_jwt(self) -> bool:
        return self._jwt_path is not None or self._user_jwt_cb is not None

    def __repr__(self) -> str:
        kind = "jwt" if self.uses_jwt else "nkey"
        return f"<natsync NKEY signer ({kind})>"

    def check(self) -> None:
        """Read every file once now (at connect()), so that bad paths fail early."""
        if self._key is not None:
            self._key.sign(b"natsync-check")
        if self._jwt_path is not None:
            self._read_jwt()

    def _read_jwt(self) -> str:
        if self._jwt_path is not None:
            data = _read_file(self._jwt_path, "user JWT")
            try:
                return _extract_jwt(data, f"the user JWT file {os.fspath(self._jwt_path)!r}")
            finally:
                _wipe(data)
        assert self._user_jwt_cb is not None
        try:
            value = self._user_jwt_cb()
        except Exception as e:
            raise NatsError(f"user_jwt_cb raised {type(e).__name__}: {e}") from e
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("ascii", "replace")
        if not isinstance(value, str):
            raise NatsError(f"user_jwt_cb must return a str or bytes JWT, not {type(value).__name__}")
        value = value.strip()
        if not value:
            raise NatsError("user_jwt_cb returned an empty JWT")
        return value

    def _callback_sig(self, nonce: bytes) -> str:
        assert self._signature_cb is not None
        try:
            raw: Any = self._signature_cb(nonce)
        except Exception as e:
            raise NatsError(f"signature_cb raised {type(e).__name__}: {e}") from e
        if isinstance(raw, str):
            raw = raw.encode("ascii", "replace")
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise NatsError(f"signature_cb must return bytes, not {type(raw).__name__}")
        raw = bytes(raw)
        if len(raw) == _SIG_LEN:
            return _b64url(raw)
        # Accept an already base64-encoded signature too (nats-py's signature_cb returns one).
        text = raw.strip().rstrip(b"=")
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                decoded = decode(text + b"=" * (-len(text) % 4))
            except (binascii.Error, ValueError):
                continue
            if len(decoded) == _SIG_LEN:
                return _b64url(decoded)
        raise NatsError(
            f"signature_cb must return the {_SIG_LEN}-byte Ed25519 signature of the nonce "
            f"(or it base64-encoded), not {len(raw)} bytes"
        )

    def __call__(self, nonce: str | None) -> dict[str, str]:
        if not isinstance(nonce, str):
            nonce = None
        if not nonce and not self.uses_jwt:
            raise NkeysNotSupportedError(
                "an NKEY is configured but the server sent no nonce to sign: it has no NKEY users; "
                "check the server URL, or connect without nkeys_seed/nkeys_seed_str"
            )
        data = (nonce or "").encode()
        fields: dict[str, str] = {}
        if self.uses_jwt:
            fields["jwt"] = self._read_jwt()
        if self._signature_cb is not None:
            fields["sig"] = self._callback_sig(data)
        else:
            assert self._key is not None
            public, sig = self._key.sign(data)
            if not self.uses_jwt:
                fields["nkey"] = public
            fields["sig"] = _b64url(sig)
        return fields


def _check_path(name: str, value: object) -> PathLike:
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
        return value
    raise TypeError(f"option {name!r} must be a file path (str or os.PathLike), not {type(value).__name__}")


def make_signer(
    *,
    nkeys_seed: PathLike | None = None,
    nkeys_seed_str: str | None = None,
    user_credentials: PathLike | tuple[PathLike, PathLike] | None = None,
    signature_cb: Callable[[bytes], bytes] | None = None,
    user_jwt_cb: Callable[[], str | bytes] | None = None,
) -> Callable[[str | None], dict[str, str]]:
    """Validate the NKEY/JWT options and return ``signer(nonce) -> CONNECT fields``.

    Args:
        nkeys_seed: path of a file holding an NKEY seed (bare, or decorated as ``nsc``
            writes it).
        nkeys_seed_str: the seed itself (``"SU..."``).
        user_credentials: path of a ``.creds`` file (JWT and seed), or a pair
            ``(jwt_path, seed_path)``.
        signature_cb: ``signature_cb(nonce: bytes) -> bytes``, the raw 64-byte Ed25519
            signature of the nonce (a base64-encoded one is accepted too), for a key
            held elsewhere (an HSM, a vault).  Needs ``user_jwt_cb``.
        user_jwt_cb: ``user_jwt_cb() -> str | bytes``, the user JWT; called on every
            connection attempt.  Needs ``signature_cb`` or a seed.

    Raises:
        TypeError: an option of the wrong type.
        ValueError: options that do not go together, a file that cannot be read or
            holds no seed/JWT, an invalid seed.  Never contains a secret.
        ImportError: a seed must be read but the ``nkeys`` package is not installed.
    """
    if nkeys_seed is not None and nkeys_seed_str is not None:
        raise ValueError("give only one of the options 'nkeys_seed' (a file) and 'nkeys_seed_str'")
    has_seed = nkeys_seed is not None or nkeys_seed_str is not None
    if user_credentials is not None and has_seed:
        raise ValueError(
            "option 'user_credentials' already holds the user's seed: drop 'nkeys_seed'/'nkeys_seed_str'"
        )
    if user_credentials is not None and (signature_cb is not None or user_jwt_cb is not None):
        raise ValueError(
            "option 'user_credentials' already gives the JWT and signs the nonce: "
            "drop 'user_jwt_cb'/'signature_cb'"
        )
    if signature_cb is not None and has_seed:
        raise ValueError(
            "give either a seed ('nkeys_seed'/'nkeys_seed_str') or 'signature_cb' to sign with, not both"
        )
    if signature_cb is not None and user_jwt_cb is None:
        raise ValueError(
            "option 'signature_cb' needs 'user_jwt_cb' (the JWT the signature goes with); "
            "for a bare NKEY use 'nkeys_seed' or 'nkeys_seed_str'"
        )
    if user_jwt_cb is not None and signature_cb is None and not has_seed:
        raise ValueError(
            "option 'user_jwt_cb' needs 'signature_cb' or a seed ('nkeys_seed'/'nkeys_seed_str') to sign with"
        )
    for name, cb in (("signature_cb", signature_cb), ("user_jwt_cb", user_jwt_cb)):
        if cb is not None and not callable(cb):
            raise TypeError(f"option {name!r} must be callable or None, not {type(cb).__name__}")

    key: _KeySource | None = None
    jwt_path: PathLike | None = None
    if nkeys_seed is not None:
        key = _KeySource(path=_check_path("nkeys_seed", nkeys_seed), what="NKEY seed")
    elif nkeys_seed_str is not None:
        if not isinstance(nkeys_seed_str, str):
            raise TypeError(f"option 'nkeys_seed_str' must be a str, not {type(nkeys_seed_str).__name__}")
        key = _KeySource(text=nkeys_seed_str)
    elif user_credentials is not None:
        if isinstance(user_credentials, tuple):
            if len(user_credentials) != 2:
                raise ValueError(
                    "option 'user_credentials' must be a .creds path or a (jwt_path, seed_path) pair"
                )
            jwt_path = _check_path("user_credentials", user_credentials[0])
            key = _KeySource(path=_check_path("user_credentials", user_credentials[1]), what="NKEY seed")
        else:
            jwt_path = _check_path("user_credentials", user_credentials)
            key = _KeySource(path=jwt_path, what="credentials")
    if key is not None:
        _import_nkeys()
    signer = _Signer(key=key, jwt_path=jwt_path, signature_cb=signature_cb, user_jwt_cb=user_jwt_cb)
    signer.check()
    return signer
