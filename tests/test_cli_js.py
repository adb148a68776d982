"""The ``natsync`` JetStream commands (stream, kv, obj) against a real JetStream server.

They are written against /work/shared/API-jetstream.md; this module runs once
``natsync.js`` (branch ``js``, issues 8 and 9) is part of the build, and is skipped
before that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("natsync.js", reason="natsync.js (JetStream, branch js) is not merged yet")

import natsync  # noqa: E402
from natsync import cli  # noqa: E402
from natsync.testing import NATSServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0


@pytest.fixture(autouse=True)
def _no_user_context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NATS_CONTEXT", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        yield srv


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "natsync", *args],
        env=env,
        input=b"" if stdin is None else stdin,
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(args))
    except SystemExit as e:
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_stream_commands_as_processes(server: NATSServer) -> None:
    s = ("-s", server.url)
    p = run("stream", "add", "ORDERS", "--subjects", "orders.*,more.>", "--storage", "memory", *s)
    assert p.returncode == 0, p.stderr
    assert b"Created stream 'ORDERS'" in p.stdout
    with natsync.connect(server.url) as nc:
        nc.jetstream().publish("orders.1", b"x")
    p = run("stream", "ls", *s)
    assert p.returncode == 0, p.stderr
    row = [line.split() for line in p.stdout.decode().splitlines() if line.startswith("ORDERS")][0]
    assert row[:3] == ["ORDERS", "orders.*,more.>", "1"]
    p = run("stream", "info", "ORDERS", "--json", *s)
    doc = json.loads(p.stdout)
    assert doc["config"]["name"] == "ORDERS" and doc["state"]["messages"] == 1
    p = run("stream", "rm", "ORDERS", "-f", *s)
    assert p.returncode == 0 and b"Deleted stream 'ORDERS'" in p.stdout
    p = run("stream", "info", "ORDERS", *s)
    assert p.returncode == 1 and p.stdout == b"" and len(p.stderr.splitlines()) == 1
    assert b"Traceback" not in p.stderr


def test_kv_commands_as_processes(server: NATSServer) -> None:
    s = ("-s", server.url)
    assert run("kv", "add", "cfg", "--history", "5", *s).returncode == 0
    p = run("kv", "put", "cfg", "color", "blue", *s)
    assert p.returncode == 0 and p.stdout.startswith(b"color = revision ")
    p = run("kv", "put", "cfg", "blob", "-", *s, stdin=b"\xff\x01")
    assert p.returncode == 0, p.stderr
    p = run("kv", "get", "cfg", "color", *s)
    assert p.stdout == b"blue\n"
    p = run("kv", "get", "cfg", "blob", "--json", *s)
    assert json.loads(p.stdout)["value_b64"] == "/wE="
    p = run("kv", "ls", *s)
    assert b"cfg" in p.stdout.split()
    p = run("kv", "ls", "cfg", "--json", *s)
    assert json.loads(p.stdout) == ["blob", "color"]
    p = run("kv", "del", "cfg", "color", "-f", *s)
    assert p.returncode == 0
    p = run("kv", "get", "cfg", "color", *s)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and p.stdout == b""


def test_kv_watch(server: NATSServer, capsys: pytest.CaptureFixture[str]) -> None:
    with natsync.connect(server.url) as nc:
        kv = nc.jetstream().create_key_value(bucket="watched")
        kv.put("a", b"1")
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.wait(0.05):
                i += 1
                kv.put("b", str(i).encode())

        t = threading.Thread(target=writer)
        t.start()
        try:
            status, out, err = call(
                capsys, "kv", "watch", "watched", "--count", "2", "--json", "-s", server.url
            )
        finally:
            stop.set()
            t.join()
    assert status == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[0]["key"] == "a" and docs[0]["value"] == "1"
    assert docs[1]["key"] == "b"


def test_kv_watch_as_a_process(server: NATSServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with natsync.connect(server.url) as nc:
        kv = nc.jetstream().create_key_value(bucket="pwatch")
        kv.put("k", b"before")
        proc = subprocess.Popen(
            [sys.executable, "-m", "natsync", "kv", "watch", "pwatch", "--count", "2", "-s", server.url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert proc.stderr is not None and "Watching 'pwatch'" in proc.stderr.readline()
            assert "current values delivered" in proc.stderr.readline()
            kv.put("k", b"after")
            out, err = proc.communicate(timeout=WAIT)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("[PUT] k revision 1: before")
    assert lines[1].startswith("[PUT] k revision 2: after")


def test_obj_commands_as_processes(server: NATSServer, tmp_path: Path) -> None:
    s = ("-s", server.url)
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(300_000))
    assert run("obj", "add", "files", *s).returncode == 0
    p = run("obj", "put", "files", str(src), *s)
    assert p.returncode == 0, p.stderr
    assert b"Stored 'data.bin'" in p.stdout and b"300,000 bytes" in p.stdout
    p = run("obj", "put", "files", "-", "--name", "piped.txt", *s, stdin=b"hello")
    assert p.returncode == 0, p.stderr
    p = run("obj", "ls", "files", "--json", *s)
    assert sorted(d["name"] for d in json.loads(p.stdout)) == ["data.bin", "piped.txt"]
    out = tmp_path / "copy.bin"
    p = run("obj", "get", "files", "data.bin", "-o", str(out), *s)
    assert p.returncode == 0 and out.read_bytes() == src.read_bytes()
    p = run("obj", "get", "files", "piped.txt", *s)
    assert p.stdout == b"hello"
    p = run("obj", "rm", "files", "piped.txt", "-f", *s)
    assert p.returncode == 0
    p = run("obj", "get", "files", "piped.txt", *s)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1


def test_js_commands_in_process(
    server: NATSServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    s = ("-s", server.url)
    status, _, err = call(
        capsys, "stream", "add", "INPROC", "--max-msgs", "10", "--max-age", "60", "--json", *s
    )
    assert status == 0, err
    status, out, _ = call(capsys, "stream", "info", "INPROC", *s)
    assert status == 0 and "Stream INPROC" in out and "subjects: INPROC" in out
    assert call(capsys, "stream", "ls", "--json", *s)[0] == 0
    assert call(capsys, "stream", "rm", "INPROC", "-f", "--json", *s)[0] == 0
    assert call(capsys, "kv", "add", "ip", "--json", *s)[0] == 0
    status, out, _ = call(capsys, "kv", "ls", "ip", *s)
    assert (status, out) == (0, "")
    assert call(capsys, "kv", "put", "ip", "k", "v", "--json", *s)[0] == 0
    status, out, _ = call(capsys, "kv", "get", "ip", "k", "--json", *s)
    assert json.loads(out)["value"] == "v"
    assert call(capsys, "kv", "del", "ip", "k", "-f", "--json", *s)[0] == 0
    assert call(capsys, "obj", "add", "ipo", "--json", *s)[0] == 0
    status, out, _ = call(capsys, "obj", "ls", "ipo", *s)
    assert (status, out) == (0, "No objects\n")
    f = tmp_path / "x.txt"
    f.write_text("abc")
    assert call(capsys, "obj", "put", "ipo", str(f), "--json", *s)[0] == 0
    status, out, _ = call(capsys, "obj", "get", "ipo", "x.txt", "--json", *s)
    assert json.loads(out)["data"] == "abc"
    status, out, _ = call(capsys, "obj", "ls", "ipo", *s)
    assert "x.txt" in out
    assert call(capsys, "obj", "rm", "ipo", "x.txt", "-f", "--json", *s)[0] == 0


# --- issue 19: the JetStream subcommands of the Go CLI -------------------------------------------


def test_stream_purge_view_get_edit_and_add_twice(server: NATSServer) -> None:
    s = ("-s", server.url)
    assert run("stream", "add", "VIEWS", "--subjects", "views.>", *s).returncode == 0
    p = run("stream", "add", "VIEWS", "--subjects", "views.>", *s)  # identical: nothing changes
    assert p.returncode == 0 and b"already exists with this configuration" in p.stdout, p.stdout
    p = run("stream", "add", "VIEWS", "--subjects", "other.>", *s)  # different: the server refuses
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1
    for i in range(1, 5):
        p = run("pub", f"views.{i % 2}", f"m{i}", "-H", "N:{{Count}}", "--jetstream", *s)
        assert p.returncode == 0 and f"Stored in stream 'VIEWS' sequence {i}".encode() in p.stdout, p.stderr
    doc = json.loads(run("pub", "views.1", "m5", "-J", "--json", *s).stdout)
    assert doc["acks"] == [{"stream": "VIEWS", "seq": 5, "duplicate": False}]
    p = run("stream", "view", "VIEWS", "--json", *s)
    docs = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(d["seq"], d["subject"], d["data"]) for d in docs] == [
        (1, "views.1", "m1"),
        (2, "views.0", "m2"),
        (3, "views.1", "m3"),
        (4, "views.0", "m4"),
        (5, "views.1", "m5"),
    ]
    assert docs[0]["headers"] == {"N": ["1"]}
    p = run("stream", "view", "VIEWS", "--subject", "views.0", "--raw", *s)
    assert p.stdout == b"m2\nm4\n"
    p = run("stream", "view", "VIEWS", "--id", "4", "--count", "1", *s)
    assert p.stdout.startswith(b"[4] Subject: views.0") and b"m4" in p.stdout and b"[5]" not in p.stdout
    p = run("stream", "get", "VIEWS", "2", "--json", *s)
    assert json.loads(p.stdout)["data"] == "m2"
    p = run("stream", "get", "VIEWS", "--last-for", "views.0", "--raw", *s)
    assert p.stdout == b"m4\n"
    p = run("stream", "get", "VIEWS", "99", *s)
    assert p.returncode == 1 and b"has no sequence 99" in p.stderr
    p = run("stream", "edit", "VIEWS", "--max-msgs", "100", "--description", "edited", "--json", *s)
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)["config"]
    assert (cfg["max_msgs"], cfg["description"], cfg["subjects"]) == (100, "edited", ["views.>"])
    p = run("stream", "purge", "VIEWS", *s)  # destructive: needs -f without a terminal
    assert p.returncode == 1 and b"pass -f" in p.stderr
    p = run("stream", "purge", "VIEWS", "-f", "--subject", "views.0", "--json", *s)
    assert json.loads(p.stdout) == {"stream": "VIEWS", "purged": 2, "messages": 3}
    p = run("stream", "purge", "VIEWS", "-f", "--keep", "1", *s)
    assert p.returncode == 0 and b"Purged 2 messages" in p.stdout
    assert run("stream", "rm", "VIEWS", "-f", *s).returncode == 0


def test_consumer_commands(server: NATSServer) -> None:
    s = ("-s", server.url)
    assert run("stream", "add", "WORK", "--subjects", "work.>", *s).returncode == 0
    with natsync.connect(server.url) as nc:
        js = nc.jetstream()
        for i in range(4):
            js.publish(f"work.{i}", f"job{i}".encode())
    p = run("consumer", "add", "WORK", "C1", *s)  # no flags: durable pull, deliver all, explicit ack
    assert p.returncode == 0 and b"Created consumer 'C1'" in p.stdout and b"type: pull" in p.stdout
    assert run("consumer", "add", "WORK", "C1", *s).returncode == 1  # exists: edit is the way
    p = run("consumer", "add", "WORK", "PUSH", "--target", "deliver.push", "--filter", "work.3", "--json", *s)
    info = json.loads(p.stdout)
    assert (
        info["config"]["deliver_subject"] == "deliver.push" and info["config"]["filter_subject"] == "work.3"
    )
    p = run("consumer", "ls", "WORK", *s)
    rows = {line.split()[0]: line.split() for line in p.stdout.decode().splitlines()[1:]}
    assert rows["C1"][1] == "pull" and rows["PUSH"][1:3] == ["push", "work.3"]
    assert {d["name"] for d in json.loads(run("consumer", "ls", "WORK", "--json", *s).stdout)} == {
        "C1",
        "PUSH",
    }
    p = run("consumer", "next", "WORK", "C1", "--count", "2", "--json", *s)
    assert [json.loads(line)["data"] for line in p.stdout.splitlines()] == ["job0", "job1"]
    p = run("consumer", "sub", "WORK", "C1", "--count", "2", "--raw", *s)
    assert p.returncode == 0 and p.stdout == b"job2\njob3\n", p.stderr
    p = run("consumer", "sub", "WORK", "PUSH", "--count", "1", "--raw", *s)
    assert p.returncode == 0 and p.stdout == b"job3\n", p.stderr
    info = json.loads(run("consumer", "info", "WORK", "C1", "--json", *s).stdout)
    assert info["num_pending"] == 0 and info["num_ack_pending"] == 0  # all acked
    p = run("consumer", "next", "WORK", "C1", "--timeout", "500ms", *s)
    assert p.returncode == 1 and b"no message from consumer 'C1'" in p.stderr
    p = run("consumer", "edit", "WORK", "C1", "--max-deliver", "7", "--description", "edited", "--json", *s)
    cfg = json.loads(p.stdout)["config"]
    assert (cfg["max_deliver"], cfg["description"]) == (7, "edited")
    assert b"max deliver: 7" in run("consumer", "info", "WORK", "C1", *s).stdout
    assert run("consumer", "rm", "WORK", "C1", *s).returncode == 1  # needs -f without a terminal
    p = run("consumer", "rm", "WORK", "C1", "-f", "--json", *s)
    assert json.loads(p.stdout) == {"stream": "WORK", "deleted": "C1"}
    assert run("consumer", "info", "WORK", "C1", *s).returncode == 1
    assert run("stream", "rm", "WORK", "-f", *s).returncode == 0


def test_sub_last_and_all_read_the_stream(server: NATSServer) -> None:
    s = ("-s", server.url)
    assert run("stream", "add", "LAST", "--subjects", "last.>", *s).returncode == 0
    with natsync.connect(server.url) as nc:
        for i in range(3):
            nc.jetstream().publish("last.x", f"v{i}".encode())
    p = run("sub", "last.>", "--last", "--count", "1", "--raw", *s)
    assert p.returncode == 0 and p.stdout == b"v2\n", p.stderr
    p = run("sub", "last.>", "--all", "--count", "3", "--json", *s)
    assert [json.loads(line)["data"] for line in p.stdout.splitlines()] == ["v0", "v1", "v2"]
    assert json.loads(p.stdout.splitlines()[0])["stream_seq"] == 1
    assert run("stream", "rm", "LAST", "-f", *s).returncode == 0


def test_kv_history_rm_status_ls_and_stdin(server: NATSServer) -> None:
    s = ("-s", server.url)
    assert run("kv", "add", "hist", "--history", "5", *s).returncode == 0
    for v in ("a", "b"):
        assert run("kv", "put", "hist", "k", v, *s).returncode == 0
    p = run("kv", "put", "hist", "k", *s, stdin=b"from stdin")  # no VALUE: standard input
    assert p.returncode == 0 and p.stdout == b"k = revision 3\n", p.stderr
    p = run("kv", "history", "hist", "k", "--json", *s)
    assert [(d["revision"], d["value"]) for d in json.loads(p.stdout)] == [
        (1, "a"),
        (2, "b"),
        (3, "from stdin"),
    ]
    assert b"from stdin" in run("kv", "history", "hist", "k", *s).stdout
    st = json.loads(run("kv", "status", "hist", "--json", *s).stdout)
    assert (st["bucket"], st["history"], st["values"]) == ("hist", 5, 3)
    assert b"history: 5" in run("kv", "status", "hist", *s).stdout
    assert run("kv", "rm", "hist", "k", *s).returncode == 1  # destructive: -f without a terminal
    assert run("kv", "rm", "hist", "k", "-f", *s).returncode == 0  # a key
    assert run("kv", "get", "hist", "k", *s).returncode == 1
    assert "hist" in json.loads(run("kv", "ls", "--json", *s).stdout)
    p = run("kv", "rm", "hist", "-f", "--json", *s)  # without KEY: the bucket
    assert json.loads(p.stdout) == {"bucket": "hist", "deleted": True}
    assert "hist" not in json.loads(run("kv", "ls", "--json", *s).stdout)


def test_obj_info_ls_seal_watch_and_safe_get(server: NATSServer, tmp_path: Path) -> None:
    s = ("-s", server.url)
    assert run("obj", "add", "safe", *s).returncode == 0
    assert run("obj", "put", "safe", "--name", "a.txt", *s, stdin=b"alpha").returncode == 0
    info = json.loads(run("obj", "info", "safe", "a.txt", "--json", *s).stdout)
    assert (info["name"], info["size"]) == ("a.txt", 5) and info["digest"].startswith("SHA-256=")
    assert b"size: 5" in run("obj", "info", "safe", "a.txt", *s).stdout
    bucket = json.loads(run("obj", "info", "safe", "--json", *s).stdout)
    assert bucket["bucket"] == "safe" and bucket["sealed"] is False
    assert "safe" in json.loads(run("obj", "ls", "--json", *s).stdout)
    # a failed get leaves an existing file as it was, and no temporary file behind
    target = tmp_path / "copy.pdf"
    target.write_bytes(b"precious" * 250_000)
    p = run("obj", "get", "safe", "missing", "-o", str(target), *s)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1
    assert target.read_bytes() == b"precious" * 250_000 and os.listdir(tmp_path) == ["copy.pdf"]
    for flag in ("-O", "--output"):
        p = run("obj", "get", "safe", "a.txt", flag, str(target), *s)
        assert p.returncode == 0 and target.read_bytes() == b"alpha", p.stderr
    assert os.listdir(tmp_path) == ["copy.pdf"]
    # watch shows changes
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "natsync", "obj", "watch", "safe", "--count", "1", "--json", *s],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stderr is not None and "Watching object store 'safe'" in proc.stderr.readline()
        with natsync.connect(server.url) as nc:
            nc.jetstream().object_store("safe").put("b.txt", b"beta")
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out)["name"] == "b.txt"
    assert run("obj", "seal", "safe", *s).returncode == 1  # needs -f without a terminal
    assert run("obj", "seal", "safe", "-f", *s).returncode == 0
    assert json.loads(run("obj", "info", "safe", "--json", *s).stdout)["sealed"] is True
    assert run("obj", "put", "safe", "--name", "c.txt", *s, stdin=b"x").returncode == 1  # sealed
    assert run("obj", "rm", "safe", "-f", *s).returncode == 0  # without NAME: the bucket
    assert "safe" not in json.loads(run("obj", "ls", "--json", *s).stdout)


def test_stream_rm_asks_on_a_terminal(server: NATSServer) -> None:
    from test_cli_go import _run_on_tty

    s = ["-s", server.url]
    assert run("stream", "add", "ASK", *s).returncode == 0
    status, output = _run_on_tty(["stream", "rm", "ASK", *s], b"no\n")
    assert status == 1 and "Delete stream 'ASK'" in output and "not confirmed" in output
    assert run("stream", "info", "ASK", *s).returncode == 0
    status, output = _run_on_tty(["stream", "rm", "ASK", *s], b"y\n")
    assert status == 0 and "Deleted stream 'ASK'" in output, output
    assert run("stream", "info", "ASK", *s).returncode == 1
