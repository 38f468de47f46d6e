"""agentkit-router installed as a unit on a real systemd 252: hardened, its cloud key a credential.

The stand-in backends run in this test process on loopback; the container
shares the host's network, so the router inside reaches them and the test
reaches the router.
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path

import pytest

from router.standin import StandinBackend

from . import test_fleet
from .test_fleet import install
from helpers import wait_for

KEY = "sk-e2e-5b1d0c7a-never-in-a-unit-file"
KEY_FILE = "/etc/agentkit/credentials/router-cloud-key"
PORT = 17890


@pytest.fixture(autouse=True)
def _agentkit(agentkit_bin):
    """install() runs the agentkit the containers see (see conftest.agentkit_bin)."""
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")


def router_manifest(tmp_path: Path, local: StandinBackend, cloud: StandinBackend) -> Path:
    root = tmp_path / "router-agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
        name: routerlab
        hosts:
          lab: {{address: 127.0.0.1}}
        defaults:
          command: [agentkit-agent]
          service_type: notify
        router:
          host: lab
          port: {PORT}
          bind: 127.0.0.1
          local: {{url: "{local.url}", model: local-8b}}
          cloud: {{url: "{cloud.url}", model: cloud-large, api_key_file: {KEY_FILE}}}
          gpu: {{capacity: 2G}}
        """))
    (root / "lab.yaml").write_text("host: lab\nagents:\n  Echo: {port: 17891, essential: true}\n")
    return root


def get(path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=10) as response:
        data = response.read()
    return data.decode() if path == "/metrics" else json.loads(data)


def chat(task_type: str) -> tuple[str, dict]:
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                       "metadata": {"task_type": task_type}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["X-Agentkit-Backend"], json.loads(response.read())


def answering():
    try:
        return get("/health")
    except OSError:
        return None


def test_the_router_unit_runs_hardened_and_gets_its_key_as_a_credential(container_factory, tmp_path):
    with StandinBackend("local") as local, StandinBackend("cloud") as cloud:
        manifest = router_manifest(tmp_path, local, cloud)
        container = container_factory(hostname="lab", bind_ro=[str(manifest)])
        install(container, manifest, "lab")
        assert container.systemctl("is-active", "agentkit-router.service").stdout.strip() == "active"

        # No key file yet: the empty default credential lets it start, and it says so.
        health = wait_for(answering, "the router to answer")
        assert health["backends"]["cloud"]["api_key"] == "none"
        assert health["gpu"]["nvml"] is False  # no NVIDIA driver in the container
        journal = container.journal("agentkit-router.service")
        assert "NVML library libnvidia-ml.so.1 not found" in journal and "cloud key none" in journal

        # The key arrives as a root-only file; the router reads it through LoadCredential=.
        container.write_file(KEY_FILE, KEY + "\n", mode=0o600)
        container.systemctl("restart", "agentkit-router.service")
        health = wait_for(lambda: (h := answering()) and
                          h["backends"]["cloud"]["api_key"] == "set" and h, "the router to answer with its key")
        backend, reply = chat("code_generation")
        assert backend == "cloud" and reply["model"] == "cloud-large"
        assert cloud.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"
        assert chat("greeting")[0] == "local"

        # The key is nowhere else: unit file, environment, process environment, journal, metrics, health.
        unit_text = (container.root / "etc/systemd/system/agentkit-router.service").read_text()
        assert "LoadCredential=cloud-api-key:" + KEY_FILE in unit_text and KEY not in unit_text
        props = container.systemctl("show", "agentkit-router.service", "--property=Environment",
                                    "--property=MainPID", "--property=DynamicUser", "--property=ProtectSystem",
                                    "--property=User").stdout
        assert KEY not in props
        values = dict(line.split("=", 1) for line in props.splitlines())
        assert (values["DynamicUser"], values["ProtectSystem"]) == ("yes", "strict")
        pid = values["MainPID"]
        environ = container.run(["cat", f"/proc/{pid}/environ"]).stdout
        assert "CREDENTIALS_DIRECTORY=" in environ and KEY not in environ
        owner = container.run(["stat", "-c", "%U", f"/proc/{pid}"]).stdout.strip()
        assert owner != "root"  # a dynamic user
        assert KEY not in container.journal("agentkit-router.service", lines=500)
        assert KEY not in get("/metrics") and KEY not in json.dumps(get("/health"))

        # A crash is restarted by systemd, and the key is there again.
        container.run(["kill", "-9", pid])
        wait_for(lambda: container.systemctl(
            "show", "agentkit-router.service", "--property=MainPID").stdout.strip() not in ("MainPID=0", f"MainPID={pid}"), "a new router process")
        wait_for(answering, "the restarted router to answer")
        assert chat("training")[0] == "cloud"
        assert cloud.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"
        exposure = container.run(["systemd-analyze", "security", "--no-pager", "agentkit-router.service"],
                                 check=False).stdout.strip().splitlines()[-1]
        print(f"systemd-analyze security agentkit-router.service: {exposure}")
