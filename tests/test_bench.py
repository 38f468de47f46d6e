"""The benchmark still runs (a functional smoke test; its figures are never asserted)."""

import json
import subprocess
import sys

from conftest import REPO


def test_render_benchmark_runs_on_a_small_generated_fleet():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "render.py"), "--sizes", "300", "--repeat", "1",
                             "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert [r["fleet"] for r in results] == ["reference", "generated-300"]
    assert [r["agents"] for r in results] == [77, 300]
    # 77 services, the router and its socket, 53 sockets, 2 targets, 6 slices, 2 x 2 re-arm templates,
    # 2 x 2 status units
    assert results[0]["files"] == 148
    assert all(r["total_s"]["median"] > 0 for r in results)


def test_router_decision_benchmark_runs():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "router_decision.py"), "--decisions", "20000",
                             "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert results["decide"]["decisions"] == results["select_backend"]["decisions"] == 20000
    assert results["select_backend"]["per_second"] > 0


def test_router_failover_benchmark_runs():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "router_failover.py"), "--rounds", "1",
                             "--rate", "50", "--before", "0.3", "--after", "0.5", "--modes", "down,error",
                             "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert [(s["failing"], s["mode"]) for s in summary] == [("cloud", "down"), ("cloud", "error"),
                                                             ("local", "down"), ("local", "error")]
    assert all(s["requests"] == 40 for s in summary)


def test_router_abuse_benchmark_runs():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "router_abuse.py"), "--idle", "50", "--cap", "3",
                             "--flood", "20", "--heads", "5", "--json"], capture_output=True, text=True, timeout=300,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    rows = {row["scenario"]: row for row in json.loads(result.stdout)}
    assert rows["idle 50"]["new client"] == "200", rows["idle 50"]
    assert sorted(rows) == ["5 unfinished heads of 938 KiB", "bodies and heads", "idle 50", "slow clients"]


def test_supervisord_fleet_benchmark_runs():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "fleet_supervisord.py"), "--rounds", "1", "--json"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["failures"] == []
    assert report["summary"]["agent cold"]["n"] == 53 and report["summary"]["chain"]["n"] == 1


def test_readiness_benchmark_runs_under_supervisord():
    """Every readiness kind starts and answers, and the chain answers through all three links."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "readiness.py"), "--backend", "supervisord",
                             "--rounds", "2", "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)["supervisord"]
    assert {kind: row["n"] for kind, row in report["kinds"].items()} == {"notify": 2, "port": 2, "http": 2,
                                                                          "command": 2}
    assert report["chain"]["this"]["n"] == 1


def test_gpu_admission_benchmark_runs():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_admission.py"), "--rounds", "1",
                             "--decisions", "200", "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    first = results["first_answer"]
    assert first["room_free"]["n"] == first["with_eviction"]["n"] == first["victim_stop"]["n"] == 1
    assert first["oom"] == 0
    assert results["decisions"]["decisions"] == 200 and results["decisions"]["nvml"]
