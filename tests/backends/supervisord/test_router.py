"""agentkit-router under supervisord, as `agentkit up` runs it: the manifest's router section becomes
the program agentkit-router, in front of two stand-in backends (tests/router/standin.py), reached with
the official openai client. The cloud key is read from router.cloud.api_key_file, which only its owner
may read: `up` reports a key file readable by others, and runs the router once a second `up` finds
it fixed; without the file the router runs without a key, and says so. supervisord, the router and the stand-ins are real; nothing is mocked."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import xmlrpc.client
from pathlib import Path

import openai
import pytest
from helpers import http_get, wait_for
from router.standin import StandinBackend

from agentkit.backends.supervisord import run as supervisor_run

from .harness import free_ports, listening_inodes, session_pids
from .test_up import AGENTKIT, run

KEY = "sk-test-supervised-router-7c1e"
ROUTER = "agentkit-router"


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture
def lab(tmp_path):
    """A fleet of one essential agent and the router on host lab, its backends two stand-ins."""
    status_port, base, router_port = free_ports(3)
    local = StandinBackend("local").start()
    cloud = StandinBackend("cloud").start()
    root = tmp_path / "agents"
    root.mkdir()
    key = tmp_path / "secrets" / "cloud.key"
    key.parent.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
        name: routerlab
        hosts:
          lab: {{address: 127.0.0.1, status: {{port: {status_port}}}}}
        router:
          host: lab
          port: {router_port}
          bind: 127.0.0.1
          local: {{url: "{local.url}", model: local-small}}
          cloud: {{url: "{cloud.url}", model: cloud-large, api_key_file: {key}}}
        """))
    (root / "lab.yaml").write_text(textwrap.dedent(f"""\
        host: lab
        agents:
          Base:
            essential: true
            command: [python3, -m, http.server, --bind, 127.0.0.1, "{{port}}"]
            port: {base}
        """))
    state = tmp_path / "state"
    lab = {"root": root, "state": state, "key": key, "local": local, "cloud": cloud, "port": router_port,
           "status": status_port}
    try:
        yield lab
    finally:
        # Whatever happened: agentkit down, then supervisord's whole session (the router and the
        # agents are in it, each in a process group of its own) the hard way.
        supervisord = _pid(state / "supervisord.pid")
        subprocess.run([AGENTKIT, "-m", str(root), "down", "--backend", "supervisord", "--host", "lab",
                        "--state-dir", str(state), "--timeout", "30"], capture_output=True, timeout=60)
        if supervisord is not None and _alive(supervisord):
            for pid in session_pids(supervisord):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        local.close()
        cloud.close()


def up(lab, check: bool = True) -> subprocess.CompletedProcess:
    return run("up", "--backend", "supervisord", "--host", "lab", "--state-dir", str(lab["state"]),
               "--timeout", "60", manifest=lab["root"], check=check)


def router_info(lab) -> dict:
    return supervisor_run.rpc(str(lab["state"])).supervisor.getProcessInfo(ROUTER)


def client(lab) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{lab['port']}/v1", api_key="not-the-cloud-key",
                         max_retries=0, timeout=15)


def ask(lab, preference: str) -> tuple[str, str]:
    """One chat completion through the router to the backend asked for: (X-Agentkit-Backend, reply)."""
    raw = client(lab).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": f"hello {preference}"}],
        metadata={"preference": preference})
    return raw.headers["x-agentkit-backend"], raw.parse().choices[0].message.content


def router_log(lab) -> str:
    try:
        return (lab["state"] / "logs" / f"{ROUTER}.log").read_text(errors="replace")
    except OSError:
        return ""


