"""Liveness on a real systemd 252: a program that hangs (accepts, never answers its health
path) is killed and restarted within interval x failures, and the restart is counted; a
dormant agent is never probed."""

from __future__ import annotations

import time
from pathlib import Path

from helpers import EventStream, http_get, metric, wait_for

from . import test_fleet
from .test_byo import manifest, put
from .test_fleet import install, show

PROGRAMS = Path(__file__).resolve().parent / "programs"
INTERVAL, FAILURES = 1.0, 2


def test_a_hung_agent_is_restarted_and_a_dormant_one_never_probed(container_factory, agentkit_bin):
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")
    container = container_factory(hostname="lab")
    put(container, PROGRAMS, "/srv/programs")
    root = manifest(container, f"""\
        Hangs:
          essential: true
          command: [/srv/programs/hangs_on_usr1.py, "{{port}}"]
          port: 17201
          liveness: {{http: /, interval: {INTERVAL:g}s, failures: {FAILURES}}}
        Later:
          command: [/srv/programs/hangs_on_usr1.py, "{{port}}"]
          activation: proxy
          port: 17202
          idle_stop: 5min
          liveness: {{tcp: true, interval: {INTERVAL:g}s}}
        """)
    install(container, Path(root), "lab")
    assert show(container, "agentkit-Hangs-live.service", "ActiveState")["ActiveState"] == "active"
    # Dormant: its liveness unit does not run, and nothing connects to it.
    assert show(container, "agentkit-Later-live.service", "ActiveState")["ActiveState"] == "inactive"
    assert http_get(17201)[0] == 200

    with EventStream(8202) as stream:
        before = show(container, "agentkit-Hangs.service", "MainPID")["MainPID"]
        hung_at = time.monotonic()
        container.systemctl("kill", "--signal=SIGUSR1", "--kill-who=main", "agentkit-Hangs.service")
        wait_for(lambda: show(container, "agentkit-Hangs.service", "NRestarts")["NRestarts"] == "1",
                 "systemd to restart the hung agent", timeout=30, interval=0.1)
        took = time.monotonic() - hung_at
        stream.wait("Hangs", "crash")
        stream.wait("Hangs", "restart")
    wait_for(lambda: show(container, "agentkit-Hangs.service", "ActiveState")["ActiveState"] == "active",
             "the agent to be active again", timeout=30)
    assert show(container, "agentkit-Hangs.service", "MainPID")["MainPID"] != before
    assert http_get(17201)[0] == 200  # the new process answers
    journal = container.journal("agentkit-Hangs-live.service")
    assert "stopped answering: killing its main process" in journal, journal
    code, body = http_get(8202, "/metrics")
    assert metric(body.decode(), "agentkit_agent_restarts_total", agent="Hangs") == 1
    # Within interval x failures of the first probe that met the hang (which comes within an
    # interval), plus the restart itself (RestartSec= 200ms and the program's start).
    assert took < INTERVAL * (FAILURES + 1) + 2, took
    print(f"\nhung agent restarted {took:.2f} s after it hung (interval {INTERVAL:g} s x {FAILURES} failures)")

    # Woken, the optional agent's liveness runs with it.
    assert http_get(17202)[0] == 200
    wait_for(lambda: show(container, "agentkit-Later-live.service", "ActiveState")["ActiveState"] == "active",
             "Later's liveness to run once it runs", timeout=30)
