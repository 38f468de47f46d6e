"""A real Prometheus (Debian's prometheus package) scrapes the reference fleet through the
configuration `agentkit render` writes, and an alert from the rendered rules fires.

Both hosts of the reference fleet run here, each in a systemd container of its own;
the containers share this machine's network namespace, so both status services (mainpc
on 8202, pc2 on 9202) and the router (8090) are on 127.0.0.1, which is what `--address`
tells render.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import wait_for

from . import test_fleet
from .test_fleet import install, request, show

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
LOCAL = ["--address", "mainpc=127.0.0.1", "--address", "pc2=127.0.0.1"]
CRASHING = ("AuthenticationAgent", 7116)  # optional on pc2, nothing depends on it

pytestmark = pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK) and not os.environ.get("CI"),
                                reason="needs Debian's prometheus package (/usr/bin/prometheus)")


@pytest.fixture(autouse=True)
def _bin(agentkit_bin):
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def api(port: int, path: str, **query) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus on the configuration render wrote; stopped (and its data removed) after."""
    started = []

    def start(config: Path) -> int:
        assert os.access(PROMETHEUS, os.X_OK), f"{PROMETHEUS} is missing: install Debian's prometheus package"
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        process = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                    f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        started.append((process, log))

        def ready():
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        wait_for(ready, "Prometheus to be ready", timeout=60, interval=0.2)
        return port

    yield start
    for process, log in started:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_prometheus_scrapes_both_hosts_and_an_alert_fires_for_a_crash_looping_agent(
        container_factory, prometheus, tmp_path):
    mainpc = container_factory(hostname="mainpc")
    pc2 = container_factory(hostname="pc2")
    install(mainpc, REPO / "agents", "mainpc", *LOCAL)
    install(pc2, REPO / "agents", "pc2", *LOCAL)
    out = tmp_path / "build"
    rendered = subprocess.run([test_fleet.AGENTKIT, "-m", str(REPO / "agents"), *LOCAL, "render", "--out", str(out),
                               "--no-programs"], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    port = prometheus(out / "prometheus" / "prometheus.yml")

    # Every target up: both status services and the router.
    def targets_up():
        active = api(port, "targets")["activeTargets"]
        return len(active) == 3 and all(t["health"] == "up" for t in active) and active
    active = wait_for(targets_up, "every target up in Prometheus", timeout=90, interval=1)
    assert sorted((t["labels"]["job"], t["labels"].get("host", "")) for t in active) == [
        ("agentkit-router", "mainpc"), ("agentkit-status", "mainpc"), ("agentkit-status", "pc2")]
    # agentkit_agent_* series for all 77 agents, dormant ones included.
    agents = api(port, "query", query="count(count by (host, agent) (agentkit_agent_state))")["result"]
    assert agents and agents[0]["value"][1] == "77"
    dormant = api(port, "query", query='count(agentkit_agent_state{state="dormant"} == 1)')["result"]
    assert dormant[0]["value"][1] == "53"
    rules = {r["name"] for g in api(port, "rules")["groups"] for r in g["rules"]}
    assert {"AgentkitEssentialAgentDown", "AgentkitAgentStartLimitHit", "AgentkitColdStartSlow"} <= rules

    # An agent that crashes at once, at every start: systemd gives up on it, and the alert fires.
    name, agent_port = CRASHING
    unit = f"agentkit-{name}.service"
    assert request(agent_port, {"action": "ping"})["ok"]  # woken: it runs

    def given_up():
        if show(pc2, unit, "ActiveState")["ActiveState"] == "active":
            pc2.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", unit, check=False)
        return show(pc2, f"agentkit-{name}.socket", "Result")["Result"] == "service-start-limit-hit"
    wait_for(given_up, f"systemd to give up on {name}", timeout=120, interval=0.2)

    def firing():
        alerts = api(port, "alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "AgentkitAgentStartLimitHit"
                and a["labels"].get("agent") == name and a["state"] == "firing"]
    alert = wait_for(firing, "AgentkitAgentStartLimitHit to fire", timeout=120, interval=1)[0]
    assert alert["labels"]["host"] == "pc2" and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"].endswith("#agentkitagentstartlimithit")
    print(f"\nalert firing: {alert['labels']['alertname']} {name} on pc2 since {alert['activeAt']}")
