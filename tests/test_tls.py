"""TLS: the transport (SSLObject over memory BIOs, one reader and one writer thread at
once) and the client against real nats-server processes with ``tls {}`` blocks and
trustme certificates: trusted and untrusted CAs, host names, mTLS, TLS required by either
side, handshake_first, a token over TLS, reconnects, and a bare-IP server discovered from
a cluster keeping the TLS name of the URL it was learned from.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from authkit import (
    Pki,
    assert_no_secret,
    client_context,
    connz,
    exception_texts,
    make_pki,
    run_example,
    tls_block,
    wait_until,
)
from fakeserver import FakeConn, FakeServer

import natsync
from natsync import AuthorizationError, NoServersError, SecureConnectionError
from natsync._transport import Transport
from natsync.testing import NATSCluster, NATSServer

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tls-t0ken-Zq8"
HANG = 20.0  # generous "does not hang" bound, seconds


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[NATSServer]:
    with NATSServer(config=tls_block(pki), http_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def plain_server() -> Iterator[NATSServer]:
    with NATSServer() as server:
        yield server


def _roundtrip(nc: natsync.Client, subject: str = "tls.test") -> None:
    sub = nc.subscribe(subject)
    nc.publish(subject, b"hello")
    assert sub.next_msg(timeout=5).data == b"hello"
    sub.unsubscribe()


def _tls_versions(server: NATSServer) -> list[str]:
    return [c.get("tls_version", "") for c in connz(server)]


# --------------------------------------------------------------------------- transport


def _server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert_file, pki.key_file)
    return ctx


class _TLSPeer:
    """A loopback TLS server end for transport tests (its own thread does the handshake)."""

    def __init__(self, pki: Pki, handshake: bool = True) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        ctx = _server_context(pki)

        def accept() -> None:
            try:
                raw, _ = self.listener.accept()
                raw.settimeout(HANG)
                self.conn = ctx.wrap_socket(raw, server_side=True) if handshake else raw
            except BaseException as e:  # noqa: BLE001
                self.error = e
            finally:
                self.ready.set()

        self.thread = threading.Thread(target=accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.thread.join(HANG)
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.conn.close()
        self.listener.close()


@pytest.fixture
def tls_pair(pki: Pki) -> Iterator[tuple[Transport, _TLSPeer]]:
    peer = _TLSPeer(pki)
    t = Transport.connect("127.0.0.1", peer.port, 5)
    t.start_tls(client_context(pki), "localhost", 5)
    t.settimeout(None)
    assert peer.ready.wait(HANG) and peer.error is None
    yield t, peer
    t.close()
    peer.close()


def test_transport_plain_path_is_the_socket_itself() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        t = Transport.connect("127.0.0.1", listener.getsockname()[1], 5)
        peer, _ = listener.accept()
        try:
            assert not t.tls
            assert t.recv_into == t._sock.recv_into and t.sendall == t._sock.sendall
            t.sendall(b"abc")
            assert peer.recv(3) == b"abc"
        finally:
            peer.close()
            t.close()
    finally:
        listener.close()


def test_transport_concurrent_read_and_write(tls_pair: tuple[Transport, _TLSPeer]) -> None:
    """A reader and a writer thread on one TLS transport, both busy at once, against an
    echo peer: every byte comes back intact and in order."""
    t, peer = tls_pair
    assert peer.conn is not None
    conn = peer.conn
    total = 24 * 1024 * 1024
    pattern = bytes(range(251)) * 500  # not a multiple of any record size

    def echo() -> None:
        left = total
        while left:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
            left -= len(data)

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            sent = 0
            while sent < total:
                chunk = pattern[: min(len(pattern), total - sent)]
                t.sendall(chunk)
                sent += len(chunk)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    buf = bytearray(256 * 1024)
    got = 0
    while got < total:
        n = t.recv_into(buf)
        assert n > 0
        expect = (pattern * (n // len(pattern) + 2))[got % len(pattern) : got % len(pattern) + n]
        assert buf[:n] == expect
        got += n
    writer.join(HANG)
    echoer.join(HANG)
    assert not errors and not writer.is_alive() and not echoer.is_alive()


def test_transport_shutdown_wakes_reader_and_writer(tls_pair: tuple[Transport, _TLSPeer]) -> None:
    """The peer neither reads nor writes: a blocked reader and a blocked writer both wake
    when another thread calls shutdown()."""
    t, _peer = tls_pair
    outcome: dict[str, object] = {}

    def read() -> None:
        try:
            outcome["read"] = t.recv_into(bytearray(1024))
        except OSError as e:
            outcome["read"] = e

    def write() -> None:
        try:
            while True:  # until the socket buffers are full and sendall blocks
                t.sendall(b"x" * (1024 * 1024))
        except OSError as e:
            outcome["write"] = e

    threads = [threading.Thread(target=read, daemon=True), threading.Thread(target=write, daemon=True)]
    for th in threads:
        th.start()
    # Let the writer fill the kernel buffers and block (a few MiB). Not needed for the
    # assertions, which hold whether or not each thread was already blocked.
    threads[1].join(0.5)
    assert threads[1].is_alive() and threads[0].is_alive()
    t.shutdown()
    for th in threads:
        th.join(HANG)
        assert not th.is_alive()
    assert outcome["read"] == 0 or isinstance(outcome["read"], OSError)
    assert isinstance(outcome["write"], OSError)


@pytest.mark.parametrize("clean", [True, False], ids=["close_notify", "tcp-close"])
def test_transport_eof_reads_zero(tls_pair: tuple[Transport, _TLSPeer], clean: bool) -> None:
    t, peer = tls_pair
    assert peer.conn is not None
    assert isinstance(peer.conn, ssl.SSLSocket)
    peer.conn.sendall(b"last words")
    if clean:
        peer.conn.setblocking(False)  # send close_notify, do not wait for the answer
        try:
            peer.conn.unwrap()
        except (ssl.SSLWantReadError, OSError):
            pass
        peer.conn.close()
    else:
        peer.conn.shutdown(socket.SHUT_RDWR)
    peer.conn = None
    buf = bytearray(1024)
    data = b""
    while True:
        n = t.recv_into(buf)
        if n == 0:
            break
        data += bytes(buf[:n])
    assert data == b"last words"
    assert t.recv_into(buf) == 0


def test_transport_handshake_timeout(pki: Pki) -> None:
    peer = _TLSPeer(pki, handshake=False)  # accepts, never answers the ClientHello
    t = Transport.connect("127.0.0.1", peer.port, 5)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            t.start_tls(client_context(pki), "localhost", 0.3)
        assert time.monotonic() - start < HANG
    finally:
        t.close()
        peer.close()


# ------------------------------------------------------------------------- client, OK


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_url_with_trusted_ca(pki: Pki, tls_server: NATSServer, host: str) -> None:
    with natsync.connect(f"tls://{host}:{tls_server.port}", tls=client_context(pki)) as nc:
        assert nc.connected_url == f"tls://{host}:{tls_server.port}"
        assert nc.server_info["tls_required"] is True
        _roundtrip(nc)
        msg = None
        sub = nc.subscribe("svc", cb=lambda m: m.respond(b"pong"))
        msg = nc.request("svc", b"ping", timeout=5)
        assert msg.data == b"pong"
        sub.unsubscribe()
        assert _tls_versions(tls_server) == ["1.3"]


def test_tls_option_upgrades_a_nats_url(pki: Pki, tls_server: NATSServer) -> None:
    with natsync.connect(tls_server.url, tls=client_context(pki)) as nc:
        _roundtrip(nc)
        assert _tls_versions(tls_server) == ["1.3"]


def test_server_requiring_tls_upgrades_with_a_verifying_default_context(
    pki: Pki, tls_server: NATSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No TLS option, nats:// URL: the INFO says tls_required, the client upgrades with
    ssl.create_default_context() -- which verifies, here against the system CAs that
    SSL_CERT_FILE points at."""
    with pytest.raises(SecureConnectionError) as info:
        natsync.connect(tls_server.url)
    text = str(info.value)
    assert "certificate verify failed" in text and "tls=ssl.create_default_context(cafile=" in text
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_file)
    with natsync.connect(f"nats://localhost:{tls_server.port}") as nc:
        _roundtrip(nc)
        assert _tls_versions(tls_server) == ["1.3"]


