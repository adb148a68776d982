"""pytest fixtures that run a real nats-server, registered by natsync's ``pytest11``
entry point (so they are available in any project where natsync is installed).

``nats_server``
    A :class:`~natsync.testing.NATSServer` with default options (no auth, a free
    127.0.0.1 port), started before the test and stopped after it.
``nats_url``
    The URL of ``nats_server``, e.g. ``"nats://127.0.0.1:41234"``.
``nats_js_server``
    A :class:`~natsync.testing.NATSServer` with JetStream enabled (``-js``) and a
    private store directory, started before the test and stopped (store removed)
    after it.

For other options (auth, config, clusters), make your own fixture::

    @pytest.fixture
    def token_server():
        with NATSServer(token="s3cret") as server:
            yield server
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from natsync.testing.server import NATSServer

__all__ = ["nats_js_server", "nats_server", "nats_url"]


@pytest.fixture
def nats_server() -> Iterator[NATSServer]:
    """A nats-server running for the duration of one test."""
    with NATSServer() as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NATSServer) -> str:
    """The client URL of the ``nats_server`` fixture."""
    return nats_server.url


@pytest.fixture
def nats_js_server() -> Iterator[NATSServer]:
    """A nats-server with JetStream (and a private store directory) for one test."""
    with NATSServer(jetstream=True) as server:
        yield server
