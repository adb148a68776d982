"""The documentation example collector itself: parsing, URL rewriting, output matching,
and running small pages (a passing one, failing ones) against a real nats-server."""

from __future__ import annotations

from pathlib import Path

import pytest
from docpages import DocPageError, match_output, parse_page, rewrite_urls
from test_docs import DocBlockError, run_page

PAGE = """\
Title
=====

.. natsync-test: server=token:mytoken
.. natsync-test: env NATS_TOKEN=mytoken

Text.

.. code-block:: python
   :caption: first

   import natsync
   nc = natsync.connect("nats://mytoken@localhost:4222")

.. natsync-test-setup
   sub = nc.subscribe("greet")

.. code-block:: python

   nc.publish("greet", b"hi")
   assert sub.next_msg(timeout=2).data == b"hi"

.. natsync-test: skip a fragment of someone's settings.py

.. code-block:: python

   raise SystemExit("never run")

::

    not code

.. code-block:: console

   $ pip install natsync
   $ natsync --version

.. natsync-test: check-output

.. code-block:: console

   $ natsync pub greet hello \\
       --count 1
   Published ...

.. code-block:: python

   nc.close()
"""


def test_parse_declarations_blocks_and_lines() -> None:
    page = parse_page(Path("p.rst"), PAGE)
    assert page.server == "token" and page.token == "mytoken"
    assert page.env == {"NATS_TOKEN": "mytoken"}
    kinds = [(b.kind, b.line, b.skip is not None) for b in page.blocks]
    assert kinds == [
        ("python", 12, False),
        ("setup", 16, False),
        ("python", 20, False),
        ("python", 27, True),
        ("console", 35, False),
        ("console", 42, False),
        ("python", 48, False),
    ]
    assert page.blocks[0].code.startswith("import natsync\n")  # option line and indent gone
    console = page.blocks[4]
    assert [c.text for c in console.commands] == ["natsync --version"]  # pip is not run
    checked = page.blocks[5]
    assert checked.check_output
    assert [(c.line, c.text, c.expected) for c in checked.commands] == [
        (42, "natsync pub greet hello --count 1", ["Published ..."])
    ]
    assert page.runnable


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (".. natsync-test: server=mtls\n", "unknown server"),
        (".. natsync-test: frobnicate\n", "unknown natsync-test declaration"),
        (".. natsync-test: env =x\n", "env NAME=VALUE"),
        (".. natsync-test: skip\n\n.. code-block:: python\n\n   pass\n", "needs a reason"),
        (".. code-block:: python\n\n   pass\n\n.. natsync-test: server=none\n", "before the first block"),
        (".. natsync-test: skip why\n", "not followed by a block"),
        (".. natsync-test: check-output\n\n.. code-block:: python\n\n   pass\n", "console blocks only"),
    ],
    ids=["server", "unknown", "env", "skip-reason", "late-server", "dangling", "check-python"],
)
def test_bad_declarations_name_page_and_line(text: str, message: str) -> None:
    with pytest.raises(DocPageError, match=message) as info:
        parse_page(Path("bad.rst"), text)
    assert str(info.value).startswith("bad.rst")


def test_page_without_examples_is_not_runnable() -> None:
    assert not parse_page(Path("p.rst"), "T\n=\n\n.. code-block:: text\n\n   x\n").runnable


def test_rewrite_urls() -> None:
    hp = "127.0.0.1:41234"
    assert rewrite_urls('connect("nats://127.0.0.1:4222")', hp) == f'connect("nats://{hp}")'
    assert rewrite_urls("localhost:4222", hp) == hp
    assert rewrite_urls('"nats://mytoken@localhost"', hp) == f'"nats://mytoken@{hp}"'
    assert rewrite_urls("nats://localhost,nats://127.0.0.1/", hp) == f"nats://{hp},nats://{hp}/"
    assert rewrite_urls('connect("mytoken@localhost")', hp) == f'connect("mytoken@{hp}")'
    assert rewrite_urls("nats://localhost:5222 localhost", hp) == "nats://localhost:5222 localhost"
    assert rewrite_urls("nats://127.0.0.1:4222", None) == "nats://127.0.0.1:4222"


def test_match_output() -> None:
    out = "Connected\nPublished 5 bytes to greet\nbye\n"
    assert match_output(["Published ... bytes", "bye"], out) is None
    assert match_output(["...", "bye"], out) is None
    assert match_output(["bye", "Published ..."], out) is not None  # order matters
    assert "nothing" in (match_output(["nothing"], out) or "")


def test_run_page_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_page(parse_page(Path("p.rst"), PAGE), tmp_path, monkeypatch)


def test_run_page_failure_names_page_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = PAGE.replace('.data == b"hi"', '.data == b"x"')
    with pytest.raises(DocBlockError) as info:
        run_page(parse_page(Path("p.rst"), text), tmp_path, monkeypatch)
    message = str(info.value)
    assert message.startswith("p.rst:20: python block failed")
    assert 'File "p.rst", line 21' in message  # the traceback points into the page


def test_run_page_console_output_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = PAGE.replace("   Published ...", "   Nothing like this")
    with pytest.raises(DocBlockError, match=r"p.rst:42: .*expected line not found"):
        run_page(parse_page(Path("p.rst"), text), tmp_path, monkeypatch)


def test_run_page_failing_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "T\n=\n\n.. code-block:: console\n\n   $ natsync no-such-command\n"
    with pytest.raises(DocBlockError, match=r"p.rst:6: `\$ natsync no-such-command` exited [1-9]"):
        run_page(parse_page(Path("p.rst"), text), tmp_path, monkeypatch)


def test_run_page_closes_what_a_failing_page_left_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        "T\n=\n\n.. code-block:: python\n\n   import natsync\n"
        '   nc = natsync.connect("nats://localhost:4222")\n   1 / 0\n'
    )
    with pytest.raises(DocBlockError, match="ZeroDivisionError"):
        run_page(parse_page(Path("p.rst"), text), tmp_path, monkeypatch)
    # the autouse thread check of conftest fails this test if the client was left open


def test_run_page_that_leaves_a_client_open_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "T\n=\n\n.. code-block:: python\n\n   import natsync\n"
        '   nc = natsync.connect("nats://localhost:4222")\n'
    )
    with pytest.raises(pytest.fail.Exception, match="left 1 client"):
        run_page(parse_page(Path("p.rst"), text), tmp_path, monkeypatch)
