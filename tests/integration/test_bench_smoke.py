"""The load benchmark's quickest mode works, for this daemon and for the
lab's floor (no timings checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.lab import list_namespaces

ROOT = Path(__file__).resolve().parents[2]


def test_bench_load_smoke_runs_every_scenario(lab_available: None, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bench_load.py"), "smoke", "--impl", "ours",
         "--floor", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"client-burst", "server-burst", "churn", "addr", "startup",
                            "served-rate"}
    for name, by_impl in results.items():
        floored = name in ("client-burst", "server-burst", "addr")
        assert list(by_impl) == (["ours", "floor"] if floored else ["ours"]), name
        for impl, result in by_impl.items():
            assert "error" not in result, (name, impl, result)
    # The floor does sspi's kernel work of each burst: every connection gets
    # its extra subflow, every duplicate join is closed.
    floor = results["client-burst"]["floor"]
    assert floor["served"] == floor["connections"] == 20
    floor = results["server-burst"]["floor"]
    assert floor["duplicate_joins"] == 20 and floor["closed"] == 20
    # ... and addr_adv's: every address got its endpoint.
    floor = results["addr"]["floor"]
    assert floor["endpoint_added"] == floor["rounds"]
    burst = results["client-burst"]["ours"]
    assert burst["opened"] == burst["connections"] == 20
    assert burst["served"] == 20 and burst["served_pct"] == 100.0
    assert burst["p50_ms"] is not None and burst["cpu_us_per_conn"] > 0
    server = results["server-burst"]["ours"]
    assert server["duplicate_joins"] == 20 and server["closed"] == 20
    churn = results["churn"]["ours"]
    assert churn["connections"] > 0
    assert churn["events_by_type"]["CREATED"] + churn["watcher_drops"] >= churn["connections"]
    assert churn["daemon_alive"] is True and churn["peak_rss_kb"] > 0
    addr = results["addr"]["ours"]
    assert addr["endpoint_added"] == addr["rounds"]
    startup = results["startup"]["ours"]
    assert startup["idle_rss_kb"] > 0 and startup["start_cpu_ms"] > 0
    assert startup["bytecode"] is True
    step = results["served-rate"]["ours"]["steps"][0]
    assert step["served"] == step["connections"]
    # Every lab namespace the benchmark made is gone.
    assert not [ns for ns in list_namespaces() if ns.startswith(f"mptcpd-lab-{proc.pid}-")]


def run_bench(tmp_path: Path, script: str, *args: str) -> dict[str, Any]:
    """Run ``bench/<script>`` with ``args`` (bounded); the results of its JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args,
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    results: dict[str, Any] = json.loads(out.read_text())["results"]
    return results


def test_bench_pms_smoke_serves_every_connection(lab_available: None, tmp_path: Path) -> None:
    results = run_bench(tmp_path, "bench_pms.py", "--conns", "10", "--runs", "1")
    assert set(results) == {"fullmesh", "ndiffports"}
    for name, (run,) in results.items():
        assert "error" not in run, (name, run)
        assert run["served"] == 10 and run["errors"] == 0, (name, run)
        assert run["p50_ms"] is not None and run["cpu_us_per_conn"] > 0


def test_bench_overrun_smoke_reports_each_plugin(lab_available: None, tmp_path: Path) -> None:
    """The overrun soak's quickest form: a short flood, a few connections."""
    results = run_bench(tmp_path, "bench_overrun.py", "--plugins", "sspi,fullmesh",
                        "--server", "--conns", "10", "--rate", "10", "--deadline", "5",
                        "--flooders", "1", "--flood-seconds", "1")
    assert set(results) == {"sspi", "fullmesh", "sspi-server"}
    for name, (run,) in results.items():
        assert "error" not in run, (name, run)
        assert run["daemon_alive"] and run["log_lines"] > 0, (name, run)
    assert results["sspi-server"][0]["duplicates_left"] >= 0  # measured while held
    for name in ("sspi", "fullmesh"):
        assert results[name][0]["opened"] == 10
    assert results["sspi"][0]["served"] == 10  # one extra subflow each, lost events or not


def test_bench_overrun_flap_smoke_counts_each_connections_subflows(
        lab_available: None, tmp_path: Path) -> None:
    """The address-flap soak's quickest form: held connections, one flap or
    two during a short flood; each connection's subflows counted (sspi lost
    its join for good at each flap before)."""
    results = run_bench(tmp_path, "bench_overrun.py", "--flap", "--plugins", "sspi",
                        "--conns", "10", "--rate", "20", "--flooders", "1",
                        "--flood-seconds", "1.5")
    (run,) = results["sspi"]
    assert "error" not in run, run
    assert run["daemon_alive"] and run["flaps"] >= 1 and run["held"] == 10, run
    assert run["exact"] == 10, run  # each has its join back, and one only
