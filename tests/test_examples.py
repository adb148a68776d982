"""Run the examples as users would: as scripts, against a real nats-server.

Every ``examples/*.py`` runs as a subprocess with ``NATS_URL_HOSTPORT`` pointing at a
server started with ``--auth mytoken`` (``user_password.py``: ``--user``/``--pass``) and
must exit 0, print what it promises and never print a secret.  The TLS, NKEY and creds
examples have tests of their own and are skipped here.  ``examples/demo.py`` (``make
demo``) runs once, end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from natsync.testing import NATSServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TOKEN = "mytoken"
USER, PASSWORD = "example-user", "example-pa55word"
# A token that only works in a URL when percent-encoded; "+" must stay "+".
SPECIAL_TOKEN = "p@ss:w/rd?#%+ x"
EXAMPLE_TIMEOUT = 30.0  # seconds for one example; each takes well under one
DEMO_TIMEOUT = 100.0

# Tested elsewhere (they need certificates or keys; kv_/obj_/js_ need JetStream:
# tests/test_kv_examples.py, tests/test_js_examples.py).
SKIP_WORDS = ("tls", "nkey", "creds", "kv_", "obj_", "js_")

# Lines each example must print (in this order, possibly with other lines between).
# An example not listed here must still exit 0 against a token server.
EXPECTED: dict[str, list[str]] = {
    "token_option.py": ["connected to nats://127.0.0.1:{port}", "received: b'hello'"],
    "token_nats_constructor.py": ["connected to nats://***@127.0.0.1:{port}", "received: b'hello'"],
    "token_in_url.py": [
        "nats://TOKEN@HOST:PORT: connected to nats://***@127.0.0.1:{port}",
        "received: b'hello'",
        "TOKEN@HOST:PORT: connected to nats://***@127.0.0.1:{port}",
        "received: b'hello'",
        "nats://:TOKEN@HOST:PORT: connected to nats://***@127.0.0.1:{port}",
        "received: b'hello'",
    ],
    "token_percent_encoded.py": ["connected to nats://***@127.0.0.1:{port}", "received: b'hello'"],
    "token_callable.py": [
        "connected to nats://127.0.0.1:{port}",
        "token callable called 1 time(s)",
        "received: b'hello'",
        "ValueError: option 'token' is a callable, but the server URL 'nats://***@127.0.0.1:{port}'",
    ],
    "request_reply.py": [
        "connected to nats://127.0.0.1:{port}",
        "reply: b'pong: ping'",
        "NoRespondersError: no responders on 'svc.nobody'",
    ],
    "user_password.py": [
        "options: connected to nats://127.0.0.1:{port}",
        "received: b'hello'",
        f"URL: connected to nats://{USER}:***@127.0.0.1:{{port}}",
        "received: b'hello'",
    ],
}


def _examples() -> list[str]:
    names = sorted(p.name for p in EXAMPLES.glob("*.py"))
    return [n for n in names if n != "demo.py" and not any(w in n.lower() for w in SKIP_WORDS)]


def _run(script: Path, env_extra: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script.name} did not finish within {timeout} s; output so far: {e.stdout!r}")


def _assert_lines_in_order(output: str, expected: list[str], port: int) -> None:
    lines = output.splitlines()
    pos = 0
    for want in expected:
        want = want.format(port=port)
        for i in range(pos, len(lines)):
            if lines[i].startswith(want):
                pos = i + 1
                break
        else:
            pytest.fail(f"expected a line starting with {want!r} (in order) in:\n{output}")


@pytest.fixture(scope="module")
def token_server() -> Iterator[NATSServer]:
    with NATSServer(token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def user_server() -> Iterator[NATSServer]:
    with NATSServer(user=USER, password=PASSWORD) as server:
        yield server


def test_examples_are_found() -> None:
    names = _examples()
    for mine in EXPECTED:
        assert mine in names
    assert "demo.py" not in names


@pytest.mark.parametrize("name", _examples())
def test_example(name: str, request: pytest.FixtureRequest) -> None:
    if name == "user_password.py":
        server: NATSServer = request.getfixturevalue("user_server")
        env = {"NATS_USER": USER, "NATS_PASSWORD": PASSWORD}
        secrets = [PASSWORD]
    else:
        server = request.getfixturevalue("token_server")
        env = {"NATS_TOKEN": TOKEN}
        secrets = [TOKEN]
    env["NATS_URL_HOSTPORT"] = f"{server.host}:{server.port}"
    proc = _run(EXAMPLES / name, env, EXAMPLE_TIMEOUT)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{output}"
    _assert_lines_in_order(proc.stdout, EXPECTED.get(name, []), server.port)
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr, f"{name} printed a secret"


def test_percent_encoded_token_with_special_characters() -> None:
    """The token travels percent-encoded in the URL and arrives decoded ("+" kept)."""
    with NATSServer(token=SPECIAL_TOKEN) as server:
        env = {"NATS_TOKEN": SPECIAL_TOKEN, "NATS_URL_HOSTPORT": f"{server.host}:{server.port}"}
        proc = _run(EXAMPLES / "token_percent_encoded.py", env, EXAMPLE_TIMEOUT)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    _assert_lines_in_order(
        proc.stdout,
        ["percent-encoding the token escaped 8 character(s)", *EXPECTED["token_percent_encoded.py"]],
        server.port,
    )
    assert SPECIAL_TOKEN not in proc.stdout


def test_example_fails_on_a_wrong_token(token_server: NATSServer) -> None:
    """An example is a real check: against the wrong token it exits non-zero, secret-free."""
    env = {"NATS_TOKEN": "wrong-token", "NATS_URL_HOSTPORT": f"{token_server.host}:{token_server.port}"}
    proc = _run(EXAMPLES / "token_option.py", env, EXAMPLE_TIMEOUT)
    assert proc.returncode != 0
    assert "AuthorizationError" in proc.stderr
    assert "wrong-token" not in proc.stdout + proc.stderr


@pytest.mark.timeout(DEMO_TIMEOUT + 20)
def test_demo() -> None:
    proc = _run(EXAMPLES / "demo.py", {}, DEMO_TIMEOUT)
    out = proc.stdout
    assert proc.returncode == 0, f"demo exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr}"
    for name in EXPECTED:
        assert f"=== {name} ===" in out
    assert "=== wrong token ===" in out
    assert "AuthorizationError: nats://***@127.0.0.1:" in out
    assert "demo OK" in out
    assert "FAILED" not in out
    assert TOKEN not in out
    assert PASSWORD not in out and "mypassword" not in out
