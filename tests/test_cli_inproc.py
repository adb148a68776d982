"""The issue-19 commands once more, in-process through ``natsync.cli.main`` (measured by
coverage; test_cli_go.py and test_cli_js.py run them as processes).  Finer cases too:
standard input as a pipe, refusals without a terminal, JSON shapes."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from authkit import wait_until
from test_cli import WAIT, call
from test_cli_go import GO_FIELDS, SYS_CONFIG, go_context

import natsync
from natsync import cli
from natsync.testing import NATSServer

pytest.importorskip("natsync.js", reason="natsync.js is not part of this build")


@pytest.fixture(scope="module")
def srv() -> Iterator[NATSServer]:
    with NATSServer(config=SYS_CONFIG, jetstream=True) as s:
        yield s


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k in list(os.environ):
        if k.startswith("NATS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    return tmp_path


def app(s: NATSServer) -> tuple[str, str]:
    return ("-s", f"nats://app:app-pw@127.0.0.1:{s.port}")


def sysacct(s: NATSServer) -> tuple[str, str]:
    return ("-s", f"nats://sys:sys-pw@127.0.0.1:{s.port}")


def stdin_bytes(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_contexts_in_process(
    srv: NATSServer, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, err = call(capsys, "context", "ls")
    assert status == 0 and out.startswith("No contexts in ")
    status, out, err = call(capsys, "context", "info")
    assert status == 1 and "no context selected" in err
    status, out, err = call(
        capsys,
        "context",
        "add",
        "a",
        "--server",
        f"nats://127.0.0.1:{srv.port}",
        "--user",
        "app",
        "--password",
        "app-pw",
        "--token",
        "",
        "--tlsfirst",
        "--json",
    )
    doc = json.loads(out)
    assert status == 0 and doc["created"] and doc["context"]["password"] == "*********", err
    path = home / ".config" / "nats" / "context" / "a.json"
    assert (
        list(json.loads(path.read_text())) == GO_FIELDS and json.loads(path.read_text())["tls_first"] is True
    )
    call(
        capsys,
        "context",
        "add",
        "a",
        "--tlsca",
        "~/ca.pem",
        "--js-domain",
        "hub",
        "--inbox-prefix",
        "_I",
        "--description",
        "d",
        "--creds",
        "~/u.creds",
        "--nkey",
        "~/u.nk",
        "--tlscert",
        "c",
        "--tlskey",
        "k",
        "--js-api-prefix",
        "p",
    )
    status, out, err = call(capsys, "context", "info", "a")
    assert status == 0 and f"ca: ~/ca.pem ({home}/ca.pem) (missing)" in out and "jetstream_domain: hub" in out
    status, out, _ = call(capsys, "context", "select", "a", "--json")
    assert json.loads(out) == {"selected": "a"}
    status, out, _ = call(capsys, "context", "select", "--json")
    assert json.loads(out) == {"selected": "a"}
    status, out, _ = call(capsys, "context", "ls")
    assert "a*" in out
    status, out, _ = call(capsys, "context", "select", "missing")
    assert status == 1
    # a context that is not JSON, or not an object
    bad = home / ".config" / "nats" / "context" / "bad.json"
    bad.write_text("{nope")
    status, out, err = call(capsys, "--context", "bad", "rtt")
    assert status == 1 and "not valid JSON" in err
    bad.write_text("[]")
    status, out, err = call(capsys, "--context", "bad", "rtt")
    assert status == 1 and "not a JSON object" in err
    status, out, _ = call(capsys, "context", "ls", "--json")
    assert [d["name"] for d in json.loads(out)] == ["a", "bad"]
    # the selected context connects (its TLS files are missing: a one-line error), flags override it
    status, out, err = call(capsys, "rtt", "--count", "1")
    assert status == 1 and "cannot load TLS files" in err
    go_context(
        home,
        "plain",
        url=f"nats://127.0.0.1:{srv.port}",
        user="app",
        password="app-pw",
        inbox_prefix="_MYINBOX",
        jetstream_domain="",
    )
    status, out, err = call(capsys, "--context", "plain", "rtt", "--count", "1")
    assert status == 0, err
    monkeypatch.setenv("NATS_CONTEXT", "plain")
    status, out, err = call(capsys, "stream", "ls")
    assert status == 0, err
    status, out, err = call(capsys, "context", "rm", "a")
    assert status == 1 and "pass -f" in err
    status, out, err = call(capsys, "context", "rm", "a", "-f", "--json")
    assert json.loads(out) == {"deleted": "a"} and not path.exists()
    status, out, err = call(capsys, "context", "rm", "a", "-f")
    assert status == 1 and "no context named 'a'" in err
    status, out, err = call(capsys, "context", "info", "../x")
    assert status == 1 and "invalid context name" in err
    go_context(home, "sock", socks_proxy="socks5://x")
    status, out, err = call(capsys, "--context", "sock", "rtt")
    assert status == 1 and "socks_proxy" in err


def test_server_and_account_in_process(
    srv: NATSServer, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = call(capsys, "server", "list", *sysacct(srv))
    assert status == 0 and "1 server(s) answered" in out, err
    status, out, err = call(capsys, "server", "list", "1", "--json", *sysacct(srv))
    assert status == 0 and len(json.loads(out)) == 1
    status, out, err = call(capsys, "server", "ping", "1", *sysacct(srv))
    assert status == 0 and "rtt=" in out
    status, out, err = call(capsys, "server", "ping", "2", "--timeout", "300ms", *sysacct(srv))
    assert status == 1 and "expected 2" in err
    sid = json.loads(call(capsys, "server", "ping", "--json", *sysacct(srv))[1])[0]["id"]
    status, out, err = call(capsys, "server", "info", *sysacct(srv))
    assert status == 0 and "Server information for" in out and "Connections:" in out
    status, out, err = call(capsys, "server", "info", sid, *sysacct(srv))
    assert status == 0 and sid in out
    status, out, err = call(capsys, "server", "info", "nope", "--timeout", "300ms", *sysacct(srv))
    assert status == 1 and "no server named 'nope'" in err
    status, out, err = call(capsys, "server", "list", "--timeout", "300ms", *app(srv))
    assert status == 1 and "system account" in err
    status, out, err = call(capsys, "account", "info", *app(srv))
    assert status == 0 and "Account: APP" in out and "Streams:" in out, err
    status, out, err = call(capsys, "account", "info", *sysacct(srv))  # no JetStream in SYS
    assert status == 0 and "JetStream: not available" in out, err


def test_core_commands_in_process(
    srv: NATSServer, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = app(srv)[1]
    with natsync.connect(url) as nc:
        sub = nc.subscribe("ip.>")
        nc.subscribe("ip.svc", cb=lambda m: m.respond(b"A", headers={"H": "1"}))
        nc.subscribe("ip.svc", cb=lambda m: m.respond(b"B"))
        nc.flush()
        stdin_bytes(monkeypatch, b"piped {{Count}}")
        status, out, err = call(capsys, "pub", "ip.a", *app(srv))
        assert status == 0 and sub.next_msg(timeout=WAIT).data == b"piped 1", err
        status, out, err = call(
            capsys, "pub", "ip.{{Count}}", "x", "--count", "2", "--sleep", "10ms", "--json", *app(srv)
        )
        assert json.loads(out)["count"] == 2
        assert [sub.next_msg(timeout=WAIT).subject for _ in range(2)] == ["ip.1", "ip.2"]
        status, out, err = call(capsys, "pub", "ip.b", "{{ if }}", *app(srv))
        assert status == 0 and "warning" in err and sub.next_msg(timeout=WAIT).data == b"{{ if }}"
        status, out, err = call(capsys, "req", "ip.svc", "q", "--replies", "2", "--json", *app(srv))
        assert status == 0 and sorted(json.loads(x)["data"] for x in out.splitlines()) == ["A", "B"], err
        sub.next_msg(timeout=WAIT)  # the request itself, on ip.>
        status, out, err = call(
            capsys, "req", "ip.none", "q", "--replies", "0", "--timeout", "200ms", *app(srv)
        )
        assert status == 1 and "no reply" in err
        # reply in a thread of this process: template with the request, then echo
        result: list[int] = []
        t = threading.Thread(
            target=lambda: result.append(
                cli.main(["reply", "rp.rep", "{{Request}}!", "--count", "1", "-H", "N:{{Count}}", *app(srv)])
            )
        )
        t.start()
        try:

            def answered() -> bool:
                try:
                    m = nc.request("rp.rep", b"hey", timeout=WAIT)
                    return m.data == b"hey!" and m.headers is not None and m.headers["N"] == "1"
                except natsync.NoRespondersError:
                    return False

            wait_until(answered, WAIT, "reply to answer")
        finally:
            t.join(WAIT)
        assert result == [0]
        capsys.readouterr()
        t = threading.Thread(
            target=lambda: result.append(
                cli.main(
                    [
                        "reply",
                        "rp.cmd.*",
                        "--command",
                        "echo {{2}} {{ Request }}",
                        "--count",
                        "1",
                        "--queue",
                        "",
                        *app(srv),
                    ]
                )
            )
        )
        t.start()
        try:

            def ran() -> bool:
                try:
                    return nc.request("rp.cmd.word", b"body", timeout=WAIT).data == b"word body\n"
                except natsync.NoRespondersError:
                    return False

            wait_until(ran, WAIT, "reply --command to answer")
        finally:
            t.join(WAIT)
        assert result == [0, 0]
        status, out, err = call(capsys, "pub", "ip.h", "x", "-H", "Bad:{{ Nope }}", *app(srv))
        assert status == 1 and "header Bad" in err


def test_jetstream_commands_in_process(
    srv: NATSServer,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = app(srv)
    assert (
        call(
            capsys, "stream", "add", "IPS", "--subjects", "ips.>", "--description", "d", "--max-age", "1h", *s
        )[0]
        == 0
    )
    status, out, _ = call(
        capsys, "stream", "add", "IPS", "--subjects", "ips.>", "--description", "d", "--max-age", "1h", *s
    )
    assert "already exists" in out
    for i in range(3):
        assert call(capsys, "pub", f"ips.{i}", f"v{i}", "-J", *s)[0] == 0
    status, out, _ = call(capsys, "stream", "info", "IPS", *s)
    assert "description: d" in out and "messages: 3" in out
    status, out, _ = call(capsys, "stream", "ls", *s)
    assert "IPS" in out
    status, out, _ = call(capsys, "stream", "view", "IPS", *s)
    assert out.count("Subject: ips.") == 3
    status, out, err = call(capsys, "stream", "view", "IPS", "--subject", "none", *s)
    assert out == "" and "No messages" in err
    status, out, _ = call(capsys, "stream", "get", "IPS", "1", *s)
    assert "v0" in out
    status, out, err = call(capsys, "stream", "get", "IPS", *s)
    assert status == 1 and "--last-for" in err
    status, out, err = call(capsys, "stream", "get", "IPS", "--last-for", "ips.none", *s)
    assert status == 1 and "has no message on 'ips.none'" in err
    status, out, err = call(capsys, "stream", "edit", "IPS", *s)
    assert status == 1 and "nothing to change" in err
    status, out, _ = call(capsys, "stream", "edit", "IPS", "--max-msgs-per-subject", "5", *s)
    assert "Updated stream 'IPS'" in out
    status, out, err = call(capsys, "stream", "purge", "IPS", "-f", "--seq", "2", "--keep", "1", *s)
    assert status == 1 and "not both" in err
    # consumers
    status, out, err = call(capsys, "consumer", "ls", "IPS", *s)
    assert out.startswith("No consumers"), err
    assert (
        call(
            capsys,
            "consumer",
            "add",
            "IPS",
            "P",
            "--filter",
            "ips.1,ips.2",
            "--deliver",
            "last-per-subject",
            "--ack",
            "explicit",
            "--ack-wait",
            "10s",
            "--max-deliver",
            "3",
            "--max-ack-pending",
            "10",
            "--description",
            "pull one",
            *s,
        )[0]
        == 0
    )
    status, out, err = call(capsys, "consumer", "info", "IPS", "P", *s)
    assert "description: pull one" in out and "ack wait: 10.0" in out, err
    status, out, err = call(capsys, "consumer", "next", "IPS", "P", "--count", "2", "--no-ack", *s)
    assert status == 0 and out.count("Received on") == 2, err
    status, out, err = call(capsys, "consumer", "edit", "IPS", "P", *s)
    assert status == 1 and "nothing to change" in err
    assert call(capsys, "consumer", "edit", "IPS", "P", "--max-ack-pending", "20", *s)[0] == 0
    assert call(capsys, "consumer", "add", "IPS", "PU", "--target", "ip.deliver", "--ack", "none", *s)[0] == 0
    status, out, err = call(capsys, "consumer", "next", "IPS", "PU", *s)
    assert status == 1 and "push consumer" in err
    status, out, err = call(capsys, "consumer", "sub", "IPS", "PU", "--count", "3", "--json", "--no-ack", *s)
    assert status == 0 and [json.loads(x)["data"] for x in out.splitlines()] == ["v0", "v1", "v2"], err
    status, out, err = call(capsys, "consumer", "ls", "IPS", *s)
    assert "PU" in out and "push" in out
    status, out, err = call(capsys, "consumer", "rm", "IPS", "P", *s)
    assert status == 1 and "pass -f" in err
    assert call(capsys, "consumer", "rm", "IPS", "P", "-f", *s)[0] == 0
    status, out, err = call(capsys, "sub", "ips.>", "--new", "--queue", "q", *s)
    assert status == 1 and "--queue cannot" in err
    status, out, err = call(capsys, "stream", "purge", "IPS", "-f", *s)
    assert "Purged 3 messages" in out, err
    assert call(capsys, "stream", "rm", "IPS", "-f", *s)[0] == 0
    # Key/Value
    assert (
        call(
            capsys,
            "kv",
            "add",
            "ipkv",
            "--history",
            "3",
            "--ttl",
            "1h",
            "--description",
            "d",
            "--max-bytes",
            "100000",
            "--json",
            *s,
        )[0]
        == 0
    )
    stdin_bytes(monkeypatch, b"from stdin")
    status, out, err = call(capsys, "kv", "put", "ipkv", "k", *s)
    assert out == "k = revision 1\n", err
    assert call(capsys, "kv", "put", "ipkv", "k", "two", *s)[0] == 0
    status, out, _ = call(capsys, "kv", "get", "ipkv", "k", "--revision", "1", *s)
    assert out == "from stdin\n"
    status, out, _ = call(capsys, "kv", "history", "ipkv", "k", *s)
    assert "from stdin" in out and "two" in out
    status, out, _ = call(capsys, "kv", "status", "ipkv", *s)
    assert "history: 3" in out and "ttl: 3600.0" in out
    status, out, err = call(capsys, "kv", "rm", "ipkv", *s)
    assert status == 1 and "pass -f" in err
    assert call(capsys, "kv", "rm", "ipkv", "k", "-f", "--json", *s)[0] == 0
    status, out, _ = call(capsys, "kv", "ls", *s)
    assert "ipkv" in out
    assert call(capsys, "kv", "rm", "ipkv", "-f", *s)[0] == 0
    status, out, _ = call(capsys, "kv", "ls", *s)
    assert out == "No Key/Value buckets\n"
    # Object Store
    assert call(capsys, "obj", "add", "ipo", "--description", "files", *s)[0] == 0
    stdin_bytes(monkeypatch, b"object data")
    status, out, err = call(capsys, "obj", "put", "ipo", "-", "--name", "o.txt", "--json", *s)
    assert json.loads(out)["size"] == 11, err
    status, out, err = call(capsys, "obj", "put", "ipo", "-", *s)
    assert status == 1 and "--name" in err
    status, out, err = call(capsys, "obj", "put", "ipo", str(tmp_path / "missing"), *s)
    assert status == 1 and "cannot read" in err
    status, out, _ = call(capsys, "obj", "info", "ipo", "o.txt", "--json", *s)
    assert json.loads(out)["name"] == "o.txt"
    status, out, _ = call(capsys, "obj", "info", "ipo", *s)
    assert "description: files" in out
    status, out, _ = call(capsys, "obj", "ls", *s)
    assert "ipo" in out
    status, out, _ = call(capsys, "obj", "ls", "ipo", "--json", *s)
    assert [d["name"] for d in json.loads(out)] == ["o.txt"]
    target = tmp_path / "keep.bin"
    target.write_bytes(b"keep me")
    status, out, err = call(capsys, "obj", "get", "ipo", "nope", "-o", str(target), *s)
    assert status == 1 and target.read_bytes() == b"keep me" and sorted(os.listdir(tmp_path)) == ["keep.bin"]
    status, out, err = call(capsys, "obj", "get", "ipo", "o.txt", "-o", str(target), "--json", *s)
    assert json.loads(out)["size"] == 11 and target.read_bytes() == b"object data"
    status, out, err = call(
        capsys, "obj", "get", "ipo", "o.txt", "-o", str(tmp_path / "no" / "dir" / "x"), *s
    )
    assert status == 1 and "cannot write" in err
    status, out, err = call(capsys, "obj", "watch", "ipo", "--all", "--count", "1", *s)
    assert status == 0 and "[PUT] o.txt 11 bytes" in out, err
    status, out, err = call(capsys, "obj", "rm", "ipo", "o.txt", *s)
    assert status == 1 and "pass -f" in err
    assert call(capsys, "obj", "rm", "ipo", "o.txt", "-f", *s)[0] == 0
    status, out, err = call(capsys, "obj", "seal", "ipo", "-f", "--json", *s)
    assert json.loads(out) == {"bucket": "ipo", "sealed": True}
    assert call(capsys, "obj", "rm", "ipo", "-f", "--json", *s)[0] == 0
    status, out, _ = call(capsys, "obj", "ls", *s)
    assert out == "No object stores\n"
