"""Shared pieces of the JetStream tests: one ``nats-server -js`` per test module, a client
and a JetStream context per test (or per module), and fresh memory streams.

The fixtures are used by importing them by name into a test module and listing them in
its ``__all__`` (as ``conftest.py`` does with natsync's plugin)::

    from jskit import js, js_server, nc

    __all__ = ["js", "js_server", "nc"]

A module that defines a fixture of the same name itself (for another scope or timeout)
uses its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import natsync
from natsync.js import JetStream
from natsync.js.api import StorageType
from natsync.testing import NATSServer

JS_TIMEOUT = 5.0  # the JetStream API timeout of the ``js`` fixtures


@pytest.fixture(scope="module")
def js_server() -> Iterator[NATSServer]:
    """One nats-server with JetStream for the whole test module."""
    with NATSServer(jetstream=True) as server:
        yield server


@pytest.fixture
def nc(js_server: NATSServer) -> Iterator[natsync.Client]:
    """A client of ``js_server`` for one test, closed after it."""
    with natsync.connect(js_server.url) as client:
        yield client


@pytest.fixture
def js(nc: natsync.Client) -> JetStream:
    """The JetStream context of ``nc`` (API timeout :data:`JS_TIMEOUT`)."""
    return nc.jetstream(timeout=JS_TIMEOUT)


@pytest.fixture(scope="module", name="nc")
def module_nc(js_server: NATSServer) -> Iterator[natsync.Client]:
    """Fixture ``nc`` shared by every test of the module (import it as ``module_nc``)."""
    with natsync.connect(js_server.url) as client:
        yield client


@pytest.fixture(scope="module", name="js")
def module_js(nc: natsync.Client) -> JetStream:
    """Fixture ``js`` of the module-wide ``nc``, with the default API timeout (import it
    as ``module_js``)."""
    return nc.jetstream()


@contextmanager
def memory_stream(
    js: JetStream, name: str, subjects: list[str], *, strict_delete: bool = False, **fields: Any
) -> Iterator[str]:
    """Add a memory stream *name* on *subjects* (more settings in *fields*), yield its
    name, and delete it afterwards.  A failed delete (the test deleted it already) is
    ignored unless *strict_delete*."""
    js.add_stream(name=name, subjects=subjects, storage=StorageType.MEMORY, **fields)
    try:
        yield name
    finally:
        try:
            js.delete_stream(name)
        except natsync.NatsError:
            if strict_delete:
                raise