def test_up_runs_the_router_and_down_stops_it(lab):
    key = lab["key"]
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    result = up(lab)
    assert f"lab: the router (router: in fleet.yaml) listens on 127.0.0.1:{lab['port']}" in result.stdout
    assert "not run under supervisord" not in result.stdout + result.stderr
    info = router_info(lab)
    assert info["statename"] == "RUNNING", info
    pid = info["pid"]
    conf = (lab["state"] / "supervisord.conf").read_text()
    assert f"--cloud-api-key-file {key}" in conf and KEY not in conf

    # The official client, through the router, to the local stand-in ...
    backend, reply = ask(lab, "local")
    assert backend == "local" and reply == "local: hello local"
    assert [r["json"]["messages"][-1]["content"] for r in lab["local"].requests if r["path"] ==
            "/v1/chat/completions"] == ["hello local"]
    assert not any("authorization" in r["headers"] and KEY in r["headers"]["authorization"]
                   for r in lab["local"].requests)
    # ... and to the cloud one, with the key from the file.
    backend, reply = ask(lab, "cloud")
    assert backend == "cloud" and reply == "cloud: hello cloud"
    chats = [r for r in lab["cloud"].requests if r["path"] == "/v1/chat/completions"]
    assert len(chats) == 1 and chats[0]["headers"]["authorization"] == f"Bearer {KEY}"

    # The router is not an agent: agentkit status and the status service list the agents only.
    status = run("status", "--backend", "supervisord", "--host", "lab", "--state-dir", str(lab["state"]),
                 "--json", manifest=lab["root"])
    assert [a["name"] for a in json.loads(status.stdout)["agents"]] == ["Base"]
    health = wait_for(lambda: _health(lab["status"]), "the status service's /health")
    assert [a["name"] for a in health["agents"]] == ["Base"]
    assert KEY not in router_log(lab)

    down = run("down", "--backend", "supervisord", "--host", "lab", "--state-dir", str(lab["state"]),
               manifest=lab["root"])
    assert "supervisord and every agent stopped" in down.stdout
    assert not _alive(pid) and not listening_inodes(lab["port"])


def test_up_reports_a_missing_or_readable_key_file_and_runs_the_router_once_it_is_fixed(lab):
    key = lab["key"]
    # No key file (yet): the router runs without a key, as under systemd, and says so.
    up(lab)
    assert router_info(lab)["statename"] == "RUNNING"
    assert f"the cloud API key file {key} does not exist: starting without a cloud key" in router_log(lab)
    status, body = http_get(lab["port"], "/health")
    assert status == 200 and json.loads(body)["backends"]["cloud"]["api_key"] == "none"
    run("down", "--backend", "supervisord", "--host", "lab", "--state-dir", str(lab["state"]), manifest=lab["root"])
    lab["cloud"].clear_requests()  # its probes; the refused router below must send none
    lab["local"].clear_requests()

    # Readable by its group and others: refused, naming the file and the fix.
    key.write_text(KEY + "\n")
    key.chmod(0o644)
    failed = up(lab, check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    said = (f"{ROUTER}: the cloud API key file {key} is readable by its group and others (mode 0644): "
            f"chmod 600 {key}")
    # FATAL once supervisord gave up; on a busy machine the router may take longer than startsecs
    # to exit, and up sees it exit after RUNNING: either way the router's own words are shown.
    assert re.search(rf"agentkit: {ROUTER} did not start: (FATAL: |running, but not ready: )", failed.stderr) \
        and said in failed.stderr, failed.stderr
    assert said in router_log(lab)
    assert KEY not in failed.stdout + failed.stderr + router_log(lab)
    assert router_info(lab)["statename"] in ("FATAL", "BACKOFF", "EXITED", "STARTING")
    assert not lab["cloud"].requests and not lab["local"].requests  # it never got as far as a probe

    # Fixed: the next up starts it again, and the cloud gets the key.
    key.chmod(0o600)
    result = up(lab)
    assert f"lab: the router (router: in fleet.yaml) listens on 127.0.0.1:{lab['port']}" in result.stdout
    assert router_info(lab)["statename"] == "RUNNING"
    backend, _ = ask(lab, "cloud")
    assert backend == "cloud"
    assert [r["headers"].get("authorization") for r in lab["cloud"].requests
            if r["path"] == "/v1/chat/completions"] == [f"Bearer {KEY}"]

    pid = router_info(lab)["pid"]
    supervisord = _pid(lab["state"] / "supervisord.pid")
    run("down", "--backend", "supervisord", "--host", "lab", "--state-dir", str(lab["state"]), manifest=lab["root"])
    lab["cloud"].clear_requests()  # its probes; the refused router below must send none
    lab["local"].clear_requests()
    assert not _alive(pid) and not _alive(supervisord)
    with pytest.raises((OSError, xmlrpc.client.Error)):
        router_info(lab)


def _health(port: int) -> dict | None:
    try:
        code, body = http_get(port, "/health", timeout=10)
    except OSError:
        return None
    return json.loads(body) if code in (200, 503) else None
