"""Clusters: discovery from INFO connect_urls, credential inheritance, failover, rolling
restarts, lame duck mode; real 3-node nats-server clusters on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from recorder import Recorder, wait_until

import natsync
from natsync.testing import NATSCluster, NATSServer

WAIT = 10.0
TOKEN = "cluster-s3cret"
FAST: dict[str, Any] = {
    "reconnect_time_wait": 0.05,
    "reconnect_jitter": 0.0,
    "connect_timeout": 1.0,
    "max_reconnect_attempts": -1,
}


def hostport(url: str) -> str:
    return url.split("://", 1)[1].rsplit("@", 1)[-1]


@pytest.fixture
def cluster() -> Iterator[NATSCluster]:
    with NATSCluster(3, token=TOKEN) as c:
        yield c


def test_discovery_and_failover_with_url_token_of_one_node(cluster: NATSCluster) -> None:
    a, b, c = cluster.servers
    rec = Recorder()
    nc = natsync.connect(f"nats://{TOKEN}@127.0.0.1:{a.port}", **FAST, **rec.options())
    other = natsync.connect(f"nats://{TOKEN}@127.0.0.1:{c.port}", **FAST)
    try:
        assert hostport(nc.connected_url or "") == f"127.0.0.1:{a.port}"
        # B and C were learned from INFO, one entry per host:port, redacted
        assert sorted(nc.discovered_servers) == sorted([b.url, c.url])
        assert sorted(hostport(u) for u in nc.servers) == sorted(hostport(u) for u in cluster.urls)
        assert f"nats://***@127.0.0.1:{a.port}" in nc.servers
        assert not any(TOKEN in u for u in nc.servers + nc.discovered_servers + [repr(nc)])

        sub = nc.subscribe("fo.>")
        nc.flush(timeout=WAIT)
        assert wait_until(lambda: _probe(other, sub)), "the subscription never became visible on C"
        other.publish("fo.1", b"before")
        assert _next_real(sub).data == b"before"

        a.kill()
        assert rec.wait_count("reconnected"), f"no failover: {rec.errors}"
        now = hostport(nc.connected_url or "")
        assert now in (f"127.0.0.1:{b.port}", f"127.0.0.1:{c.port}")  # with the inherited token
        nc.flush(timeout=WAIT)
        # the resent interest reaches the other nodes over the routes a little later
        assert wait_until(lambda: _probe(other, sub)), "the resent subscription never became visible"
        other.publish("fo.2", b"after")
        assert _next_real(sub).data == b"after"
        nc.publish("fo.3", b"from the failed-over client")
        assert _next_real(sub).data == b"from the failed-over client"
        assert not rec.errors_of(natsync.AuthorizationError)
        assert rec.counts["disconnected"] == 1
    finally:
        nc.close()
        other.close()


def _probe(nc: natsync.Client, sub: natsync.Subscription) -> bool:
    nc.publish("fo.probe", b"")
    try:
        _next_real(sub, timeout=0.1, probes_too=True)
    except natsync.TimeoutError:
        return False
    return True


def _next_real(sub: natsync.Subscription, timeout: float = WAIT, probes_too: bool = False) -> natsync.Msg:
    """The next message, skipping probes (unless *probes_too*)."""
    while True:
        msg = sub.next_msg(timeout=timeout)
        if probes_too or msg.subject != "fo.probe":
            return msg


def test_discovered_server_cb_and_dropping_unadvertised_servers(cluster: NATSCluster) -> None:
    a, b, c = cluster.servers
    c.stop()
    rec = Recorder()
    nc = natsync.connect(f"nats://{TOKEN}@127.0.0.1:{a.port}", **FAST, **rec.options())
    try:
        # A may still advertise C for a moment after it stopped; then it sends a new INFO
        assert wait_until(lambda: nc.discovered_servers == [b.url]), nc.discovered_servers
        assert rec.counts["discovered"] == 0  # not for the initial connect
        c.start()
        assert rec.wait_count("discovered"), "discovered_server_cb not called for a new node"
        assert sorted(nc.discovered_servers) == sorted([b.url, c.url])
        c.stop()
        assert wait_until(lambda: nc.discovered_servers == [b.url]), nc.discovered_servers
        assert c.url not in nc.servers
        assert nc.is_connected
        assert rec.errors == []
    finally:
        nc.close()


def test_discovered_servers_use_option_credentials_over_inherited_url_ones(cluster: NATSCluster) -> None:
    """Rule 3: a discovered server uses the options when they hold credentials, and only
    otherwise the user info of the explicit URL. Here the options hold a user/password
    that the token cluster rejects, so B and C refuse the client after A dies; each
    refuses twice and leaves the pool, and the client closes."""
    a, b, c = cluster.servers
    rec = Recorder()
    opts = {**FAST, "max_reconnect_attempts": 3}
    nc = natsync.connect(
        f"nats://{TOKEN}@127.0.0.1:{a.port}", user="someone", password="pw", **opts, **rec.options()
    )
    try:
        assert sorted(nc.discovered_servers) == sorted([b.url, c.url])
        a.kill()
        assert rec.wait_count("closed"), "client did not give up"
        auth = rec.errors_of(natsync.AuthorizationError)
        where = sorted({hostport(str(e).split(" ", 1)[0]) for e in auth})
        assert where == sorted([f"127.0.0.1:{b.port}", f"127.0.0.1:{c.port}"]), auth
        assert len(auth) == 4, auth  # twice from each discovered node
        assert rec.errors_of(natsync.NoServersError)
        assert nc.is_closed
    finally:
        nc.close()


def test_rolling_restart_while_requesting(cluster: NATSCluster) -> None:
    urls = [f"nats://{TOKEN}@127.0.0.1:{s.port}" for s in cluster.servers]
    rec = Recorder()
    responder = natsync.connect(urls, **FAST)
    requester = natsync.connect(urls, **FAST, **rec.options())
    try:
        responder.subscribe("echo", cb=lambda m: m.respond(m.data))
        responder.flush(timeout=WAIT)
        assert wait_until(lambda: _request_ok(requester))

        stop = threading.Event()
        outcomes: list[str] = []
        slowest = [0.0]
        timeout = 0.5

        def requests() -> None:
            i = 0
            while not stop.is_set():
                data = b"%d" % i
                started = time.monotonic()
                try:
                    reply = requester.request("echo", data, timeout=timeout)
                    outcomes.append("ok" if reply.data == data else f"wrong reply {reply.data!r}")
                except (natsync.TimeoutError, natsync.NoRespondersError) as e:
                    outcomes.append(type(e).__name__)
                except Exception as e:  # noqa: BLE001 - anything else is a failure
                    outcomes.append(f"unexpected {type(e).__name__}: {e}")
                slowest[0] = max(slowest[0], time.monotonic() - started)
                i += 1

        t = threading.Thread(target=requests, name="test-requests")
        t.start()
        try:
            for node in cluster.servers:
                node.restart()
                cluster.wait_for_routes(WAIT)
                # as a rolling restart does: go on once the service answers again
                oks = outcomes.count("ok")
                assert wait_until(lambda n=oks: outcomes.count("ok") >= n + 10 and outcomes[-1] == "ok")
        finally:
            stop.set()
            t.join(WAIT)
        assert not t.is_alive(), "a request never returned"
        # NotConnectedError (a TimeoutError): asked while the client was reconnecting
        expected = ("ok", "TimeoutError", "NotConnectedError", "NoRespondersError")
        unexpected = [o for o in outcomes if o not in expected]
        assert not unexpected, unexpected[:5]
        assert slowest[0] < timeout + 1.0, f"a request took {slowest[0]:.2f} s with timeout {timeout} s"
        assert outcomes.count("ok") >= 30
        assert rec.counts["reconnected"] >= 1
        assert requester.is_connected
        assert requester.request("echo", b"final", timeout=WAIT).data == b"final"
        assert not rec.errors_of(natsync.AuthorizationError)
    finally:
        requester.close()
        responder.close()


def _request_ok(nc: natsync.Client) -> bool:
    try:
        return nc.request("echo", b"ping", timeout=0.5).data == b"ping"
    except natsync.NatsError:
        return False


def test_lame_duck_mode_cb() -> None:
    config = 'lame_duck_grace_period: "1s"\nlame_duck_duration: "30s"\n'
    rec = Recorder()
    with NATSServer(config=config) as srv:
        nc = natsync.connect(srv.url, **FAST, **rec.options())
        try:
            nc.flush(timeout=WAIT)
            srv.lame_duck()
            assert rec.wait_count("lame_duck"), "lame_duck_mode_cb not called"
            assert nc.server_info.get("ldm") is True
            assert rec.counts["lame_duck"] == 1
        finally:
            nc.close()
