"""The ``natsync`` command against real nats-servers.

Every command runs at least once as a real process (``python -m natsync`` or the
console script): output, exit status (0 ok, 1 error with one line on stderr and no
traceback, 2 usage), signals.  The same commands also run in-process through
``natsync.cli.main`` for the finer cases (faster, and measured by coverage).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from authkit import wait_until

import natsync
from natsync import cli, micro
from natsync.testing import NATSServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0
TOKEN = "cli-s3cret-token"
CONN_ENV = ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS", "NATS_NKEY", "NATS_CA", "NATS_CERT",
            "NATS_KEY", "NATS_TOKEN")


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def token_server() -> Iterator[NATSServer]:
    with NATSServer(token=TOKEN) as srv:
        yield srv


@pytest.fixture
def nc(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url) as c:
        yield c


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in CONN_ENV + ("NATS_CONTEXT", "NATS_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    # no context of the machine's user (~/.config/nats) may change what a test connects to
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONN_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m natsync ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "natsync", *args], env=_env(env), input=stdin, capture_output=True,
        text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL if stdin is None else None,
    )


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "natsync", *args], env=_env(env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT, stdin=subprocess.DEVNULL,
    )


def wait_ready(proc: subprocess.Popen[str], word: str) -> str:
    """Read stderr lines until one holds *word* (bounded by the test timeout)."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert word in line, f"expected {word!r} on stderr, got {line!r}"
    return line


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("natsync: error: ")
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0]


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``natsync ARGS`` in-process: (status, stdout, stderr)."""
    try:
        status = cli.main(list(args))
    except SystemExit as e:
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


# --- as real processes -----------------------------------------------------------------------


def test_help_and_console_script() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for word in ("pub", "sub", "req", "reply", "bench", "rtt", "server", "micro", "stream", "kv", "obj",
                 "--server", "--token", "--json"):
        assert word in proc.stdout
    script = shutil.which("natsync", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the natsync console script is not installed (pip install -e .)")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("natsync ")


def test_pub_sub_with_headers_and_json_lines(server: NATSServer) -> None:
    sub = spawn("sub", "cli.ps", "--count", "2", "--json", "--headers", "--server", server.url)
    try:
        wait_ready(sub, "Listening on 'cli.ps'")
        pub = run("--server", server.url, "pub", "cli.ps", "n{{Count}}", "--count", "2", "-H", "Trace: abc")
        assert pub.returncode == 0, pub.stderr
        assert pub.stdout == "Published 2 messages to 'cli.ps'\n"
        out, err = sub.communicate(timeout=WAIT)
    finally:
        sub.kill()
        sub.wait()
    assert sub.returncode == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs == [
        {"subject": "cli.ps", "headers": {"Trace": ["abc"]}, "data": "n1"},
        {"subject": "cli.ps", "headers": {"Trace": ["abc"]}, "data": "n2"},
    ]


def test_sub_human_output_and_sigint_drains_and_exits_0(server: NATSServer, nc: natsync.Client) -> None:
    sub = spawn("--server", server.url, "sub", "cli.sig", "--queue", "qq")
    try:
        wait_ready(sub, "in queue group 'qq'")
        nc.publish("cli.sig", b"hello", reply="r.x")
        nc.flush()
        assert sub.stdout is not None
        assert sub.stdout.readline() == "[#1] Received on 'cli.sig' with reply 'r.x'\n"
        assert sub.stdout.readline() == "hello\n"
        sub.send_signal(signal.SIGINT)
        out, err = sub.communicate(timeout=WAIT)
    finally:
        sub.kill()
        sub.wait()
    assert sub.returncode == 0, err
    assert "Traceback" not in err


def test_req_and_reply_processes(server: NATSServer) -> None:
    rep = spawn("reply", "cli.rr", "pong", "--count", "1", "-s", server.url)
    try:
        wait_ready(rep, "Replying on 'cli.rr'")
        req = run("req", "cli.rr", "ping", "-s", server.url, "--json")
        assert req.returncode == 0, req.stderr
        doc = json.loads(req.stdout)
        assert doc["data"] == "pong" and doc["rtt_ms"] > 0
        out, err = rep.communicate(timeout=WAIT)
    finally:
        rep.kill()
        rep.wait()
    assert rep.returncode == 0, err
    assert out == "[#1] Request on 'cli.rr': ping\n"


def test_req_errors_are_one_line(server: NATSServer, nc: natsync.Client) -> None:
    proc = run("req", "cli.nobody", "x", "-s", server.url)
    assert_one_line_error(proc, "no responders on 'cli.nobody'")
    with micro.add_service(nc, name="clierr", version="1.0.0") as svc:
        svc.add_endpoint("fail", lambda r: r.respond_error(409, "conflict"), subject="cli.fail")
        proc = run("req", "cli.fail", "-s", server.url)
    assert_one_line_error(proc, "service error 409: conflict")


def test_connection_errors_are_one_line(token_server: NATSServer, listener: Any) -> None:
    url = f"nats://127.0.0.1:{token_server.port}"
    proc = run("pub", "x", "y", "--server", url, "--token", "wrong-token")
    assert_one_line_error(proc, "AuthorizationError")
    assert "wrong-token" not in proc.stderr
    proc = run("rtt", "--server", url, env={"NATS_TOKEN": "wrong-token"})
    assert_one_line_error(proc, "AuthorizationError")
    port = listener.getsockname()[1]
    listener.close()  # now nothing listens there
    proc = run("rtt", "--server", f"nats://127.0.0.1:{port}")
    assert_one_line_error(proc, "NoServersError")


def test_token_from_stdin_env_and_flags_after_the_command(token_server: NATSServer) -> None:
    url = f"nats://127.0.0.1:{token_server.port}"
    proc = run("rtt", "--count", "2", "--server", url, "--token", "-", "--json", stdin=TOKEN + "\n")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["rtts_us"]) == 2 and TOKEN not in proc.stdout + proc.stderr
    # bench opens two more connections: the token is read from stdin once
    proc = run("bench", "pubsub", "--msgs", "100", "--json", "-s", url, "--token", "-", stdin=TOKEN + "\n")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["received"] == 100
    proc = run("rtt", "--count", "1", env={"NATS_URL": url, "NATS_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    assert f"nats://127.0.0.1:{token_server.port}: average rtt" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("pub",),
        ("pub", "x", "--count", "0"),
        ("pub", "x", "--header", "novalue"),
        ("req", "x", "--timeout", "-1"),
        ("bench", "fly"),
        ("micro",),
        ("sub", "x", "--server"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
    status, out, err = call(capsys, *args)
    assert status == 2
    assert out == ""
    assert "usage: natsync" in err


def test_usage_error_as_a_process() -> None:
    proc = run("pub", "--count", "nope", "x")
    assert proc.returncode == 2
    assert "usage: natsync pub" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_processes(server: NATSServer) -> None:
    proc = run("bench", "pubsub", "--msgs", "20000", "-s", server.url, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["mode"] == "pubsub" and doc["received"] == 20000 and doc["complete"] and doc["rate"] > 0
    proc = run("bench", "pub", "--msgs", "5000", "--size", "128", "-s", server.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("natsync bench pub: 5,000 msgs of 128 B on 'natsync.bench.")
    assert "MB/s" in proc.stdout
    proc = run("bench", "req", "--msgs", "300", "-s", server.url)
    assert proc.returncode == 0, proc.stderr
    assert "msgs/s" in proc.stdout and "latency (µs): p50" in proc.stdout and "p99" in proc.stdout
    # Ctrl-C ends a run with what was measured so far, status 0
    bsub = spawn("bench", "sub", "--msgs", "10", "--subject", "cli.bench.none", "-s", server.url)
    try:
        wait_ready(bsub, "Waiting for 10 messages on 'cli.bench.none'")
        bsub.send_signal(signal.SIGINT)
        out, err = bsub.communicate(timeout=WAIT)
    finally:
        bsub.kill()
        bsub.wait()
    assert bsub.returncode == 0, err
    assert "(interrupted: partial figures)" in out and "Traceback" not in err


def test_micro_commands_as_processes(server: NATSServer, nc: natsync.Client) -> None:
    with micro.add_service(nc, name="clisvc", version="3.1.4", description="for the CLI") as svc:
        svc.add_group("g").add_endpoint("e", lambda r: r.respond(b"ok"))
        proc = run("micro", "ls", "-s", server.url, "--timeout", "1")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].split() == ["NAME", "VERSION", "ID", "DESCRIPTION", "ENDPOINTS"]
        assert any(line.split()[:3] == ["clisvc", "3.1.4", svc.id] for line in lines[1:])
        proc = run("micro", "stats", "clisvc", svc.id, "--json", "-s", server.url, "--timeout", "1")
        assert proc.returncode == 0, proc.stderr
        docs = json.loads(proc.stdout)
        assert [d["id"] for d in docs] == [svc.id]
        assert docs[0]["endpoints"][0]["subject"] == "g.e"
    proc = run("micro", "info", "clisvc", "-s", server.url, "--timeout", "0.2")
    assert_one_line_error(proc, "no services named 'clisvc'")


def test_jetstream_commands_fail_cleanly_without_jetstream(server: NATSServer) -> None:
    """Without JetStream (on this build or this server) a JetStream command fails in one line."""
    proc = run("stream", "ls", "-s", server.url)
    assert_one_line_error(proc)


@pytest.mark.parametrize(
    "args",
    [("stream", "ls"), ("kv", "get", "b", "k"), ("kv", "ls"), ("obj", "ls", "b"), ("kv", "watch", "b")],
)
def test_jetstream_commands_fail_in_one_line_in_process(
    capsys: pytest.CaptureFixture[str], server: NATSServer, args: tuple[str, ...]
) -> None:
    status, out, err = call(capsys, *args, "-s", server.url)
    assert status == 1 and out == "" and err.count("\n") == 1 and err.startswith("natsync: error: ")


# --- in-process (finer cases) ------------------------------------------------------------------


def test_pub_json_and_reply_subject(capsys: pytest.CaptureFixture[str], server: NATSServer,
                                    nc: natsync.Client) -> None:
    sub = nc.subscribe("cli.in.pub")
    nc.flush()
    status, out, err = call(capsys, "pub", "cli.in.pub", "data", "--reply", "back", "--json",
                            "-s", server.url)
    assert status == 0, err
    assert json.loads(out) == {"subject": "cli.in.pub", "count": 1, "bytes": 4}
    m = sub.next_msg(timeout=WAIT)
    assert (m.data, m.reply) == (b"data", "back")
    status, out, err = call(capsys, "pub", "bad subject", "x", "-s", server.url)
    assert status == 1 and out == "" and err.startswith("natsync: error: BadSubjectError")


def _publish_until(nc: natsync.Client, subject: str, stop: threading.Event, data: bytes = b"x",
                   headers: dict[str, str] | None = None) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(0.01):
            try:
                nc.publish(subject, data, headers=headers)
            except natsync.NatsError:
                return

    t = threading.Thread(target=loop)
    t.start()
    return t


def test_sub_in_process_human_headers_binary(capsys: pytest.CaptureFixture[str], server: NATSServer,
                                             nc: natsync.Client) -> None:
    stop = threading.Event()
    t = _publish_until(nc, "cli.in.sub", stop, b"text", {"K": "v"})
    try:
        status, out, err = call(capsys, "sub", "cli.in.sub", "--count", "1", "--headers", "-s", server.url)
    finally:
        stop.set()
        t.join()
    assert status == 0, err
    assert out == "[#1] Received on 'cli.in.sub'\nK: v\ntext\n\n"
    t = _publish_until(nc, "cli.in.sub", stop := threading.Event(), b"\xff\x00")
    try:
        status, out, err = call(capsys, "sub", "cli.in.sub", "--count", "1", "--json", "-s", server.url)
    finally:
        stop.set()
        t.join()
    assert json.loads(out) == {"subject": "cli.in.sub", "data_b64": "/wA="}


def test_req_in_process(capsys: pytest.CaptureFixture[str], server: NATSServer, nc: natsync.Client) -> None:
    def serve(m: natsync.Msg) -> None:
        m.respond(m.data + b"!", headers={"Got": m.headers["In"] if m.headers else "-"})

    nc.subscribe("cli.in.req", cb=serve)
    nc.subscribe("cli.in.silent")
    nc.flush()
    status, out, err = call(capsys, "req", "cli.in.req", "hi", "-H", "In:1", "--headers", "-s", server.url)
    assert status == 0, err
    assert out == "Got: 1\nhi!\n"
    status, out, err = call(capsys, "req", "cli.in.silent", "q", "--timeout", "0.1", "-s", server.url)
    assert (status, out) == (1, "")
    assert err == "natsync: error: no reply on 'cli.in.silent' within 0.1 s\n"


def test_reply_in_process(capsys: pytest.CaptureFixture[str], server: NATSServer, nc: natsync.Client) -> None:
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(cli.main(
        ["reply", "cli.in.rep", "answer", "--count", "2", "--json", "-s", server.url])))
    t.start()
    try:
        def answered() -> bool:
            try:
                return nc.request("cli.in.rep", b"q", timeout=WAIT).data == b"answer"
            except natsync.NoRespondersError:
                return False

        wait_until(answered, WAIT, "the reply command to answer")
        assert nc.request("cli.in.rep", b"q2", timeout=WAIT).data == b"answer"
    finally:
        t.join(WAIT)
    assert result == [0]
    out = capsys.readouterr().out
    assert [json.loads(line)["data"] for line in out.splitlines()] == ["q", "q2"]


def test_rtt_and_server_info_in_process(capsys: pytest.CaptureFixture[str], server: NATSServer) -> None:
    status, out, _ = call(capsys, "rtt", "--count", "1", "-s", server.url)
    assert status == 0 and out.startswith(f"nats://127.0.0.1:{server.port}: average rtt ")
    status, out, err = call(capsys, "server", "info", "-s", server.url)  # no system account here
    assert (status, out) == (1, "") and "system account" in err and err.count("\n") == 1


def test_bench_in_process_all_modes(capsys: pytest.CaptureFixture[str], server: NATSServer,
                                    nc: natsync.Client) -> None:
    status, out, err = call(capsys, "bench", "pub", "--msgs", "2000", "--size", "64", "-s", server.url,
                            "--progress-interval", "0.001")
    assert status == 0, err
    assert out.startswith("natsync bench pub: 2,000 msgs of 64 B on ") and "msgs/s" in out
    status, out, err = call(capsys, "bench", "pubsub", "--msgs", "3000", "--json", "-s", server.url)
    assert status == 0 and json.loads(out)["received"] == 3000
    status, out, err = call(capsys, "bench", "req", "--msgs", "50", "--json", "--no-progress",
                            "-s", server.url)
    doc = json.loads(out)
    assert status == 0 and doc["msgs"] == 50
    assert set(doc["latency_us"]) == {"p50", "p90", "p99", "p99.9", "max"}
    # sub waits for someone else's messages
    stop = threading.Event()
    t = _publish_until(nc, "cli.in.bsub", stop)
    try:
        status, out, err = call(capsys, "bench", "sub", "--msgs", "3", "--subject", "cli.in.bsub", "--json",
                                "-s", server.url)
    finally:
        stop.set()
        t.join()
    doc = json.loads(out)
    assert status == 0 and doc["complete"] and doc["received"] == 3
    # nothing arrives: gives up after --timeout without progress, exit 1
    status, out, err = call(capsys, "bench", "sub", "--msgs", "3", "--subject", "cli.in.none",
                            "--timeout", "0.2",
                            "-s", server.url)
    assert status == 1 and "only 0 of 3 messages arrived" in err


def test_bench_progress_on_long_runs(capsys: pytest.CaptureFixture[str], server: NATSServer) -> None:
    status, out, err = call(capsys, "bench", "req", "--msgs", "400", "--progress-interval", "0.001",
                            "-s", server.url)
    assert status == 0
    assert "requests: " in err and "/400 (" in err


def test_micro_in_process(capsys: pytest.CaptureFixture[str], server: NATSServer, nc: natsync.Client) -> None:
    svc = micro.add_service(nc, name="inproc", version="1.0.0", description="desc", metadata={"m": "1"})
    with svc:
        svc.add_endpoint("a", lambda r: r.respond_error(500, "nope"), queue_group="")
        nc.request("a", b"", timeout=WAIT)
        wait_until(lambda: svc.stats()["endpoints"][0]["num_errors"] == 1, WAIT)
        status, out, _ = call(capsys, "micro", "info", "inproc", "-s", server.url, "--timeout", "0.5")
        assert status == 0
        assert f"Service inproc 1.0.0 (id {svc.id})" in out and "description: desc" in out
        assert "metadata m: 1" in out and "  a" in out
        status, out, _ = call(capsys, "micro", "stats", "inproc", "-s", server.url, "--timeout", "0.5")
        assert status == 0 and "500:nope" in out and "started: " in out
    status, out, err = call(capsys, "micro", "ls", "bad name", "-s", server.url)
    assert status == 1 and "not valid" in err


def test_connection_options_reach_connect(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from natsync.cli import _options

    args = cli.build_parser().parse_args(["rtt", "--tls-cert", "c.pem"])
    with pytest.raises(cli.CommandError, match="go together"):
        _options.connect(args)
    args = cli.build_parser().parse_args(["rtt", "--tlsca", str(tmp_path / "missing.pem")])
    with pytest.raises(cli.CommandError, match="cannot load TLS files"):
        _options.connect(args)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    status, out, err = call(capsys, "rtt", "--token", "-", "-s", "nats://127.0.0.1:1")
    assert status == 1 and "no token on standard input" in err


def test_jsonable_covers_library_types() -> None:
    import dataclasses
    import datetime
    import enum

    from natsync.cli import _util

    class Color(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class D:
        c: Color
        when: datetime.datetime
        age: datetime.timedelta
        raw: bytes
        tags: frozenset[str]

    doc = json.loads(_util.dumps(D(Color.RED, datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
                                   datetime.timedelta(seconds=1.5), b"\xff", frozenset({"a"}))))
    assert doc == {"c": "red", "when": "2024-01-02T00:00:00+00:00", "age": 1.5, "raw": "/w==", "tags": ["a"]}
    doc = json.loads(_util.dumps({"h": natsync.Headers({"A": ["1", "2"]}), "o": object()}))
    assert doc["h"] == {"A": ["1", "2"]}


# --- every way of authenticating ------------------------------------------------------------


def test_user_password_from_env_and_flags(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with NATSServer(user="cli-user", password="cli-pa55") as srv:
        url = f"nats://127.0.0.1:{srv.port}"
        status, out, err = call(capsys, "rtt", "--count", "1", "-s", url, "--user", "cli-user",
                                "--password", "cli-pa55")
        assert status == 0, err
        monkeypatch.setenv("NATS_URL", url)
        monkeypatch.setenv("NATS_USER", "cli-user")
        monkeypatch.setenv("NATS_PASSWORD", "wrong")
        status, out, err = call(capsys, "rtt")
        assert status == 1 and "AuthorizationError" in err and "wrong" not in err
        status, out, err = call(capsys, "rtt", "--password", "cli-pa55")  # the flag wins
        assert status == 0, err


def test_mutual_tls_flags_and_env(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trustme")
    from authkit import make_pki, tls_block

    pki = make_pki(tmp_path)
    with NATSServer(config=tls_block(pki, verify=True)) as srv:
        url = f"tls://127.0.0.1:{srv.port}"
        status, out, err = call(capsys, "rtt", "--count", "1", "-s", url, "--tls-ca", pki.ca_file,
                                "--tls-cert", pki.client_file, "--tls-key", pki.client_file)
        assert status == 0, err
        monkeypatch.setenv("NATS_CA", pki.ca_file)
        monkeypatch.setenv("NATS_CERT", pki.client_file)
        monkeypatch.setenv("NATS_KEY", pki.client_file)
        proc = run("rtt", "--count", "1", "--json", "-s", url,
                   env={k: os.environ[k] for k in ("NATS_CA", "NATS_CERT", "NATS_KEY")})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["server"] == url
        monkeypatch.delenv("NATS_CERT")
        monkeypatch.delenv("NATS_KEY")
        status, out, err = call(capsys, "rtt", "-s", url)  # no client certificate
        assert status == 1 and out == "" and err.count("\n") == 1


def test_creds_and_nkey(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("nkeys")
    from authkit import make_operator_setup, new_key

    setup = make_operator_setup(tmp_path)
    with NATSServer(config=setup.config) as srv:
        status, out, err = call(capsys, "rtt", "--count", "1", "-s", srv.url, "--creds", setup.creds_file)
        assert status == 0, err
        proc = run("rtt", "-s", srv.url, env={"NATS_CREDS": setup.creds_file})
        assert proc.returncode == 0, proc.stderr
    key = new_key()
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(key.seed + "\n")
    config = "authorization {\n  users = [ { nkey: " + key.public + " } ]\n}\n"
    with NATSServer(config=config) as srv:
        status, out, err = call(capsys, "rtt", "--count", "1", "-s", srv.url, "--nkey", str(seed_file))
        assert status == 0, err
        assert key.seed not in out + err


# --- more in-process paths --------------------------------------------------------------------


def test_req_json_service_error_and_no_responders(capsys: pytest.CaptureFixture[str], server: NATSServer,
                                                  nc: natsync.Client) -> None:
    with micro.add_service(nc, name="jsonerr", version="1.0.0") as svc:
        svc.add_endpoint("e", lambda r: r.respond_error(422, "bad input", b"details"), subject="cli.in.err")
        status, out, err = call(capsys, "req", "cli.in.err", "x", "--json", "-s", server.url)
    assert (status, out) == (1, "")
    assert err == "natsync: error: service error 422: bad input\n"
    status, out, err = call(capsys, "req", "cli.in.nobody", "x", "-s", server.url)
    assert (status, out, err) == (1, "", "natsync: error: no responders on 'cli.in.nobody'\n")


def test_reply_human_and_json_rtt_and_info(capsys: pytest.CaptureFixture[str], server: NATSServer,
                                           nc: natsync.Client) -> None:
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(cli.main(
        ["reply", "cli.in.rep2", "ok", "--count", "1", "-s", server.url])))
    t.start()
    try:
        def answered() -> bool:
            try:
                return nc.request("cli.in.rep2", "héllo".encode(), timeout=WAIT).data == b"ok"
            except natsync.NoRespondersError:
                return False

        wait_until(answered, WAIT, "the reply command to answer")
    finally:
        t.join(WAIT)
    assert result == [0]
    assert capsys.readouterr().out == "[#1] Request on 'cli.in.rep2': héllo\n"
    status, out, _ = call(capsys, "rtt", "--count", "2", "--json", "-s", server.url)
    doc = json.loads(out)
    assert status == 0 and len(doc["rtts_us"]) == 2 and doc["server"] == f"nats://127.0.0.1:{server.port}"


def test_micro_json_ls_and_none(capsys: pytest.CaptureFixture[str], server: NATSServer,
                                nc: natsync.Client) -> None:
    with micro.add_service(nc, name="lsme", version="1.0.0") as a, micro.add_service(
        nc, name="lsme", version="1.0.1"
    ) as b:
        status, out, _ = call(capsys, "micro", "ls", "lsme", "--json", "-s", server.url, "--timeout", "0.5")
        assert status == 0 and sorted(d["id"] for d in json.loads(out)) == sorted([a.id, b.id])
        status, out, _ = call(capsys, "micro", "info", "lsme", "-s", server.url, "--timeout", "0.5")
        assert status == 0 and out.count("Service lsme") == 2
        status, out, _ = call(capsys, "micro", "ls", "-s", server.url, "--timeout", "0.5")
        assert status == 0 and out.count("lsme") == 2
    status, out, err = call(capsys, "micro", "ls", "-s", server.url, "--timeout", "0.1")
    assert (status, out, err) == (1, "", "natsync: error: no services answered within 0.1 s\n")


@pytest.mark.parametrize(
    "args, word",
    [
        (("req", "x", "--timeout", "abc"), "not a duration"),
        (("pub", "x", "--count", "1.5"), "not an integer"),
        (("bench", "pub", "--size", "-1"), "must be an integer >= 0"),
        (("bench", "pub", "--size", "q"), "not an integer"),
    ],
)
def test_bad_values_name_the_option(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], word: str
) -> None:
    status, out, err = call(capsys, *args)
    assert status == 2 and word in err


def test_ctrl_c_during_a_request_exits_0(capsys: pytest.CaptureFixture[str], server: NATSServer,
                                         nc: natsync.Client) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")

    def interrupt(msg: natsync.Msg) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would; the request is never answered

    nc.subscribe("cli.in.ctrlc", cb=interrupt)
    nc.flush()
    status, out, err = call(capsys, "req", "cli.in.ctrlc", "x", "--timeout", "30", "-s", server.url)
    assert (status, out, err) == (0, "", "")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_broken_pipe_exits_quietly(server: NATSServer, monkeypatch: pytest.MonkeyPatch) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["pub", "cli.in.pipe", "x", "-s", server.url]) == 0


def test_the_guide_shows_the_current_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "88")
    status, out, _ = call(capsys, "--help")
    assert status == 0
    readme = (ROOT / "docs" / "cli.rst").read_text()
    block = readme.split("``natsync --help``:\n\n.. code-block:: text\n\n", 1)[1]
    shown = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        shown.append(line[4:])
    if sys.version_info >= (3, 13):  # argparse formats options differently from 3.13 on
        for line in out.splitlines():
            if line.startswith("    ") and not line.startswith("     "):  # the command list
                assert line.strip() in block
        return
    stale = "docs/cli.rst's natsync --help is stale: paste the new output"
    assert "\n".join(shown).strip() == out.strip(), stale


def test_permission_violations_fail_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    config = (
        "authorization {\n  users = [ { user: limited, password: pw, permissions: {\n"
        '    publish: { deny: ["secret.>"] }, subscribe: { deny: ["secret.>"] } } } ]\n}\n'
    )
    with NATSServer(config=config) as srv:
        url = f"nats://limited:pw@127.0.0.1:{srv.port}"
        status, out, err = call(capsys, "pub", "secret.x", "data", "-s", url)
        assert (status, out) == (1, "")
        assert err.startswith("natsync: error: PermissionsError: ") and err.count("\n") == 1
        assert "secret.x" in err and "pw" not in err.replace("Permissions", "")
        status, out, err = call(capsys, "sub", "secret.y", "-s", url)
        assert (status, out) == (1, "")
        # (the "Listening on" status line may come first: the server's refusal is asynchronous)
        assert err.splitlines()[-1].startswith("natsync: error: PermissionsError: ")
        assert "Traceback" not in err
        status, out, err = call(capsys, "pub", "open.x", "data", "-s", url)
        assert (status, out) == (0, "Published 1 message to 'open.x'\n")
