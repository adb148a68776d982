"""Test helpers for TLS, NKEY and JWT auth: certificates (trustme), keys and JWTs (nkeys),
nats-server config blocks, and checks that no secret shows.

A NATS JWT is a signed JSON document: ``base64url(header) . base64url(claims) .
base64url(ed25519 signature of the first two parts)``, header
``{"typ":"JWT","alg":"ed25519-nkey"}``, ``jti`` the base32 SHA-256 of the claims.  The
operator signs itself and the accounts, an account signs its users.  That is all
``nsc`` does for the setups used here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import trustme

from natsync.testing import NATSServer

# --- certificates ----------------------------------------------------------------------


@dataclass
class Pki:
    dir: Path
    ca: trustme.CA
    ca_file: str  # the CA that signed the server and client certificates
    cert_file: str  # server certificate for "localhost" and "127.0.0.1"
    key_file: str
    client_file: str  # client certificate + key (one PEM), signed by ca
    other_ca_file: str  # an unrelated CA
    other_client_file: str  # a client certificate signed by the unrelated CA
    named_cert_file: str  # server certificate for "nats.internal" only
    named_key_file: str
    localhost_cert_file: str  # server certificate for "localhost" only (no IP address)
    localhost_key_file: str


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA()
    other = trustme.CA()
    d = directory

    def write(blob: trustme.Blob, name: str) -> str:
        path = d / name
        blob.write_to_path(str(path))
        return str(path)

    server = ca.issue_cert("localhost", "127.0.0.1")
    named = ca.issue_cert("nats.internal")
    local = ca.issue_cert("localhost")
    client = ca.issue_cert("client@natsync.test")
    other_client = other.issue_cert("intruder@natsync.test")
    server_cert = d / "server-cert.pem"
    server_cert.write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
    named_cert = d / "named-cert.pem"
    named_cert.write_bytes(b"".join(b.bytes() for b in named.cert_chain_pems))
    local_cert = d / "local-cert.pem"
    local_cert.write_bytes(b"".join(b.bytes() for b in local.cert_chain_pems))
    return Pki(
        dir=d,
        ca=ca,
        ca_file=write(ca.cert_pem, "ca.pem"),
        cert_file=str(server_cert),
        key_file=write(server.private_key_pem, "server-key.pem"),
        client_file=write(client.private_key_and_cert_chain_pem, "client.pem"),
        other_ca_file=write(other.cert_pem, "other-ca.pem"),
        other_client_file=write(other_client.private_key_and_cert_chain_pem, "other-client.pem"),
        named_cert_file=str(named_cert),
        named_key_file=write(named.private_key_pem, "named-key.pem"),
        localhost_cert_file=str(local_cert),
        localhost_key_file=write(local.private_key_pem, "local-key.pem"),
    )


def tls_block(
    pki: Pki,
    *,
    verify: bool = False,
    handshake_first: bool = False,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> str:
    """A nats-server ``tls {}`` block (client connections)."""
    lines = [
        f'  cert_file: "{cert_file or pki.cert_file}"',
        f'  key_file: "{key_file or pki.key_file}"',
        f'  ca_file: "{pki.ca_file}"',
        "  timeout: 2",
    ]
    if verify:
        lines.append("  verify: true")
    if handshake_first:
        lines.append("  handshake_first: true")
    return "tls {\n" + "\n".join(lines) + "\n}\n"


def client_context(pki: Pki, *, cert: str | None = None, cafile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile or pki.ca_file)
    if cert:
        ctx.load_cert_chain(cert)
    return ctx


def connz(server: NATSServer, **params: str) -> list[dict[str, Any]]:
    """The server's client connections as its monitoring endpoint reports them."""
    assert server.monitor_url, "start the server with http_port=0"
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{server.monitor_url}/connz?{query}", timeout=5) as resp:
        conns: list[dict[str, Any]] = json.loads(resp.read())["connections"] or []
    return conns


# --- keys and JWTs ----------------------------------------------------------------------


@dataclass
class Key:
    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        kp = nkeys.from_seed(bytearray(self.seed.encode()))
        return bytes(kp.sign(data))