def test_large_messages_both_ways_over_tls(pki: Pki, tls_server: NATSServer) -> None:
    """Publishers on two threads and the reader all busy on one TLS connection."""
    payload = os.urandom(200_000)
    n = 150
    with natsync.connect(tls_server.url, tls=client_context(pki)) as nc:
        sub = nc.subscribe("big")
        nc.flush()

        def publish() -> None:
            for _ in range(n):
                nc.publish("big", payload)

        pubs = [threading.Thread(target=publish) for _ in range(2)]
        for p in pubs:
            p.start()
        for _ in range(2 * n):
            assert sub.next_msg(timeout=HANG).data == payload
        for p in pubs:
            p.join(HANG)


def test_tls_hostname_overrides_the_name_checked(pki: Pki) -> None:
    conf = tls_block(pki, cert_file=pki.named_cert_file, key_file=pki.named_key_file)
    with NATSServer(config=conf) as server:
        url = f"tls://127.0.0.1:{server.port}"
        with pytest.raises(SecureConnectionError) as info:
            natsync.connect(url, tls=client_context(pki))
        assert "mismatch" in str(info.value) and "tls_hostname" in str(info.value)
        with natsync.connect(url, tls=client_context(pki), tls_hostname="nats.internal") as nc:
            _roundtrip(nc)


