"""bench/gateway.py still runs: direct, nginx and the router answer under wrk (a smoke test; no timing is asserted)."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO


def _require(tool: str, package: str) -> None:
    found = shutil.which(tool) or (tool == "nginx" and os.access("/usr/sbin/nginx", os.X_OK))
    if found:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is missing in CI: .ci/run must install Debian's {package} package")
    pytest.skip(f"{tool} is not installed (Debian package {package}); bench/gateway.py needs it")


def test_gateway_benchmark_runs_direct_nginx_and_router():
    _require("wrk", "wrk")
    _require("nginx", "nginx-light")
    argv = [sys.executable, str(REPO / "bench" / "gateway.py"), "--paths", "direct,nginx,router",
            "--seconds", "1", "--rounds", "1", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench stops everything it started on SIGTERM
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"bench/gateway.py did not finish within 240 s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["failures"] == []
    rows = {r["path"]: r for r in report["results"] if not r["stream"]}
    for path in ("direct", "nginx", "router"):
        assert path in rows, f"{path} missing from {sorted(rows)}"
        assert rows[path]["rps"] > 0, rows[path]
        assert rows[path]["errors"] == 0, rows[path]
        assert rows[path]["requests"] > 0, rows[path]
    streamed = {r["path"] for r in report["results"] if r["stream"]}
    assert {"direct", "router"} <= streamed
    assert all(r["errors"] == 0 for r in report["results"])
    assert {t["target"] for t in report["targets"]} == {
        "router_added_p50_under_1ms", "router_added_under_third_of_litellm", "router_throughput_twice_litellm"}
