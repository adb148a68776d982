"""NKEY and JWT authentication: against real nats-server processes (an ``authorization {
users = [{nkey: ...}] }`` config, and operator mode with account and user JWTs made
here), and against a fake server that shows exactly what went into CONNECT.
"""

from __future__ import annotations

import base64
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nkeys
import pytest
from authkit import (
    Key,
    OperatorSetup,
    account_jwt,
    assert_no_secret,
    creds_text,
    exception_texts,
    make_operator_setup,
    new_key,
    run_example,
    user_jwt,
    verify_sig,
)
from fakeserver import FakeConn, FakeServer

import natsync
from natsync import AuthorizationError, NatsError, NoServersError
from natsync._nkeys import NKEYS_IMPORT_ERROR, NkeysNotSupportedError, make_signer
from natsync.testing import NATSServer

ROOT = Path(__file__).resolve().parent.parent
HANG = 20.0
NONCE = "xq1-NONCE_fake"


def _roundtrip(nc: natsync.Client) -> None:
    sub = nc.subscribe("nk.test")
    nc.publish("nk.test", b"hi")
    assert sub.next_msg(timeout=5).data == b"hi"
    sub.unsubscribe()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def user_key() -> Key:
    return new_key()


@pytest.fixture(scope="module")
def nkey_server(user_key: Key) -> Iterator[NATSServer]:
    conf = f"authorization {{ users = [ {{ nkey: {user_key.public} }} ] }}\n"
    with NATSServer(config=conf) as server:
        yield server


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> OperatorSetup:
    return make_operator_setup(tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="module")
def op_server(op: OperatorSetup) -> Iterator[NATSServer]:
    with NATSServer(config=op.config) as server:
        yield server


