"""No secret leaves: for every auth method (token, user/password, token and user info in
URLs, NKEY, JWT creds, callables, TLS, mTLS) a full connect / subscribe / publish /
request / reconnect / close cycle runs with the ``natsync`` logger at DEBUG, and every
surface is swept for the token, passwords, NKEY seeds and JWTs in use: repr() and str()
of every public object met, ``connected_url``, ``servers``, ``discovered_servers``,
``server_info``, every error passed to ``error_cb``, every exception raised (with its
chain and traceback), and every log record.  The failing variants (wrong secret, TLS
refused, bad files) are swept the same way.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nkeys
import pytest
from authkit import (
    Key,
    OperatorSetup,
    Pki,
    assert_no_secret,
    client_context,
    creds_text,
    exception_texts,
    make_operator_setup,
    make_pki,
    new_key,
    tls_block,
    user_jwt,
    wait_until,
)

import natsync
from natsync import Headers, NatsError
from natsync._nkeys import make_signer
from natsync.testing import NATSCluster, NATSServer

HANG = 20.0
TOKEN = "s3cr3t-T0KEN-4f9a"
USER, PASSWORD = "alice", "pa55-W0RD-e71c"
URL_PASSWORD = "p@ss:w/rd%-9q"  # needs percent-encoding in a URL


class Sweep:
    """Collects every text a user could see."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []  # (where, text)
        self.errors: list[NatsError] = []

    def add(self, where: str, *objs: Any) -> None:
        for obj in objs:
            if isinstance(obj, BaseException):
                for t in exception_texts(obj):
                    self.texts.append((where, t))
            elif isinstance(obj, str):
                self.texts.append((where, obj))
            else:
                self.texts.append((where, repr(obj)))
                self.texts.append((where, str(obj)))

    def client(self, where: str, nc: natsync.Client) -> None:
        self.add(where, nc, nc.stats, str(nc.connected_url), json.dumps(nc.servers))
        self.add(where, json.dumps(nc.discovered_servers), json.dumps(nc.server_info))

    def error_cb(self, e: NatsError) -> None:
        self.errors.append(e)

    def check(self, secrets: list[str]) -> None:
        for e in self.errors:
            self.add("error_cb", e)
        assert self.texts
        for where, text in self.texts:
            assert_no_secret(text, secrets, f"in {where}")


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # includes exc_info / stack_info text
        self.lines.append(repr(record.args))


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    logger = logging.getLogger("natsync")
    handler = LogCapture()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> OperatorSetup:
    return make_operator_setup(tmp_path_factory.mktemp("op"))


@pytest.fixture(scope="module")
def nkey_user() -> Key:
    return new_key()


def _all_secrets(op: OperatorSetup, nkey_user: Key) -> list[str]:
    return [
        TOKEN,
        PASSWORD,
        URL_PASSWORD,
        quote(URL_PASSWORD, safe=""),
        nkey_user.seed,
        op.user.seed,
        op.user_jwt,
        op.account.seed,
        op.operator.seed,
        op.user_jwt.split(".")[2],  # the JWT's signature part alone
    ]


def _cycle(sweep: Sweep, server: NATSServer, url: str, **opts: Any) -> None:
    """Connect, use every feature, make it reconnect, drain; sweep every surface."""
    reconnected = threading.Event()
    nc = natsync.connect(
        url,
        error_cb=sweep.error_cb,
        reconnected_cb=reconnected.set,
        reconnect_time_wait=0.05,
        reconnect_jitter=0.0,
        reconnect_jitter_tls=0.0,
        name="secrets-test",
        **opts,
    )
    try:
        sweep.client("connected", nc)
        sub = nc.subscribe("sweep.>")
        svc = nc.subscribe("sweep.svc", cb=lambda m: m.respond(b"pong", headers={"X-Reply": "1"}))
        nc.publish("sweep.a", b"hello", headers={"Trace": "t1"})
        msg = sub.next_msg(timeout=5)
        reply = nc.request("sweep.svc", b"ping", timeout=5)
        sweep.add("objects", sub, svc, msg, msg.headers, reply, reply.headers, Headers({"A": "b"}))
        try:
            nc.request("nobody.home", b"", timeout=5)
        except NatsError as e:
            sweep.add("no responders", e)
        server.restart()
        assert reconnected.wait(HANG)
        sweep.client("reconnected", nc)
        nc.publish("sweep.b", b"again")
        nc.flush(timeout=5)
        sweep.add("rtt", str(nc.rtt()))
        nc.drain(timeout=5)
    finally:
        nc.close()
    sweep.client("closed", nc)
    sweep.add("closed-error", _raises(lambda: nc.publish("x", b"")))


