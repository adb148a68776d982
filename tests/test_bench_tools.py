"""The measuring tools in bench/ keep working: cost.py's scenarios run (without valgrind),
and bench.py's table reports failed runs and paired ratios honestly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("scenario", ["request", "respond", "publish"])
def test_cost_scenarios_run(scenario: str) -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH / "cost.py"), scenario, "--run", "300"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


@pytest.fixture
def bench() -> ModuleType:
    pytest.importorskip("nats")  # bench.py runs nats-py beside natsync
    sys.path.insert(0, str(BENCH))
    try:
        import bench as mod
    finally:
        sys.path.remove(str(BENCH))
    return mod


def _req(bench: ModuleType, ns: list[dict[str, object]], py: list[dict[str, object]]) -> str:
    sc = bench.Scenario("req_p50", "request/reply p50", "p50", "µs", False, dict, dict, target=0.8)
    sc.results["natsync"] = ns
    sc.results["nats-py"] = py
    return str(bench.build_table([sc], len(ns)).splitlines()[-1])


def test_bench_table_shows_failed_runs_and_the_paired_ratio(bench: ModuleType) -> None:
    row = _req(bench, [{"p50": 200.0}, {"p50": 210.0}, {"p50": 260.0}],
               [{"p50": 300.0}, {"error": "NoRespondersError: x"}, {"p50": 310.0}])
    assert "1 of 3 runs FAILED: NoRespondersError" in row
    assert "0.69× (paired 0.75×)" in row  # 210/305, and median(200/300, 260/310)
    assert row.endswith("| yes |")
    # a natsync run that failed fails its target, whatever the others gave
    row = _req(bench, [{"p50": 200.0}, {"error": "Boom"}], [{"p50": 300.0}, {"p50": 300.0}])
    assert "1 of 2 runs FAILED: Boom" in row and row.endswith("| no (FAILED) |")
    row = _req(bench, [{"error": "Boom"}], [{"p50": 300.0}])
    assert "FAILED (Boom)" in row and row.endswith("| no (FAILED) |")