def test_reconnect_keeps_tls(pki: Pki) -> None:
    reconnected = threading.Event()
    with NATSServer(config=tls_block(pki), http_port=0) as server:
        with natsync.connect(
            f"tls://localhost:{server.port}",
            tls=client_context(pki),
            reconnect_time_wait=0.05,
            reconnect_jitter_tls=0.05,
            reconnected_cb=reconnected.set,
        ) as nc:
            sub = nc.subscribe("after")
            server.restart()
            assert reconnected.wait(HANG)
            nc.publish("after", b"again")
            assert sub.next_msg(timeout=5).data == b"again"
            assert _tls_versions(server) == ["1.3"]


def test_discovered_ip_keeps_the_tls_name_it_was_learned_under(pki: Pki) -> None:
    """Certificates for "localhost" only. The client connects to tls://localhost:P0 and
    learns 127.0.0.1:P1 from the cluster; when P0 dies it reconnects to 127.0.0.1:P1 and
    verifies the certificate against "localhost"."""
    conf = tls_block(pki, cert_file=pki.localhost_cert_file, key_file=pki.localhost_key_file)
    reconnected = threading.Event()
    with NATSCluster(2, config_extra=conf) as cluster:
        s0, s1 = cluster.servers
        with pytest.raises(SecureConnectionError, match="mismatch"):  # the certificate has no IP
            natsync.connect(f"tls://127.0.0.1:{s1.port}", tls=client_context(pki))
        with natsync.connect(
            f"tls://localhost:{s0.port}",
            tls=client_context(pki),
            reconnect_time_wait=0.05,
            reconnect_jitter_tls=0.0,
            reconnected_cb=reconnected.set,
        ) as nc:
            wait_until(lambda: f"tls://127.0.0.1:{s1.port}" in nc.discovered_servers, what="discovery")
            s0.stop()
            assert reconnected.wait(HANG)
            assert nc.connected_url == f"tls://127.0.0.1:{s1.port}"
            _roundtrip(nc)