@pytest.fixture
def untouched() -> Iterator[str]:
    """A URL nobody may connect to: the test fails if a connection was attempted."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield f"nats://127.0.0.1:{listener.getsockname()[1]}"
        listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            listener.accept()[0].close()
    finally:
        listener.close()


def _seed_file(tmp_path: Path, key: Key, decorated: bool = False, name: str = "user.nk") -> str:
    path = tmp_path / name
    if decorated:
        path.write_text(f"-----BEGIN USER NKEY SEED-----\n{key.seed}\n------END USER NKEY SEED------\n")
    else:
        path.write_text(key.seed + "\n")
    return str(path)


# ---------------------------------------------------------------------- NKEY, real server


@pytest.mark.parametrize("form", ["file", "decorated-file", "str"])
def test_nkey_user(nkey_server: NATSServer, user_key: Key, tmp_path: Path, form: str) -> None:
    opts: dict[str, Any]
    if form == "str":
        opts = {"nkeys_seed_str": user_key.seed}
    else:
        opts = {"nkeys_seed": _seed_file(tmp_path, user_key, decorated=form == "decorated-file")}
    with natsync.connect(nkey_server.url, **opts) as nc:
        _roundtrip(nc)
        assert user_key.seed not in repr(nc)


def test_nkey_reconnect_signs_the_new_nonce(nkey_server: NATSServer, user_key: Key, tmp_path: Path) -> None:
    reconnected = threading.Event()
    with natsync.connect(
        nkey_server.url,
        nkeys_seed=_seed_file(tmp_path, user_key),
        reconnect_time_wait=0.05,
        reconnected_cb=reconnected.set,
    ) as nc:
        nkey_server.restart()
        assert reconnected.wait(HANG)
        _roundtrip(nc)


def test_unknown_nkey_is_rejected(nkey_server: NATSServer, user_key: Key) -> None:
    other = new_key()
    with pytest.raises(AuthorizationError) as info:
        natsync.connect(nkey_server.url, nkeys_seed_str=other.seed)
    assert_no_secret(exception_texts(info.value), [other.seed, user_key.seed])


def test_nkey_against_a_server_without_nonce(user_key: Key) -> None:
    with NATSServer() as server:
        with pytest.raises(NoServersError) as info:
            natsync.connect(server.url, nkeys_seed_str=user_key.seed)
    assert "no nonce" in str(info.value)
    assert_no_secret(exception_texts(info.value), [user_key.seed])


# ----------------------------------------------------------------- JWT, operator mode


def test_creds_file(op_server: NATSServer, op: OperatorSetup) -> None:
    with natsync.connect(op_server.url, user_credentials=op.creds_file) as nc:
        _roundtrip(nc)


def test_jwt_and_seed_files(op_server: NATSServer, op: OperatorSetup) -> None:
    with natsync.connect(op_server.url, user_credentials=(op.jwt_file, op.seed_file)) as nc:
        _roundtrip(nc)
    with natsync.connect(op_server.url, user_credentials=(Path(op.jwt_file), Path(op.seed_file))) as nc:
        _roundtrip(nc)


def test_user_jwt_cb_and_signature_cb(op_server: NATSServer, op: OperatorSetup) -> None:
    """Secrets held elsewhere: the JWT and the signing come from callables."""
    nonces: list[bytes] = []

    def sign(nonce: bytes) -> bytes:
        nonces.append(nonce)
        return op.user.sign(nonce)

    with natsync.connect(op_server.url, user_jwt_cb=lambda: op.user_jwt, signature_cb=sign) as nc:
        _roundtrip(nc)
    assert len(nonces) == 1 and nonces[0]
    # as nats-py's callbacks: bytes JWT, base64 (standard, padded) signature
    with natsync.connect(
        op_server.url,
        user_jwt_cb=lambda: op.user_jwt.encode(),
        signature_cb=lambda n: base64.b64encode(op.user.sign(n)),
    ) as nc:
        _roundtrip(nc)


def test_user_jwt_cb_with_seed(op_server: NATSServer, op: OperatorSetup) -> None:
    with natsync.connect(op_server.url, user_jwt_cb=lambda: op.user_jwt, nkeys_seed_str=op.user.seed) as nc:
        _roundtrip(nc)
    with natsync.connect(op_server.url, user_jwt_cb=lambda: op.user_jwt, nkeys_seed=op.seed_file) as nc:
        _roundtrip(nc)


def test_jwt_of_an_unknown_account_is_rejected(
    op_server: NATSServer, op: OperatorSetup, tmp_path: Path
) -> None:
    stranger = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_key()
    creds = tmp_path / "stranger.creds"
    creds.write_text(creds_text(user_jwt(stranger, user), user.seed))
    with pytest.raises(AuthorizationError) as info:
        natsync.connect(op_server.url, user_credentials=str(creds))
    assert_no_secret(exception_texts(info.value), [user.seed, op.user.seed, op.user_jwt])


def test_expired_user_jwt_is_rejected(op_server: NATSServer, op: OperatorSetup, tmp_path: Path) -> None:
    user = new_key()
    creds = tmp_path / "expired.creds"
    creds.write_text(creds_text(user_jwt(op.account, user, exp=int(time.time()) - 60), user.seed))
    with pytest.raises(AuthorizationError):
        natsync.connect(op_server.url, user_credentials=str(creds))


def test_jwt_signed_with_the_wrong_seed_is_rejected(op_server: NATSServer, op: OperatorSetup) -> None:
    other = new_key()
    with pytest.raises(AuthorizationError) as info:
        natsync.connect(op_server.url, user_jwt_cb=lambda: op.user_jwt, nkeys_seed_str=other.seed)
    assert_no_secret(exception_texts(info.value), [other.seed, op.user_jwt])


def test_example_nkey_connect(nkey_server: NATSServer, user_key: Key, tmp_path: Path) -> None:
    env = {
        "NATS_URL_HOSTPORT": f"127.0.0.1:{nkey_server.port}",
        "NATS_NKEY_SEED_FILE": _seed_file(tmp_path, user_key),
    }
    proc = run_example("nkey_connect.py", env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"connected to nats://127.0.0.1:{nkey_server.port}" in proc.stdout
    assert "received: b'hello with an NKEY'" in proc.stdout
    assert user_key.seed not in proc.stdout + proc.stderr
    # a wrong key: the example fails, without printing the seed
    other = new_key()
    proc = run_example(
        "nkey_connect.py", {}, [f"127.0.0.1:{nkey_server.port}", _seed_file(tmp_path, other, name="o.nk")]
    )
    assert proc.returncode != 0 and "AuthorizationError" in proc.stderr
    assert other.seed not in proc.stdout + proc.stderr


def test_example_creds_connect(op_server: NATSServer, op: OperatorSetup) -> None:
    env = {"NATS_URL_HOSTPORT": f"127.0.0.1:{op_server.port}", "NATS_CREDS_FILE": op.creds_file}
    proc = run_example("creds_connect.py", env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "received: b'hello with a JWT'" in proc.stdout
    assert op.user.seed not in proc.stdout + proc.stderr and op.user_jwt not in proc.stdout + proc.stderr


# ------------------------------------------------------------ CONNECT, on a fake server


def _handshake_then_serve(**info: Any) -> Any:
    def script(c: FakeConn) -> None:
        c.handshake(**info)
        c.serve()

    return script


def test_connect_fields_for_an_nkey(user_key: Key) -> None:
    with FakeServer([_handshake_then_serve(nonce=NONCE, auth_required=True)]) as fake:
        with natsync.connect(fake.url, nkeys_seed_str=user_key.seed) as nc:
            nc.flush()
    (connect,) = fake.connects
    assert connect["nkey"] == user_key.public
    assert "jwt" not in connect
    assert verify_sig(user_key.public, NONCE, connect["sig"])  # base64url, no padding


def test_connect_fields_for_creds(op: OperatorSetup) -> None:
    with FakeServer([_handshake_then_serve(nonce=NONCE, auth_required=True)]) as fake:
        with natsync.connect(fake.url, user_credentials=op.creds_file) as nc:
            nc.flush()
    (connect,) = fake.connects
    assert connect["jwt"] == op.user_jwt
    assert "nkey" not in connect
    assert verify_sig(op.user.public, NONCE, connect["sig"])


def test_token_goes_along_as_in_nats_go(user_key: Key, op: OperatorSetup) -> None:
    with FakeServer([_handshake_then_serve(nonce=NONCE)] * 2) as fake:
        with natsync.connect(fake.url, nkeys_seed_str=user_key.seed, token="tok-xyz") as nc:
            nc.flush()
        with natsync.connect(fake.url, user_credentials=op.creds_file, user="u", password="p-xyz") as nc:
            nc.flush()
    first, second = fake.connects
    assert first["auth_token"] == "tok-xyz" and first["nkey"] == user_key.public and first["sig"]
    assert second["user"] == "u" and second["pass"] == "p-xyz" and second["jwt"] == op.user_jwt


def test_jwt_without_nonce_signs_the_empty_nonce_as_nats_go(op: OperatorSetup) -> None:
    with FakeServer([_handshake_then_serve()]) as fake:
        with natsync.connect(fake.url, user_credentials=op.creds_file) as nc:
            nc.flush()
    (connect,) = fake.connects
    assert connect["jwt"] == op.user_jwt and verify_sig(op.user.public, "", connect["sig"])


def test_seed_file_is_read_on_every_connect(tmp_path: Path) -> None:
    """The file is read afresh for each attempt: a rotated seed is used on reconnect."""
    first_key, second_key = new_key(), new_key()
    path = _seed_file(tmp_path, first_key)
    rotated = threading.Event()

    def first(c: FakeConn) -> None:
        c.handshake(nonce="n1")
        assert rotated.wait(HANG)
        # closing the connection makes the client reconnect

    reconnected = threading.Event()
    with FakeServer([first, _handshake_then_serve(nonce="n2")]) as fake:
        with natsync.connect(
            fake.url, nkeys_seed=path, reconnect_time_wait=0.01, reconnected_cb=reconnected.set
        ) as nc:
            Path(path).write_text(second_key.seed + "\n")
            rotated.set()
            assert reconnected.wait(HANG)
            nc.flush()
    one, two = fake.connects
    assert one["nkey"] == first_key.public and verify_sig(first_key.public, "n1", one["sig"])
    assert two["nkey"] == second_key.public and verify_sig(second_key.public, "n2", two["sig"])


def test_seed_is_wiped_after_signing(user_key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real = nkeys.from_seed

    def spy(seed: Any) -> Any:
        seen.append(seed)
        return real(seed)

    monkeypatch.setattr(nkeys, "from_seed", spy)
    with FakeServer([_handshake_then_serve(nonce=NONCE)] * 2) as fake:
        for opts in ({"nkeys_seed": _seed_file(tmp_path, user_key)}, {"nkeys_seed_str": user_key.seed}):
            with natsync.connect(fake.url, **opts) as nc:  # type: ignore[arg-type]
                nc.flush()
    assert len(seen) == 4  # connect()'s check, then the attempt, for each
    for seed in seen:
        assert isinstance(seed, bytearray) and len(seed) == len(user_key.seed)
        assert seed == bytearray(len(seed)), "the seed was not wiped"


def test_callbacks_that_raise_do_not_kill_the_client(op: OperatorSetup) -> None:
    """A signature_cb that fails: connect() raises a NatsError; during a reconnect the
    attempt fails, and the client keeps trying (the reader thread survives)."""
    fail = threading.Event()
    raised = threading.Event()

    def sign(nonce: bytes) -> bytes:
        if fail.is_set():
            raised.set()
            raise RuntimeError("vault unavailable")
        return op.user.sign(nonce)

    with FakeServer([], default=lambda c: c.info(nonce=NONCE)) as fake:
        fail.set()
        with pytest.raises(NoServersError, match="signature_cb raised RuntimeError: vault unavailable"):
            natsync.connect(fake.url, user_jwt_cb=lambda: op.user_jwt, signature_cb=sign)

    fail.clear()
    raised.clear()
    go = threading.Event()

    def first(c: FakeConn) -> None:
        c.handshake(nonce=NONCE)
        assert go.wait(HANG)  # then the connection closes: the client reconnects

    reconnected = threading.Event()
    with FakeServer([first], default=_handshake_then_serve(nonce=NONCE)) as fake:
        nc = natsync.connect(
            fake.url,
            user_jwt_cb=lambda: op.user_jwt,
            signature_cb=sign,
            reconnect_time_wait=0.01,
            reconnected_cb=reconnected.set,
        )
        try:
            fail.set()
            go.set()
            assert raised.wait(HANG)  # a reconnect attempt failed in signature_cb
            fail.clear()
            assert reconnected.wait(HANG)
            nc.flush()
            assert nc.is_connected
        finally:
            nc.close()


# ------------------------------------------------------------ validation at connect()


def test_missing_nkeys_package(untouched: str, monkeypatch: pytest.MonkeyPatch, user_key: Key) -> None:
    monkeypatch.setitem(sys.modules, "nkeys", None)
    with pytest.raises(ImportError) as info:
        natsync.connect(untouched, nkeys_seed_str=user_key.seed)
    assert str(info.value) == NKEYS_IMPORT_ERROR and "pip install 'natsync[nkeys]'" in str(info.value)
    assert_no_secret(exception_texts(info.value), [user_key.seed])


def test_callables_need_no_nkeys_package(
    op_server: NATSServer, op: OperatorSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nkeys", None)
    with natsync.connect(op_server.url, user_jwt_cb=lambda: op.user_jwt, signature_cb=op.user.sign) as nc:
        _roundtrip(nc)


def _bad_seed(seed: str) -> str:
    return seed[:-3] + ("AAA" if not seed.endswith("AAA") else "BBB")  # breaks the checksum


@pytest.mark.parametrize(
    "case",
    [
        "missing-file",
        "directory",
        "empty-file",
        "no-seed-in-file",
        "bad-seed-file",
        "bad-seed-str",
        "account-jwt-only-creds",
        "missing-jwt-file",
        "not-a-jwt",
        "creds-without-seed",
    ],
)
def test_bad_files_fail_before_any_socket(
    untouched: str, tmp_path: Path, user_key: Key, op: OperatorSetup, case: str
) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "noseed").write_text("hello\nworld\n")
    (tmp_path / "badseed").write_text(_bad_seed(user_key.seed))
    (tmp_path / "notjwt").write_text("this is not a JWT\n")
    (tmp_path / "jwtonly.creds").write_text(
        f"-----BEGIN NATS USER JWT-----\n{op.user_jwt}\n------END NATS USER JWT------\n"
    )
    opts: dict[str, Any] = {
        "missing-file": {"nkeys_seed": str(tmp_path / "nope.nk")},
        "directory": {"nkeys_seed": str(tmp_path)},
        "empty-file": {"nkeys_seed": str(tmp_path / "empty")},
        "no-seed-in-file": {"nkeys_seed": str(tmp_path / "noseed")},
        "bad-seed-file": {"nkeys_seed": str(tmp_path / "badseed")},
        "bad-seed-str": {"nkeys_seed_str": _bad_seed(user_key.seed)},
        "account-jwt-only-creds": {"user_credentials": str(tmp_path / "jwtonly.creds")},
        "missing-jwt-file": {"user_credentials": (str(tmp_path / "nope.jwt"), op.seed_file)},
        "not-a-jwt": {"user_credentials": (str(tmp_path / "notjwt"), op.seed_file)},
        "creds-without-seed": {"user_credentials": str(tmp_path / "noseed")},
    }[case]
    with pytest.raises(ValueError) as info:
        natsync.connect(untouched, **opts)
    assert_no_secret(
        exception_texts(info.value), [user_key.seed, _bad_seed(user_key.seed), op.user_jwt, op.user.seed]
    )
    if "file" in case or "creds" in case:
        assert str(tmp_path) in str(info.value)  # names the file


@pytest.mark.parametrize(
    "opts, words",
    [
        ({"nkeys_seed": "a", "nkeys_seed_str": "b"}, "only one"),
        ({"nkeys_seed_str": "b", "user_credentials": "c"}, "already holds the user's seed"),
        (
            {"user_credentials": "c", "user_jwt_cb": lambda: "j", "signature_cb": lambda n: n},
            "drop 'user_jwt_cb'",
        ),
        ({"nkeys_seed_str": "b", "user_jwt_cb": lambda: "j", "signature_cb": lambda n: n}, "not both"),
        ({"signature_cb": lambda n: n}, "needs 'user_jwt_cb'"),
        ({"user_jwt_cb": lambda: "j"}, "needs 'signature_cb' or a seed"),
        ({"user_credentials": ("a", "b", "c")}, "pair"),
    ],
)
def test_option_combinations(untouched: str, opts: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        natsync.connect(untouched, **opts)


@pytest.mark.parametrize(
    "opts",
    [
        {"nkeys_seed": 42},
        {"nkeys_seed_str": b"SU..."},
        {"user_credentials": 3},
        {"signature_cb": 1, "user_jwt_cb": 2},
    ],
)
def test_option_types(untouched: str, opts: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        natsync.connect(untouched, **opts)


def test_signer_directly(user_key: Key, op: OperatorSetup) -> None:
    signer = make_signer(nkeys_seed_str=user_key.seed)
    assert user_key.seed not in repr(signer)
    fields = signer("abc")
    assert fields["nkey"] == user_key.public and verify_sig(user_key.public, "abc", fields["sig"])
    with pytest.raises(NkeysNotSupportedError, match="no nonce"):
        signer(None)
    with pytest.raises(NkeysNotSupportedError):
        signer("")
    jwt_signer = make_signer(user_credentials=op.creds_file)
    assert set(jwt_signer("n")) == {"jwt", "sig"}
    assert op.user_jwt not in repr(jwt_signer)
    bad = make_signer(user_jwt_cb=lambda: op.user_jwt, signature_cb=lambda n: b"short")
    with pytest.raises(NatsError, match="64-byte"):
        bad("n")
    empty = make_signer(user_jwt_cb=lambda: "", signature_cb=op.user.sign)
    with pytest.raises(NatsError, match="empty JWT"):
        empty("n")


def test_account_seed_in_a_creds_file_is_accepted_like_nats_go(op: OperatorSetup, tmp_path: Path) -> None:
    """nats.go accepts SO/SA/SU seeds; the server decides whether the key is allowed."""
    account = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    creds = tmp_path / "acct.creds"
    creds.write_text(creds_text(account_jwt(op.operator, account, "X"), account.seed))
    fields = make_signer(user_credentials=str(creds))("n")
    assert verify_sig(account.public, "n", fields["sig"])


# ------------------------------------------------------------------------------ helpers
