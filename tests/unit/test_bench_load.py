"""bench/bench_load.py's own logic (the scenarios run in the bench smoke
test, against the kernel)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "bench_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


def test_runs_combine_into_medians_with_every_value_kept(bench_load: ModuleType) -> None:
    runs = [
        {"p50_ms": 60.0, "cpu_us_per_conn": 90.0, "served": 1000, "daemon_alive": True,
         "steps": [1], "p90_ms": None},
        {"p50_ms": 40.0, "cpu_us_per_conn": 70.0, "served": 998, "daemon_alive": False,
         "steps": [2], "p90_ms": 5.0},
        {"error": "lab failed"},
        {"p50_ms": 50.0, "cpu_us_per_conn": 110.0, "served": 999, "daemon_alive": True,
         "steps": [3], "p90_ms": 7.0},
    ]
    out = bench_load.combine(runs)
    assert out["p50_ms"] == 50.0 and out["cpu_us_per_conn"] == 90.0 and out["served"] == 999
    assert out["each"]["p50_ms"] == [60.0, 40.0, 50.0]
    # Not numbers in every run: as the first good run gave them.
    assert out["daemon_alive"] is True and out["steps"] == [1] and out["p90_ms"] is None
    assert "p90_ms" not in out["each"] and "daemon_alive" not in out["each"]
    assert (out["runs"], out["failed_runs"]) == (4, 1)
    assert "error" not in out


def test_one_run_is_itself_and_all_failed_is_the_first_error(bench_load: ModuleType) -> None:
    one = {"p50_ms": 1.0}
    assert bench_load.combine([one]) is one
    out = bench_load.combine([{"error": "first"}, {"error": "second"}])
    assert out["error"] == "first" and (out["runs"], out["failed_runs"]) == (2, 2)


def test_refusals_count_the_repeats_a_line_held_back(bench_load: ModuleType) -> None:
    log = "\n".join([
        "mptcpd[1]: add_subflow: invalid token: Invalid argument",
        "mptcpd[1]: add_subflow: connect error: -107: Transport endpoint is not connected",
        "mptcpd[1]: add_subflow: invalid token: Invalid argument",
        "mptcpd[1]: add_subflow: invalid token: Invalid argument (5 more time(s) within 10 s)",
    ])
    assert bench_load.invalid_tokens(log) == 7
    assert bench_load.refusals(log, "transport endpoint is not connected") == 1
    assert bench_load.refusals("", "invalid token") == 0