def test_token_over_tls(pki: Pki) -> None:
    conf = tls_block(pki) + f'authorization {{ token: "{TOKEN}" }}\n'
    with NATSServer(config=conf) as server:
        with natsync.connect(f"tls://127.0.0.1:{server.port}", tls=client_context(pki), token=TOKEN) as nc:
            _roundtrip(nc)
            assert TOKEN not in repr(nc) and TOKEN not in str(nc.servers)
        with natsync.connect(f"tls://{TOKEN}@127.0.0.1:{server.port}", tls=client_context(pki)) as nc:
            assert nc.connected_url == f"tls://***@127.0.0.1:{server.port}"
        with pytest.raises(AuthorizationError) as info:
            natsync.connect(f"tls://127.0.0.1:{server.port}", tls=client_context(pki), token="wrong-" + TOKEN)
        assert_no_secret(exception_texts(info.value), [TOKEN])


def test_example_tls_connect(pki: Pki, tls_server: NATSServer) -> None:
    out = _run_example(
        "tls_connect.py", {"NATS_URL_HOSTPORT": f"localhost:{tls_server.port}", "NATS_CA_FILE": pki.ca_file}
    )
    assert f"connected to tls://localhost:{tls_server.port}" in out
    assert "received: b'hello over TLS'" in out
    # argv form, and the example fails (non-zero) against an untrusted CA
    proc = run_example("tls_connect.py", {}, [f"localhost:{tls_server.port}", pki.other_ca_file])
    assert proc.returncode != 0 and "SecureConnectionError" in proc.stderr


def test_example_mtls_connect(pki: Pki) -> None:
    with NATSServer(config=tls_block(pki, verify=True)) as server:
        env = {
            "NATS_URL_HOSTPORT": f"127.0.0.1:{server.port}",
            "NATS_CA_FILE": pki.ca_file,
            "NATS_CERT_FILE": pki.client_file,
        }
        out = _run_example("mtls_connect.py", env)
        assert "received: b'hello over mutual TLS'" in out


# ---------------------------------------------------------------------- client, refused


def test_untrusted_certificate_is_refused(pki: Pki, tls_server: NATSServer) -> None:
    for url in (f"tls://127.0.0.1:{tls_server.port}", tls_server.url):
        with pytest.raises(SecureConnectionError) as info:
            natsync.connect(url, tls=client_context(pki, cafile=pki.other_ca_file), token=TOKEN)
        text = str(info.value)
        assert "certificate verify failed" in text and "not trusted" in text
        assert_no_secret(exception_texts(info.value), [TOKEN])


def test_wrong_hostname_is_refused(pki: Pki, tls_server: NATSServer) -> None:
    with pytest.raises(SecureConnectionError, match="mismatch"):
        natsync.connect(
            f"tls://127.0.0.1:{tls_server.port}", tls=client_context(pki), tls_hostname="evil.example"
        )


def test_client_asking_for_tls_never_falls_back_to_plaintext(pki: Pki, plain_server: NATSServer) -> None:
    for kwargs in (
        {"servers": f"tls://127.0.0.1:{plain_server.port}"},
        {"servers": plain_server.url, "tls": client_context(pki)},
    ):
        with pytest.raises(SecureConnectionError) as info:
            natsync.connect(**kwargs, token=TOKEN)  # type: ignore[arg-type]
        assert "does not offer TLS" in str(info.value)
        assert_no_secret(exception_texts(info.value), [TOKEN])


def test_retry_on_failed_connect_never_sends_plaintext(pki: Pki) -> None:
    """Reconnect attempts to a server that stopped offering TLS fail; nothing is sent."""
    with FakeServer(default=lambda c: c.info()) as fake:
        errors: list[natsync.NatsError] = []
        nc = natsync.connect(
            f"tls://127.0.0.1:{fake.port}",
            tls=client_context(pki),
            token=TOKEN,
            retry_on_failed_connect=True,
            reconnect_time_wait=0.01,
            error_cb=errors.append,
        )
        try:
            assert fake.wait_connections(3)
        finally:
            nc.close()
        assert fake.connects == []  # no CONNECT ever went out in plaintext