def new_key(prefix: int = nkeys.PREFIX_BYTE_USER) -> Key:
    seed = nkeys.encode_seed(os.urandom(32), prefix).decode()
    public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    return Key(seed, public)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any], issuer: Key) -> str:
    claims = dict(claims)
    claims.setdefault("iat", int(time.time()))
    claims["iss"] = issuer.public
    claims["jti"] = ""
    digest = hashlib.sha256(json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    head = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}.{b64url(issuer.sign(f'{head}.{body}'.encode()))}"


_NO_LIMITS = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}


def account_jwt(operator: Key, account: Key, name: str) -> str:
    nats = {
        "type": "account",
        "version": 2,
        "limits": _NO_LIMITS,
        "default_permissions": {"pub": {}, "sub": {}},
    }
    return make_jwt({"sub": account.public, "name": name, "nats": nats}, operator)


def user_jwt(account: Key, user: Key, name: str = "user", **claims: Any) -> str:
    nats = {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    return make_jwt({"sub": user.public, "name": name, "nats": nats, **claims}, account)


def creds_text(jwt: str, seed: str) -> str:
    """A .creds file as nsc writes it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


@dataclass
class OperatorSetup:
    """Operator mode: an operator, a system account, an account ``APP`` and a user of it."""

    config: str
    operator: Key
    account: Key
    user: Key
    user_jwt: str
    creds_file: str
    jwt_file: str
    seed_file: str


def make_operator_setup(directory: Path) -> OperatorSetup:
    operator = new_key(nkeys.PREFIX_BYTE_OPERATOR)
    system = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    account = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_key()
    op_jwt = make_jwt(
        {"sub": operator.public, "name": "OP", "nats": {"type": "operator", "version": 2}}, operator
    )
    ujwt = user_jwt(account, user)
    config = (
        f"operator: {op_jwt}\n"
        f"system_account: {system.public}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {system.public}: {account_jwt(operator, system, 'SYS')}\n"
        f"  {account.public}: {account_jwt(operator, account, 'APP')}\n"
        "}\n"
    )
    creds = directory / "user.creds"
    creds.write_text(creds_text(ujwt, user.seed))
    jwt_file = directory / "user.jwt"
    jwt_file.write_text(ujwt + "\n")
    seed_file = directory / "user.nk"
    seed_file.write_text(user.seed + "\n")
    return OperatorSetup(
        config=config,
        operator=operator,
        account=account,
        user=user,
        user_jwt=ujwt,
        creds_file=str(creds),
        jwt_file=str(jwt_file),
        seed_file=str(seed_file),
    )


def verify_sig(public: str, nonce: str, sig: str) -> bool:
    """Check a CONNECT ``sig`` (base64url, no padding) against an NKEY public key."""
    assert "=" not in sig and "+" not in sig and "/" not in sig, "sig must be base64url without padding"
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    import nacl.exceptions
    import nacl.signing

    # an NKEY public key: base32(prefix byte + 32-byte key + crc16)
    decoded = base64.b32decode(public + "=" * (-len(public) % 8))
    try:
        nacl.signing.VerifyKey(decoded[1:33]).verify(nonce.encode(), raw)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


# --- secrets ----------------------------------------------------------------------------


def exception_texts(err: BaseException) -> list[str]:
    """Every text an exception shows: str, repr, args, the formatted traceback, and the
    same for its causes and contexts."""
    texts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts += [str(e), repr(e), repr(e.args)]
        texts.append("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        todo += [e.__cause__, e.__context__]
    return texts


def assert_no_secret(texts: str | list[str], secrets: list[str], where: str = "") -> None:
    if isinstance(texts, str):
        texts = [texts]
    for text in texts:
        for secret in secrets:
            if secret and secret in text:
                raise AssertionError(f"a secret ({secret[:4]}...) leaked {where}: {text[:500]!r}")


# --- waiting ----------------------------------------------------------------------------


def wait_until(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait (bounded) until *pred()* holds; re-checks every few ms."""
    import threading

    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not pred():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.005)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(
    name: str, env_extra: dict[str, str], argv: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` in a subprocess with *env_extra*; bounded to 60 s."""
    root = EXAMPLES.parent
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *(argv or [])],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_example_ok(name: str, env_extra: dict[str, str]) -> str:
    """Run ``examples/<name>`` like :func:`run_example`, assert it exited 0, return its
    standard output."""
    proc = run_example(name, env_extra)
    out = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{out}"
    return proc.stdout