def _raises(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("expected an exception")


# ------------------------------------------------------------------------ the cycles


def test_token_and_user_password(logs: LogCapture, op: OperatorSetup, nkey_user: Key) -> None:
    sweep = Sweep()
    with NATSServer(token=TOKEN) as server:
        host = f"127.0.0.1:{server.port}"
        _cycle(sweep, server, f"nats://{host}", token=TOKEN)
        _cycle(sweep, server, f"nats://{TOKEN}@{host}")
        _cycle(sweep, server, f"nats://:{TOKEN}@{host}")
        _cycle(sweep, server, f"nats://{host}", token=lambda: TOKEN)
        sweep.add("wrong token", _raises(lambda: natsync.connect(f"nats://{host}", token=TOKEN + "x")))
        sweep.add(
            "callable+url", _raises(lambda: natsync.connect(f"nats://{TOKEN}@{host}", token=lambda: TOKEN))
        )
    with NATSServer(user=USER, password=PASSWORD) as server:
        host = f"127.0.0.1:{server.port}"
        _cycle(sweep, server, f"nats://{host}", user=USER, password=PASSWORD)
        _cycle(sweep, server, f"nats://{USER}:{PASSWORD}@{host}")
        sweep.add(
            "wrong password",
            _raises(lambda: natsync.connect(f"nats://{host}", user=USER, password=PASSWORD + "x")),
        )
    conf = f'authorization {{ user: "{USER}", password: "{URL_PASSWORD}" }}\n'
    with NATSServer(config=conf) as server:
        _cycle(sweep, server, f"nats://{USER}:{quote(URL_PASSWORD, safe='')}@127.0.0.1:{server.port}")
    sweep.add("bad url", _raises(lambda: natsync.connect(f"nats://{USER}:{PASSWORD}@host:notaport")))
    sweep.check([*_all_secrets(op, nkey_user), TOKEN + "x", PASSWORD + "x"])
    _check_logs(logs, [*_all_secrets(op, nkey_user), TOKEN + "x", PASSWORD + "x"])


def test_discovered_servers_inherit_credentials_without_showing_them(
    logs: LogCapture, op: OperatorSetup, nkey_user: Key
) -> None:
    sweep = Sweep()
    reconnected = threading.Event()
    with NATSCluster(2, token=TOKEN) as cluster:
        s0, s1 = cluster.servers
        with natsync.connect(
            f"nats://{TOKEN}@127.0.0.1:{s0.port}",
            reconnect_time_wait=0.05,
            reconnected_cb=reconnected.set,
            error_cb=sweep.error_cb,
        ) as nc:
            wait_until(lambda: f"nats://127.0.0.1:{s1.port}" in nc.discovered_servers, what="discovery")
            sweep.client("discovered", nc)
            s0.stop()
            assert reconnected.wait(HANG)
            sweep.client("failed over", nc)
            assert nc.connected_url == f"nats://127.0.0.1:{s1.port}"
            nc.flush()
    sweep.check(_all_secrets(op, nkey_user))
    _check_logs(logs, _all_secrets(op, nkey_user))


@pytest.fixture(scope="module")
def plain_server() -> Iterator[NATSServer]:
    with NATSServer() as server:
        yield server


def test_nkey_and_jwt(
    logs: LogCapture, op: OperatorSetup, nkey_user: Key, tmp_path: Path, plain_server: NATSServer
) -> None:
    sweep = Sweep()
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(nkey_user.seed)
    with NATSServer(config=f"authorization {{ users = [ {{ nkey: {nkey_user.public} }} ] }}\n") as server:
        _cycle(sweep, server, server.url, nkeys_seed=str(seed_file))
        _cycle(sweep, server, server.url, nkeys_seed_str=nkey_user.seed)
        other = new_key()
        sweep.add("wrong nkey", _raises(lambda: natsync.connect(server.url, nkeys_seed_str=other.seed)))
    with NATSServer(config=op.config) as server:
        _cycle(sweep, server, server.url, user_credentials=op.creds_file)
        _cycle(sweep, server, server.url, user_credentials=(op.jwt_file, op.seed_file))
        _cycle(sweep, server, server.url, user_jwt_cb=lambda: op.user_jwt, signature_cb=op.user.sign)
        stranger = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
        bad = tmp_path / "bad.creds"
        bad.write_text(creds_text(user_jwt(stranger, other), other.seed))
        sweep.add("unknown account", _raises(lambda: natsync.connect(server.url, user_credentials=str(bad))))
        sweep.add("no nonce", _raises(lambda: natsync.connect(plain_server.url, nkeys_seed_str=other.seed)))
        broken = tmp_path / "broken.nk"
        broken.write_text(nkey_user.seed[:-3] + "AAA")
        sweep.add("broken seed", _raises(lambda: natsync.connect(server.url, nkeys_seed=str(broken))))
        sweep.add(
            "broken seed str",
            _raises(lambda: natsync.connect(server.url, nkeys_seed_str=nkey_user.seed[:-1])),
        )
        sweep.add(
            "signer repr",
            make_signer(nkeys_seed_str=nkey_user.seed),
            make_signer(user_credentials=op.creds_file),
        )
    secrets = [*_all_secrets(op, nkey_user), other.seed, nkey_user.seed[:-3] + "AAA", nkey_user.seed[:-1]]
    sweep.check(secrets)
    _check_logs(logs, secrets)


def test_tls_and_mtls(logs: LogCapture, pki: Pki, op: OperatorSetup, nkey_user: Key) -> None:
    sweep = Sweep()
    conf = tls_block(pki, verify=True) + f'authorization {{ token: "{TOKEN}" }}\n'
    mtls = client_context(pki, cert=pki.client_file)
    with NATSServer(config=conf) as server:
        url = f"tls://127.0.0.1:{server.port}"
        _cycle(sweep, server, url, tls=mtls, token=TOKEN)
        _cycle(sweep, server, f"tls://{TOKEN}@localhost:{server.port}", tls=mtls)
        for where, kwargs in {
            "no client cert": {"tls": client_context(pki)},
            "untrusted": {"tls": client_context(pki, cafile=pki.other_ca_file)},
            "wrong name": {"tls": mtls, "tls_hostname": "evil.example"},
            "handshake first": {"tls": mtls, "tls_handshake_first": True},
        }.items():
            sweep.add(where, _raises(lambda kw=kwargs: natsync.connect(url, token=TOKEN, **kw)))  # type: ignore[misc]
    with NATSServer() as plain:
        sweep.add("no TLS offered", _raises(lambda: natsync.connect(f"tls://{TOKEN}@127.0.0.1:{plain.port}")))
    sweep.check(_all_secrets(op, nkey_user))
    _check_logs(logs, _all_secrets(op, nkey_user))


# ------------------------------------------------------------------------------ helpers


def _check_logs(logs: LogCapture, secrets: list[str]) -> None:
    assert any("connected to" in line for line in logs.lines), "the DEBUG log should have recorded the cycle"
    assert any("reconnected to" in line for line in logs.lines)
    for line in logs.lines:
        assert_no_secret(line, secrets, "in a log record")
