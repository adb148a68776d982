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
    return subprocess.run([sys.executable, "-m", "natsync", *args], env=env, input=stdin,
                          capture_output=True, timeout=60, cwd=ROOT)


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
            status, out, err = call(capsys, "kv", "watch", "watched", "--count", "2", "--json",
                                    "-s", server.url)
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
        proc = subprocess.Popen([sys.executable, "-m", "natsync", "kv", "watch", "pwatch", "--count", "2",
                                 "-s", server.url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
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
    status, _, err = call(capsys, "stream", "add", "INPROC", "--max-msgs", "10", "--max-age", "60",
                          "--json", *s)
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
