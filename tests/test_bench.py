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
    assert results[0]["files"] == 143  # 77 services, the router, 53 sockets, 2 targets, 6 slices, 2 x 2 re-arm templates
    assert all(r["total_s"]["median"] > 0 for r in results)