def test_mtls_required(pki: Pki) -> None:
    with NATSServer(config=tls_block(pki, verify=True)) as server:
        url = f"tls://127.0.0.1:{server.port}"
        with natsync.connect(url, tls=client_context(pki, cert=pki.client_file)) as nc:
            _roundtrip(nc)
        with pytest.raises(SecureConnectionError) as info:
            natsync.connect(url, tls=client_context(pki))
        assert "client certificate" in str(info.value) and "load_cert_chain" in str(info.value)
        with pytest.raises(SecureConnectionError):  # a client certificate from an unknown CA
            natsync.connect(url, tls=client_context(pki, cert=pki.other_client_file))
        ctx12 = client_context(pki)
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2  # the server refuses during the handshake
        with pytest.raises(SecureConnectionError, match="client certificate"):
            natsync.connect(url, tls=ctx12)


def test_handshake_first(pki: Pki) -> None:
    with NATSServer(config=tls_block(pki, handshake_first=True)) as server:
        url = f"tls://127.0.0.1:{server.port}"
        with natsync.connect(url, tls=client_context(pki), tls_handshake_first=True) as nc:
            _roundtrip(nc)
        # a client that waits for INFO first gets a clear error naming the option
        with pytest.raises(NoServersError, match="tls_handshake_first=True"):
            natsync.connect(url, tls=client_context(pki), connect_timeout=1.0)
    with NATSServer(config=tls_block(pki)) as server:
        with pytest.raises(SecureConnectionError, match="plaintext.*handshake_first"):
            natsync.connect(
                f"tls://127.0.0.1:{server.port}", tls=client_context(pki), tls_handshake_first=True
            )


def test_secure_connection_required_error_names_the_fix() -> None:
    def script(c: FakeConn) -> None:
        c.info()
        c.read_connect()
        c.send(b"-ERR 'Secure Connection - TLS Required'\r\n")

    with FakeServer([script]) as fake:
        with pytest.raises(SecureConnectionError, match="tls://.*tls=ssl.SSLContext"):
            natsync.connect(fake.url, allow_reconnect=False)


def test_tls_required_in_info_is_honoured_by_a_plaintext_looking_url(pki: Pki) -> None:
    """A server whose INFO says tls_required gets a TLS handshake, not a CONNECT."""

    def script(c: FakeConn) -> None:
        c.info(tls_required=True)
        ctx = _server_context(pki)
        c.start_tls(ctx)
        c.read_connect()
        c.send(b"PONG\r\n")
        c.serve()

    with FakeServer([script]) as fake:
        with natsync.connect(fake.url, tls=client_context(pki), token=TOKEN) as nc:
            nc.flush()
        assert fake.connects[0]["tls_required"] is True
        assert fake.connects[0]["auth_token"] == TOKEN
        assert not fake.errors


# ------------------------------------------------------------------------------ helpers


def _run_example(name: str, env_extra: dict[str, str]) -> str:
    proc = run_example(name, env_extra)
    assert proc.returncode == 0, (
        f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc.stdout


@pytest.mark.parametrize("extra", [b"PING\r\n", b'INFO {"connect_urls":["10.6.6.6:4222"]}\r\n', b"-ERR"])
def test_plaintext_after_info_is_not_taken_as_tls(pki: Pki, extra: bytes) -> None:
    """STARTTLS-style injection: bytes after the plaintext INFO and before the TLS
    handshake would otherwise be processed as if they came over TLS."""
    import json

    def script(c: FakeConn) -> None:
        c.send(b"INFO " + json.dumps({"server_id": "X", "tls_required": True}).encode() + b"\r\n" + extra)
        c.serve()

    with FakeServer([script]) as fake:
        with pytest.raises(SecureConnectionError, match="sent data after INFO"):
            natsync.connect(fake.url, tls=client_context(pki), token=TOKEN)
        assert fake.connects == []
