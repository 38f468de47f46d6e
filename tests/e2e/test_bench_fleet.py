"""bench/fleet.py still runs against a real systemd (a small run; figures never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_fleet_benchmark_measures_cold_starts_on_pc2(agentkit_bin):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "fleet.py"), "--host", "pc2", "--modes", "native",
                             "--rounds", "1", "--no-deps-cold", "--json", "--agentkit-bin", str(agentkit_bin)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["failures"] == []
    cold = report["cold_start"]["native"]
    assert cold["agent-cold"]["all"]["n"] == 14 and cold["agent-cold"]["failed"] == 0  # pc2's optional agents
    assert cold["chain"]["all"]["n"] == 1
    memory = report["memory"]["native"]
    assert (memory["idle"]["agents"], memory["active"]["agents"]) == (8, 22)


def test_status_service_benchmark_measures_the_reference_mainpc(agentkit_bin):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "status_service.py"), "--rest", "1", "--scrape", "2",
                             "--requests", "10", "--wakes", "2", "--json", "--agentkit-bin", str(agentkit_bin)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["agents"] == 55
    assert report["/metrics"]["n"] == report["/health"]["n"] == 10 and report["event_delay"]["n"] == 2
