"""The Key/Value and Object Store examples, run as users run them, against a real
JetStream server (each must exit 0 and print what it promises)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from authkit import run_example_ok

from natsync.testing import NATSServer


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        yield srv


def test_feature_flags(server: NATSServer) -> None:
    out = run_example_ok("kv_feature_flags.py", {"NATS_URL": server.url})
    for n in range(3):
        assert f"worker {n}: started with [('feature.beta', b'off'), ('feature.dark_mode', b'on')]" in out
        assert f"worker {n}: feature.beta is now on" in out
    assert "all 3 workers saw feature.beta=on: True" in out


def test_leader_election(server: NATSServer) -> None:
    out = run_example_ok("kv_leader_election.py", {"NATS_URL": server.url})
    assert out.count(" is leader (revision ") == 3
    assert "one leader at a time, 3 terms: True" in out


def test_file_transfer(server: NATSServer) -> None:
    out = run_example_ok("obj_file_transfer.py", {"NATS_URL": server.url})
    assert "uploaded reports/2024.bin: 8388608 bytes in 64 chunks, digest SHA-256=" in out
    assert "listed: reports/2024.bin (8388608 bytes, yearly report)" in out
    assert "downloaded 8388608 bytes; identical: True" in out
    assert "after delete: ObjectNotFoundError" in out
