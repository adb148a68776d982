"""Every example in ``README.rst`` and ``docs/*.rst`` runs, as a test.

One test per page (id: the page's path): its ``.. code-block:: python`` blocks run in
order in one namespace, like one script, against a fresh nats-server started for the page
by :class:`natsync.testing.NATSServer` on a free port; ``$ natsync ...`` lines of console
blocks run as processes with ``NATS_URL`` set.  A failure names ``page:line`` of the
block, and a traceback points at lines of the page itself.  The convention is described
in ``tests/docpages.py`` and in the project's contributor notes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docpages import Block, Page, match_output, parse_page, rewrite_urls

from natsync._lifecycle import live_clients
from natsync.testing import NATSServer

ROOT = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT = 60.0  # seconds one `$ natsync ...` command may run


def _pages() -> list[Path]:
    pages = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("**/*.rst"))]
    return [p for p in pages if p.is_file()]


def _page_params() -> list[Any]:
    params = []
    for path in _pages():
        rel = path.relative_to(ROOT).as_posix()
        page = parse_page(Path(rel), path.read_text(encoding="utf-8"))
        if page.runnable:
            params.append(pytest.param(page, id=rel))
    return params


@contextlib.contextmanager
def _server(page: Page) -> Iterator[NATSServer | None]:
    if page.server == "none":
        yield None
        return
    with NATSServer(jetstream=True, token=page.token) as server:
        yield server


class DocBlockError(AssertionError):
    """A block of a page failed (its page:line and what happened)."""


def _run_python(block: Block, page: Page, ns: dict[str, Any], hostport: str | None) -> None:
    code = rewrite_urls(block.code, hostport)
    where = f"{page.path}:{block.line}"
    # Pad with newlines so that line numbers in a traceback are the page's own.
    source = "\n" * (block.line - 1) + code + "\n"
    try:
        compiled = compile(source, str(page.path), "exec")
        exec(compiled, ns)
    except BaseException as exc:  # noqa: BLE001 - reported with the page's line
        if isinstance(exc, (KeyboardInterrupt, pytest.fail.Exception)):
            raise
        tb = "".join(traceback.format_exception(exc))
        label = "hidden setup before the block" if block.kind == "setup" else f"{block.kind} block"
        raise DocBlockError(f"{where}: {label} failed:\n{tb}") from exc


def _run_console(block: Block, page: Page, env: dict[str, str], hostport: str | None) -> None:
    for cmd in block.commands:
        text = rewrite_urls(cmd.text, hostport)
        where = f"{page.path}:{cmd.line}"
        try:
            proc = subprocess.run(
                ["bash", "-c", text],
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise DocBlockError(f"{where}: `$ {text}` still running after {COMMAND_TIMEOUT} s") from exc
        shown = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        if proc.returncode != 0:
            raise DocBlockError(f"{where}: `$ {text}` exited {proc.returncode}\n{shown}")
        if block.check_output:
            expected = [rewrite_urls(line, hostport) for line in cmd.expected]
            missing = match_output(expected, proc.stdout + "\n" + proc.stderr)
            if missing is not None:
                raise DocBlockError(f"{where}: `$ {text}`: {missing}\n{shown}")


def run_page(page: Page, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every block of *page* in *workdir* against the page's server."""
    open_before = {id(c) for c in list(live_clients) if not c.is_closed}
    with _server(page) as server:
        hostport = None if server is None else f"{server.host}:{server.port}"
        monkeypatch.chdir(workdir)
        for name, value in page.env.items():
            monkeypatch.setenv(name, rewrite_urls(value, hostport))
        if server is not None:
            monkeypatch.setenv("NATS_URL", server.url)
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        ns: dict[str, Any] = {"__name__": "__main__", "__file__": str(ROOT / page.path)}
        ok = False
        try:
            for block in page.blocks:
                if block.skip is not None:
                    continue
                if block.kind in ("python", "setup"):
                    _run_python(block, page, ns, hostport)
                elif block.kind == "console":
                    _run_console(block, page, env, hostport)
            ok = True
        finally:
            left = [c for c in list(live_clients) if not c.is_closed and id(c) not in open_before]
            for client in left:
                with contextlib.suppress(Exception):
                    client.close()
        if ok and left:
            pytest.fail(f"{page.path}: the page left {len(left)} client(s) open; close what you open")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", _page_params())
def test_page(page: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_page(page, tmp_path, monkeypatch)
