"""The ``natsync`` command as a user of the Go ``nats`` CLI meets it (issue 19): contexts
in the Go CLI's files, stdin bodies, Go templates, the Go flag names, ``--timeout``,
SIGTERM, confirmations on a terminal, ``server``/``account`` through the system account,
``bench SUBJECT --clients``, and the cosmetic fixes.  Every command runs as a process
against a real nats-server.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import ROOT, WAIT, assert_one_line_error, call

import natsync
from natsync.cli import _options, _template, _util
from natsync.testing import NATSServer

USER, PASSWORD = "go-user", "go-pa55word"
SYS_CONFIG = """
accounts {
  SYS { users = [ { user: sys, password: sys-pw } ] }
  APP { jetstream: enabled, users = [ { user: app, password: app-pw } ] }
}
system_account: SYS
"""
GO_FIELDS = [
    "description",
    "url",
    "socks_proxy",
    "token",
    "user",
    "password",
    "creds",
    "nkey",
    "cert",
    "key",
    "ca",
    "nsc",
    "jetstream_domain",
    "jetstream_api_prefix",
    "jetstream_event_prefix",
    "inbox_prefix",
    "user_jwt",
    "color_scheme",
    "tls_first",
]


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(user=USER, password=PASSWORD) as srv:
        yield srv


@pytest.fixture(scope="module")
def sys_server() -> Iterator[NATSServer]:
    """A server with a system account (SYS) and a JetStream account (APP), users in accounts."""
    with NATSServer(config=SYS_CONFIG, jetstream=True) as srv:
        yield srv


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME and XDG_CONFIG_HOME of the test's own, and no NATS_* variables."""
    for k in list(os.environ):
        if k.startswith("NATS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    return tmp_path


def url(srv: NATSServer, user: str | None = None, password: str | None = None) -> str:
    auth = f"{user}:{password}@" if user else ""
    return f"nats://{auth}127.0.0.1:{srv.port}"


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    e.update(extra or {})
    return e


def run(
    *args: str, stdin: str | bytes | None = None, extra: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m natsync ARGS`` to completion (stdin: the text given, else empty)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [sys.executable, "-m", "natsync", *args],
        env=env(extra),
        input=data or b"",
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def spawn(*args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "natsync", *args],
        env=env(extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def ready(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert word in line, f"expected {word!r} on stderr, got {line!r}"


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
        proc.wait()


def go_context(home: Path, name: str, **fields: Any) -> Path:
    """A context file exactly as the Go CLI writes one: every field, two-space indent."""
    doc = {k: fields.get(k, False if k == "tls_first" else "") for k in GO_FIELDS}
    path = home / ".config" / "nats" / "context" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


# --- contexts --------------------------------------------------------------------------------


def test_a_context_written_by_the_go_cli_is_used(server: NATSServer, home: Path) -> None:
    go_context(home, "dev", description="the dev server", url=url(server), user=USER, password=PASSWORD)
    proc = run("--context", "dev", "rtt", "--count", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"nats://127.0.0.1:{server.port}: average rtt")
    proc = run("rtt", "--count", "1", "--context", "dev")  # also after the command
    assert proc.returncode == 0, proc.stderr
    proc = run("rtt", "--count", "1", extra={"NATS_CONTEXT": "dev"})
    assert proc.returncode == 0, proc.stderr
    proc = run("rtt", "--count", "1")  # nothing selected: the default URL, where nothing listens
    assert proc.returncode == 1
    (home / ".config" / "nats" / "context.txt").write_text("dev")  # as `nats context select dev`
    proc = run("rtt", "--count", "1")
    assert proc.returncode == 0, proc.stderr
    # an environment variable overrides the context, and a flag the environment variable
    proc = run("rtt", "--count", "1", extra={"NATS_PASSWORD": "wrong"})
    assert_one_line_error(proc, "AuthorizationError")
    assert "wrong" not in proc.stderr and PASSWORD not in proc.stderr
    proc = run("rtt", "--count", "1", "--password", PASSWORD, extra={"NATS_PASSWORD": "wrong"})
    assert proc.returncode == 0, proc.stderr
    proc = run("--context", "nope", "rtt")
    assert_one_line_error(proc, "no context named 'nope'", "known: dev")


def test_context_commands_write_the_go_format(server: NATSServer, home: Path) -> None:
    proc = run(
        "context",
        "add",
        "mine",
        "--server",
        url(server),
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--description",
        "made by natsync",
        "--select",
    )
    assert proc.returncode == 0, proc.stderr
    path = home / ".config" / "nats" / "context" / "mine.json"
    doc = json.loads(path.read_text())
    assert list(doc) == GO_FIELDS  # every field the Go CLI writes, in its order
    assert (doc["url"], doc["user"], doc["password"], doc["tls_first"]) == (
        url(server),
        USER,
        PASSWORD,
        False,
    )
    assert path.read_text().startswith('{\n  "description": "made by natsync",\n')
    assert path.stat().st_mode & 0o777 == 0o600
    assert (home / ".config" / "nats" / "context.txt").read_text() == "mine"
    assert run("rtt", "--count", "1").returncode == 0  # the selected context
    # a field natsync does not know survives an update
    doc["future_field"] = "kept"
    path.write_text(json.dumps(doc, indent=2))
    proc = run("context", "add", "mine", "--description", "updated")
    assert proc.returncode == 0 and "Updated context 'mine'" in proc.stdout
    doc = json.loads(path.read_text())
    assert (doc["description"], doc["future_field"], doc["user"]) == ("updated", "kept", USER)
    # ls, info (secrets masked), select
    go_context(home, "other", url="nats://127.0.0.1:1", token="t0ken-s3cret")
    proc = run("context", "ls", "--json")
    assert json.loads(proc.stdout) == [
        {"name": "mine", "selected": True, "description": "updated", "url": url(server)},
        {"name": "other", "selected": False, "description": "", "url": "nats://127.0.0.1:1"},
    ]
    assert "mine*" in run("context", "ls").stdout
    proc = run("context", "info", "other")
    assert proc.returncode == 0 and "token: *********" in proc.stdout and "t0ken-s3cret" not in proc.stdout
    info = json.loads(run("context", "info", "--json").stdout)
    assert info["name"] == "mine" and info["password"] == "*********" and PASSWORD not in json.dumps(info)
    assert run("context", "select", "other").returncode == 0
    assert run("context", "select").stdout == "other\n"
    # rm asks; without a terminal it needs -f
    proc = run("context", "rm", "other")
    assert_one_line_error(proc, "pass -f")
    assert (home / ".config" / "nats" / "context" / "other.json").exists()
    proc = run("context", "rm", "other", "-f")
    assert proc.returncode == 0 and not (home / ".config" / "nats" / "context" / "other.json").exists()
    assert not (home / ".config" / "nats" / "context.txt").exists()  # it was the selected one
    assert_one_line_error(run("context", "add", "../evil"), "invalid context name")


def test_context_rm_asks_on_a_terminal(home: Path) -> None:
    go_context(home, "tty")
    for answer, kept in ((b"n\n", True), (b"y\n", False)):
        status, output = _run_on_tty(["context", "rm", "tty"], answer)
        assert "Delete context 'tty'" in output and "[y/N]" in output
        assert (home / ".config" / "nats" / "context" / "tty.json").exists() is kept
        assert status == (1 if kept else 0), output


def _run_on_tty(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run natsync with a pseudo-terminal as stdin/stderr, type *answer* once asked."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "natsync", *args],
            env=env(),
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=follower,
            cwd=ROOT,
        )
        os.close(follower)
        follower = -1
        seen = b""
        deadline = time.monotonic() + WAIT
        while b"[y/N]" not in seen and time.monotonic() < deadline:
            try:
                seen += os.read(leader, 1024)
            except OSError:
                break
        os.write(leader, answer)
        out, _ = proc.communicate(timeout=WAIT)
        try:
            while True:
                more = os.read(leader, 1024)
                if not more:
                    break
                seen += more
        except OSError:
            pass
        return proc.returncode, seen.decode("utf-8", "replace") + out.decode()
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_context_paths_expand_the_home_directory(home: Path) -> None:
    pytest.importorskip("nkeys")
    from authkit import new_key

    key = new_key()
    (home / "user.nk").write_text(key.seed + "\n")
    config = "authorization {\n  users = [ { nkey: " + key.public + " } ]\n}\n"
    with NATSServer(config=config) as srv:
        go_context(home, "nk", url=url(srv), nkey="~/user.nk")
        proc = run("--context", "nk", "rtt", "--count", "1")
        assert proc.returncode == 0, proc.stderr
        info = run("context", "info", "nk").stdout
        assert f"nkey: ~/user.nk ({home}/user.nk)" in info and key.seed not in info


def test_context_fields_natsync_cannot_honour_are_refused(home: Path) -> None:
    go_context(home, "old", nsc="nsc://op/acct/user")
    assert_one_line_error(run("--context", "old", "rtt"), "'nsc'", "does not support")
    go_context(home, "op", creds="op://vault/item/field")
    assert_one_line_error(run("--context", "op", "rtt"), "op: URIs are not supported")


# --- bodies and templates -----------------------------------------------------------------------


def test_bodies_come_from_stdin(server: NATSServer, home: Path) -> None:
    s = url(server, USER, PASSWORD)
    with natsync.connect(s) as nc:
        sub = nc.subscribe("go.stdin")
        nc.subscribe("go.echo", cb=lambda m: m.respond(b"got:" + m.data))
        nc.flush()
        proc = run("pub", "go.stdin", "-s", s, stdin="data from a pipe")
        assert proc.returncode == 0 and proc.stdout == "Published 1 message to 'go.stdin'\n", proc.stderr
        assert sub.next_msg(timeout=WAIT).data == b"data from a pipe"
        proc = run("pub", "go.stdin", "-s", s, stdin=b"\xff\x00binary")
        assert proc.returncode == 0, proc.stderr
        assert sub.next_msg(timeout=WAIT).data == b"\xff\x00binary"
        proc = run("req", "go.echo", "-s", s, stdin="question")
        assert (proc.returncode, proc.stdout) == (0, "got:question\n"), proc.stderr
        proc = run("pub", "go.stdin", "argument wins", "-s", s, stdin="ignored")
        assert sub.next_msg(timeout=WAIT).data == b"argument wins"


def test_templates_in_bodies_and_headers(server: NATSServer, home: Path) -> None:
    s = url(server, USER, PASSWORD)
    with natsync.connect(s) as nc:
        sub = nc.subscribe("go.tpl")
        nc.flush()
        body = "{{ Count }}|{{.Count}}|{{ID}}|{{TimeStamp}}|{{Time}}|{{Unix}}|{{UnixNano}}|{{ Random 3 6 }}"
        proc = run("pub", "go.tpl", body, "--count", "2", "-H", "Seq:{{Count}}", "-H", "Id:{{ID}}", "-s", s)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        msgs = [sub.next_msg(timeout=WAIT) for _ in range(2)]
        ids = set()
        for n, m in enumerate(msgs, 1):
            count, count2, nuid, stamp, kitchen, unix, nano, rnd = m.data.decode().split("|")
            assert (count, count2) == (str(n), str(n))
            assert re.fullmatch(r"[0-9A-Za-z]{22}", nuid)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", stamp)
            assert re.fullmatch(r"1?\d:\d\d(AM|PM)", kitchen)
            assert abs(int(unix) - time.time()) < 600 and int(nano) // 10**9 == int(unix)
            assert re.fullmatch(r"[0-9A-Za-z]{3,6}", rnd)
            assert m.headers is not None and m.headers["Seq"] == str(n)
            ids |= {nuid, m.headers["Id"]}
        assert len(ids) == 4  # a new NUID at each use
        # not a template natsync can expand: sent as written, with a warning (as natscli)
        proc = run("pub", "go.tpl", "{{ Nope }} {{Count}}", "-s", s)
        assert proc.returncode == 0 and "warning" in proc.stderr and "Nope" in proc.stderr
        assert sub.next_msg(timeout=WAIT).data == b"{{ Nope }} {{Count}}"
        proc = run("pub", "go.tpl", "{{Count}}", "--no-templates", "-s", s)
        assert sub.next_msg(timeout=WAIT).data == b"{{Count}}"
        # a header template that cannot be expanded is an error before anything is sent
        proc = run("pub", "go.tpl", "x", "-H", "Bad:{{ Random }}", "-s", s)
        assert_one_line_error(proc, "header Bad", "Random")
        with pytest.raises(natsync.TimeoutError):
            sub.next_msg(timeout=0.3)


def test_template_expansion_unit() -> None:
    assert _template.expand("a{{- Count -}} b {{/* note */}}", 3) == "a3b "
    assert _template.expand("{{ Random 4 4 }}", 1).isalnum()
    assert len(_template.expand("{{Random 5 2}}", 1)) in range(2, 6)  # natscli swaps the bounds
    assert _template.expand("{{Request}}/{{.Request}}", 1, "req") == "req/req"
    for bad in (
        "{{",
        "{{ if .Count }}x{{ end }}",
        "{{ Count | printf }}",
        "{{ Request }}",
        "{{Random -1 2}}",
        "{{ .Nope }}",
        "{{ Count 1 }}",
    ):
        with pytest.raises(_template.TemplateError):
            _template.expand(bad, 1)


def test_reply_templates_echo_and_command(server: NATSServer, home: Path) -> None:
    s = url(server, USER, PASSWORD)
    rep = spawn("reply", "go.rep", "#{{Count}} answers {{Request}}", "--count", "1", "-s", s)
    echo = spawn("reply", "go.echo2", "--echo", "--count", "1", "-s", s)
    cmd = spawn(
        "reply",
        "go.cmd.>",
        "--command",
        f"{sys.executable} -c 'import os,sys; "
        'print(sys.argv[1], os.environ["NATS_REQUEST_SUBJECT"], os.environ["NATS_REQUEST_BODY"])\' '
        "{{3}}",
        "--count",
        "1",
        "-s",
        s,
    )
    try:
        for p in (rep, echo, cmd):
            ready(p, "Replying on")
        with natsync.connect(s) as nc:
            assert nc.request("go.rep", b"q1", timeout=WAIT).data == b"#1 answers q1"
            m = nc.request("go.echo2", b"same", headers={"H1": "v1"}, timeout=WAIT)
            assert m.data == b"same" and m.headers is not None and m.headers["H1"] == "v1"
            assert m.headers["NATS-Reply-Counter"] == "1"
            m = nc.request("go.cmd.weather.london", b"body!", timeout=WAIT)
            assert m.data == b"london go.cmd.weather.london body!\n"
        for p in (rep, echo, cmd):
            out, err = finish(p)
            assert p.returncode == 0, err
    finally:
        for p in (rep, echo, cmd):
            p.kill()
            p.wait()
    # no body and no --command: echo mode, said on stderr; the Go CLI's queue group
    p = spawn("reply", "go.auto", "--count", "1", "-s", s)
    try:
        ready(p, "echo mode")
        ready(p, "in queue group 'NATS-RPLY-22'")
        with natsync.connect(s) as nc:
            assert nc.request("go.auto", b"back", timeout=WAIT).data == b"back"
        finish(p)
    finally:
        p.kill()
        p.wait()


# --- flags and behaviour -------------------------------------------------------------------------


def test_durations_and_the_global_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [_util.parse_duration(t) for t in ("2", "1.5", "2s", "500ms", "1m30s", "1h", "250us")] == [
        2.0,
        1.5,
        2.0,
        0.5,
        90.0,
        3600.0,
        0.00025,
    ]
    for bad in ("", "abc", "5x", "-1s", "nan"):
        with pytest.raises(ValueError):
            _util.parse_duration(bad)
    monkeypatch.delenv("NATS_TIMEOUT", raising=False)
    from natsync import cli

    args = cli.build_parser().parse_args(["req", "x"])
    assert _options.timeout(args) == 5.0  # the Go CLI's default
    monkeypatch.setenv("NATS_TIMEOUT", "750ms")
    assert _options.timeout(cli.build_parser().parse_args(["req", "x"])) == 0.75
    assert _options.timeout(cli.build_parser().parse_args(["--timeout", "2s", "req", "x"])) == 2.0


def test_req_replies_and_timeout(server: NATSServer, home: Path) -> None:
    s = url(server, USER, PASSWORD)
    with natsync.connect(s) as nc:
        nc.subscribe("go.many", cb=lambda m: m.respond(b"one"))
        nc.subscribe("go.many", cb=lambda m: m.respond(b"two"))
        nc.subscribe("go.silent")
        nc.flush()
        proc = run("req", "go.many", "q", "--replies", "2", "-s", s)
        assert proc.returncode == 0 and sorted(proc.stdout.split()) == ["one", "two"], proc.stderr
        t0 = time.monotonic()
        proc = run("req", "go.many", "q", "--replies", "0", "--timeout", "700ms", "--json", "-s", s)
        assert time.monotonic() - t0 >= 0.7
        assert sorted(json.loads(line)["data"] for line in proc.stdout.splitlines()) == ["one", "two"]
        proc = run("req", "go.silent", "q", "--timeout", "300ms", "-s", s)
        assert_one_line_error(proc, "no reply on 'go.silent' within 0.3 s")


def test_sub_headers_by_default_raw_and_sigterm_drains(server: NATSServer, home: Path) -> None:
    s = url(server, USER, PASSWORD)
    sub = spawn("sub", "go.sub", "-s", s)
    raw = spawn("sub", "go.sub", "--raw", "--count", "1", "-s", s)
    try:
        ready(sub, "Listening on 'go.sub'")
        ready(raw, "Listening on 'go.sub'")
        with natsync.connect(s) as nc:
            nc.publish("go.sub", b"payload", headers={"Trace": "t-1"})
            nc.flush()
        assert sub.stdout is not None
        assert [sub.stdout.readline() for _ in range(3)] == [
            "[#1] Received on 'go.sub'\n",
            "Trace: t-1\n",
            "payload\n",
        ]
        sub.send_signal(signal.SIGTERM)
        out, err = finish(sub)
        assert sub.returncode == 0, err  # drained and exited as for Ctrl-C (was 143)
        out, err = finish(raw)
        assert (raw.returncode, out) == (0, "payload\n")
    finally:
        for p in (sub, raw):
            p.kill()
            p.wait()


def test_go_tls_flag_names_tlsfirst_and_cli_advice(tmp_path: Path, home: Path) -> None:
    pytest.importorskip("trustme")
    from authkit import make_pki, tls_block

    pki = make_pki(tmp_path)
    with NATSServer(config=tls_block(pki, handshake_first=True)) as srv:
        proc = run(
            "rtt", "--count", "1", "-s", f"tls://127.0.0.1:{srv.port}", "--tlsca", pki.ca_file, "--tlsfirst"
        )
        assert proc.returncode == 0, proc.stderr
        proc = run(
            "rtt",
            "--count",
            "1",
            "-s",
            f"tls://127.0.0.1:{srv.port}",
            "--tlsca",
            pki.ca_file,
            "--connect-timeout",
            "1",
        )
        assert_one_line_error(proc, "--tlsfirst")
        assert "tls_handshake_first" not in proc.stderr
        go_context(home, "first", url=f"tls://127.0.0.1:{srv.port}", ca=pki.ca_file, tls_first=True)
        assert run("--context", "first", "rtt", "--count", "1").returncode == 0
    with NATSServer(config=tls_block(pki)) as srv:
        proc = run("rtt", "-s", f"tls://127.0.0.1:{srv.port}")  # the CA is not given
        assert_one_line_error(proc, "--tlsca")
        assert "tls=" not in proc.stderr and "ssl.create_default_context" not in proc.stderr


# --- server and account, through the system account ---------------------------------------------


def test_server_list_ping_info_and_account_info(sys_server: NATSServer, home: Path) -> None:
    sysu, app = url(sys_server, "sys", "sys-pw"), url(sys_server, "app", "app-pw")
    proc = run("server", "list", "-s", sysu)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert (
        lines[0].split()[:4] == ["NAME", "CLUSTER", "HOST", "VERSION"]
        and "1 server(s) answered" in proc.stdout
    )
    docs = json.loads(run("server", "list", "1", "--json", "-s", sysu).stdout)
    assert len(docs) == 1 and docs[0]["statsz"]["connections"] >= 1 and docs[0]["rtt_ms"] > 0
    proc = run("server", "ping", "-s", sysu)
    assert proc.returncode == 0 and "rtt=" in proc.stdout
    pings = json.loads(run("server", "ping", "--json", "-s", sysu).stdout)
    sid = pings[0]["id"]
    proc = run("server", "info", "-s", sysu)
    assert proc.returncode == 0 and f"({sid})" in proc.stdout and "JetStream: yes" in proc.stdout
    varz = json.loads(run("server", "info", sid, "--json", "-s", sysu).stdout)
    assert varz["server_id"] == sid and varz["port"] == sys_server.port
    assert_one_line_error(run("server", "list", "2", "-s", sysu), "1 server(s) answered, expected 2")
    # without the system account: one line that says so
    for cmd in (("server", "list"), ("server", "ping"), ("server", "info")):
        assert_one_line_error(run(*cmd, "-s", app, "--timeout", "1"), "system account")
    proc = run("account", "info", "-s", app)
    assert proc.returncode == 0, proc.stderr
    assert "Account: APP" in proc.stdout and "User: app" in proc.stdout and "JetStream account" in proc.stdout
    doc = json.loads(run("account", "info", "--json", "-s", app).stdout)
    assert doc["account"] == "APP" and doc["jetstream"]["streams"] == 0 and "app-pw" not in json.dumps(doc)


# --- bench ----------------------------------------------------------------------------------------


def test_bench_subject_clients_and_reply(server: NATSServer, home: Path) -> None:
    s = url(server, USER, PASSWORD)
    doc = json.loads(
        run(
            "bench", "pub", "go.bench", "--clients", "3", "--msgs", "3000", "--json", "--no-progress", "-s", s
        ).stdout
    )
    assert (doc["subject"], doc["clients"], doc["msgs"]) == ("go.bench", 3, 3000) and doc["rate"] > 0
    rep = spawn("bench", "reply", "go.bench.rr", "--msgs", "200", "--clients", "2", "--no-progress", "-s", s)
    try:
        ready(rep, "Answering up to 200 requests on 'go.bench.rr'")
        proc = run(
            "bench",
            "req",
            "go.bench.rr",
            "--msgs",
            "200",
            "--clients",
            "2",
            "--json",
            "--no-progress",
            "-s",
            s,
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["msgs"] == 200 and doc["clients"] == 2 and doc["latency_us"]["p50"] > 0
        out, err = finish(rep)
        assert rep.returncode == 0 and "natsync bench reply: 200 msgs" in out, err
    finally:
        rep.kill()
        rep.wait()
    proc = run("bench", "sub", "go.bench.none", "--msgs", "3", "--timeout", "300ms", "--no-progress", "-s", s)
    assert (proc.returncode, proc.stdout) == (1, "")  # no result on stdout, then the failure
    assert proc.stderr.splitlines()[-1].startswith("natsync: error: bench sub: only 0 of 3 messages arrived")
    # the older spelling still works
    doc = json.loads(run("bench", "pub", "--subject", "go.old", "--msgs", "10", "--json", "-s", s).stdout)
    assert doc["subject"] == "go.old"


# --- cosmetic ------------------------------------------------------------------------------------


def test_usage_problems_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = call(capsys, "--tlsca-typo", "/path/ca.pem", "pub", "x", "y")
    assert status == 2 and "unknown option '--tlsca-typo'" in err and "invalid choice" not in err
    status, out, err = call(capsys, "pub", "x\udcff", "y")  # what Python makes of a non-UTF-8 argv
    assert status == 2 and "is not valid UTF-8" in err and "codec" not in err and "Traceback" not in err
    status, out, err = call(capsys, "pub", "--help")
    assert status == 0 and "--tlsca" not in out and "--server" not in out and "natsync --help" in out
    assert "--count" in out and "--jetstream" in out
    status, out, err = call(capsys, "--help")
    # (argparse on 3.13 names the metavar once: "--tlsca, --tls-ca FILE")
    assert status == 0 and "--context NAME" in out
    assert re.search(r"--tlsca( FILE)?, --tls-ca FILE", out)


def test_a_non_utf8_argument_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "natsync", "pub", b"bad\xffsubject", "y"],
        env=env(),
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and b"not valid UTF-8" in proc.stderr and b"Traceback" not in proc.stderr


def test_sub_tells_a_reconnection_on_stderr(home: Path) -> None:
    with NATSServer() as srv:
        sub = spawn("sub", "go.rc", "-s", srv.url)
        try:
            ready(sub, "Listening on 'go.rc'")
            srv.restart()  # same port
            ready(sub, "Disconnected from the server; reconnecting")
            ready(sub, "Reconnected")
            with natsync.connect(srv.url) as nc:  # and it still receives
                stop = threading.Event()

                def publish() -> None:  # until it is seen: the re-subscription races this connection
                    while not stop.wait(0.05):
                        nc.publish("go.rc", b"after")

                t = threading.Thread(target=publish)
                t.start()
                try:
                    assert sub.stdout is not None
                    assert sub.stdout.readline() == "[#1] Received on 'go.rc'\n"
                finally:
                    stop.set()
                    t.join()
            sub.send_signal(signal.SIGINT)
            out, err = finish(sub)
            assert sub.returncode == 0, err
        finally:
            sub.kill()
            sub.wait()


def test_pub_sleep_between_messages(server: NATSServer, home: Path) -> None:
    s = url(server, USER, PASSWORD)
    with natsync.connect(s) as nc:
        sub = nc.subscribe("go.slow")
        nc.flush()
        t0 = time.monotonic()
        proc = run("pub", "go.slow", "{{Count}}", "--count", "3", "--sleep", "200ms", "-s", s)
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - t0 >= 0.4  # two pauses
        assert [sub.next_msg(timeout=WAIT).data for _ in range(3)] == [b"1", b"2", b"3"]
