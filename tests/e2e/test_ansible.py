"""The rollout as users run it: ansible-playbook -i inventory/ ansible/site.yml against
two hosts, mainpc and pc2, then pytest-testinfra's checks (tests/infra) against them.

The hosts are systemd containers on a private bridge reached over real SSH
(twohosts.Lab). The repository's inventory/ is used as it is; the lab's own
inventory, given as a second -i, adds only how to log in (address, key,
known_hosts). A third inventory directory of the test holds the router's cloud
key in an ansible-vault file, as inventory/group_vars/agentkit_hosts/vault.yml
would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .twohosts import SSHD_UNIT

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CLOUD_KEY = "sk-test-e2e-4f1c9a7d2b"  # a made-up key: it must reach mainpc's router and nowhere else
VAULT_PASSWORD = "lab-vault-password"

AGENTKIT = "/opt/agentkit/venv/bin/agentkit"
HEALTH_BODY = """import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
except urllib.error.HTTPError as e:
    print(e.read().decode())
"""


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")},
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        **extra,
    }


class Rollout:
    """ansible-playbook against the lab, with the repository's inventory first."""

    def __init__(self, lab, tmp_path: Path):
        self.lab = lab
        self.tmp_path = tmp_path
        self.outputs: list[str] = []
        secrets = tmp_path / "secrets"  # an inventory directory: only group_vars
        (secrets / "group_vars" / "agentkit_hosts").mkdir(parents=True)
        self.password_file = tmp_path / "vault-password"
        self.password_file.write_text(VAULT_PASSWORD + "\n")
        self.password_file.chmod(0o600)
        vault = secrets / "group_vars" / "agentkit_hosts" / "vault.yml"
        vault.write_text(f"---\nvault_agentkit_router_cloud_key: {CLOUD_KEY}\n")
        subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(self.password_file),
                        str(vault)], check=True, capture_output=True, env=_env(tmp_path), timeout=60)
        assert CLOUD_KEY not in vault.read_text()
        # An inventory source that defines no hosts: it only brings its group_vars.
        (secrets / "hosts.yml").write_text("---\nagentkit_hosts:\n  hosts: {}\n")
        self.inventories = [str(REPO / "inventory"), str(lab.inventory), str(secrets)]
        self.extra: list[str] = []  # given to every later run

    def run(self, *args: str, manifest: Path | None = None, check: bool = True, playbook: str = "site.yml") -> "Run":
        argv = [str(VENV_BIN / "ansible-playbook")]
        for inventory in self.inventories:
            argv += ["-i", inventory]
        argv += ["--vault-password-file", str(self.password_file), str(REPO / "ansible" / playbook), *args]
        if manifest is not None:
            argv += ["-e", f"agentkit_manifest_dir={manifest}"]
        argv += self.extra
        started = time.monotonic()
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=_env(self.tmp_path), timeout=1500)
        outcome = Run(result, time.monotonic() - started)
        self.outputs.append(result.stdout + result.stderr)
        if check:
            assert result.returncode == 0, f"ansible-playbook {' '.join(args)} failed:\n{outcome.tail()}"
        return outcome


class Run:
    """One ansible-playbook run, read from the default callback's output."""

    def __init__(self, result: subprocess.CompletedProcess, seconds: float):
        self.result = result
        self.seconds = seconds
        self.recap = {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
                      for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", result.stdout, re.M)}
        self.tasks: list[tuple[str, dict[str, str]]] = []  # (task name, {host: status}) in order
        for block in re.split(r"^(?:TASK|RUNNING HANDLER) \[", result.stdout, flags=re.M)[1:]:
            name = block.split("]", 1)[0]
            statuses = {}
            for status, host in re.findall(r"^(ok|changed|skipping|fatal|failed): \[([^\]]+)\]", block, re.M):
                statuses.setdefault(host, status)
                if status == "changed":
                    statuses[host] = "changed"
            self.tasks.append((name, statuses))

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]

    def changed_tasks(self, host: str) -> list[str]:
        return [name for name, statuses in self.tasks if statuses.get(host) == "changed"]

    def status(self, task: str, host: str) -> str | None:
        found = [s[host] for name, s in self.tasks if name.endswith(task) and host in s]
        return found[-1] if found else None

    def order(self, task: str) -> list[str]:
        """The hosts, in the order they ran `task`."""
        return [h for name, s in self.tasks if name.endswith(task) for h in s]

    def tail(self, lines: int = 120) -> str:
        text = self.result.stdout + "\n--- stderr ---\n" + self.result.stderr
        return "\n".join(text.splitlines()[-lines:])


def run_testinfra(lab, tmp_path: Path, manifest: Path | None = None) -> subprocess.CompletedProcess:
    """tests/infra against every host, as a user runs it (pytest --hosts=ansible://all)."""
    argv = [str(VENV_BIN / "pytest"), "-p", "no:cacheprovider", "-q", "-rf", "--hosts=ansible://all",
            str(REPO / "tests" / "infra")]
    if manifest is not None:
        argv += ["--agentkit-manifest", str(manifest)]
    # testinfra takes one --ansible-inventory; ANSIBLE_INVENTORY takes several.
    env = _env(tmp_path, ANSIBLE_INVENTORY=f"{REPO / 'inventory'},{lab.inventory}")
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def invocations(lab, host: str) -> dict[str, str]:
    """unit -> InvocationID of every running agentkit service of host (a restart changes it)."""
    out = lab.ssh(host, ["systemctl", "show", "--type=service", "--state=active", "-p", "Id,InvocationID",
                         "agentkit-*.service"]).stdout
    units = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id") and props["Id"] != SSHD_UNIT:  # the lab's own sshd is no agent
            units[props["Id"]] = props.get("InvocationID", "")
    return units


def ssh_ok(lab, host: str, argv: list[str]) -> str:
    result = lab.ssh(host, argv)
    assert result.returncode == 0, f"{host}: {argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def copy_manifest(tmp_path: Path, name: str) -> Path:
    manifest = tmp_path / name
    shutil.copytree(REPO / "agents", manifest)
    return manifest


def edit_agent(manifest: Path, file: str, agent: str, **settings) -> None:
    path = manifest / file
    data = yaml.safe_load(path.read_text())
    data["agents"][agent].update(settings)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_rollout_to_two_hosts(lab_factory, tmp_path, record_property):
    lab = lab_factory(("mainpc", "pc2"))
    rollout = Rollout(lab, tmp_path)
    mainpc, pc2 = lab.hosts["mainpc"].address, lab.hosts["pc2"].address

    # 0. --check on hosts that have nothing yet: says what it would do, does none of it.
    preview = rollout.run("--check")
    assert preview.status("Install agentkit into its virtualenv", "pc2") == "changed"
    for host in ("mainpc", "pc2"):
        assert lab.ssh(host, ["test", "-e", "/opt/agentkit"]).returncode == 1
        assert lab.ssh(host, ["test", "-e", "/etc/systemd/system/agentkit.target"]).returncode == 1

    # 1. From nothing: both hosts, one after the other; -v shows what each install did.
    first = rollout.run("-v")
    assert set(first.recap) == {"mainpc", "pc2"} and all(r["failed"] == 0 for r in first.recap.values())
    assert first.order("Install the units and start the essential agents") == ["mainpc", "pc2"]
    for host in ("mainpc", "pc2"):
        assert first.status("Install the units and start the essential agents", host) == "changed"
        assert first.status("Install agentkit into its virtualenv", host) == "changed"
    assert first.status("Put the router's cloud key in place", "mainpc") == "changed"
    assert first.status("Put the router's cloud key in place", "pc2") == "skipping"

    # What landed: 55 and 22 agents, all essentials up, the router with its key.
    status = json.loads(ssh_ok(lab, "pc2", [AGENTKIT, "-m", "/etc/agentkit/agents", "status", "--json"]))
    assert len(status["agents"]) == 22
    assert {a["state"] for a in status["agents"] if a["essential"]} == {"active"}
    key_file = "/etc/agentkit/credentials/router-cloud-key"
    assert ssh_ok(lab, "mainpc", ["stat", "-c", "%a %U %s", key_file]).split() == ["600", "root", str(len(CLOUD_KEY))]
    # /health answers 503 here (no local model server, no way to the cloud), with its JSON.
    health = json.loads(ssh_ok(lab, "mainpc", ["/usr/bin/python3", "-c", HEALTH_BODY, "http://127.0.0.1:8090/health"]))
    assert health["backends"]["cloud"]["api_key"] == "set"
    # Both hosts' status services, from here, at the inventory's addresses: one table.
    every = subprocess.run([str(Path(sys.executable).parent / "agentkit"), "-m", str(REPO / "agents"), "status",
                            "--all", "--json", "--address", f"mainpc={mainpc}", "--address", f"pc2={pc2}"],
                           capture_output=True, text=True, timeout=60)
    assert every.returncode == 0, every.stdout + every.stderr
    hosts = json.loads(every.stdout)["hosts"]
    assert {h: (a["status"], len(a["agents"])) for h, a in hosts.items()} == {"mainpc": ("ok", 55), "pc2": ("ok", 22)}
    assert hosts["pc2"]["url"] == f"http://{pc2}:9202/health"
    table = subprocess.run([str(Path(sys.executable).parent / "agentkit"), "-m", str(REPO / "agents"), "status",
                            "--all", "--address", f"mainpc={mainpc}", "--address", f"pc2={pc2}"],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and table.stdout.startswith("HOST") and "pc2" in table.stdout, table.stdout
    # pc2 reaches mainpc at the inventory's address (UNIFIED_HOST: {address_of: mainpc}).
    unit = ssh_ok(lab, "pc2", ["systemctl", "cat", "agentkit-TieredResponder.service"])
    assert f"Environment=UNIFIED_HOST={mainpc}\n" in unit

    # 2. testinfra, as users run it, passes against both hosts.
    checks = run_testinfra(lab, tmp_path)
    assert checks.returncode == 0, f"tests/infra failed:\n{checks.stdout[-6000:]}\n{checks.stderr[-2000:]}"
    passed = int(re.search(r"(\d+) passed", checks.stdout).group(1))
    assert passed >= 77 and "mainpc" in checks.stdout + " ".join(checks.args)

    # 3. The second run changes nothing; --check agrees.
    before = {host: invocations(lab, host) for host in ("mainpc", "pc2")}
    second = rollout.run()
    assert {host: second.changed_tasks(host) for host in ("mainpc", "pc2")} == {"mainpc": [], "pc2": []}
    assert {host: second.changed(host) for host in ("mainpc", "pc2")} == {"mainpc": 0, "pc2": 0}, second.tail()
    check = rollout.run("--check")
    assert {host: check.changed_tasks(host) for host in ("mainpc", "pc2")} == {"mainpc": [], "pc2": []}, check.tail()
    assert {host: invocations(lab, host) for host in ("mainpc", "pc2")} == before

    # 3b. An essential agent stopped by hand: the next run starts it, and says so.
    ssh_ok(lab, "pc2", ["systemctl", "stop", "agentkit-TieredResponder.service"])
    healed = rollout.run("-v")
    assert healed.changed_tasks("pc2") == ["agentkit : Install the units and start the essential agents"]
    assert healed.changed_tasks("mainpc") == []
    assert '"agentkit-TieredResponder.service"' in healed.result.stdout.split("Show what agentkit installed")[-1]
    before["pc2"] = invocations(lab, "pc2")
    assert "agentkit-TieredResponder.service" in before["pc2"]

    # 3c. A new agentkit (its wheel changes, the unit files do not): every running
    # service restarts onto it, on both hosts; nothing else changes.
    source = tmp_path / "agentkit-next"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".venv-litellm", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    init = source / "toolkit" / "__init__.py"
    init.write_text(init.read_text() + "# the next release\n")
    rollout.extra = ["-e", f"agentkit_source={source}"]
    upgraded = rollout.run()
    for host in ("mainpc", "pc2"):
        assert "agentkit : Install agentkit into its virtualenv" in upgraded.changed_tasks(host)
        assert upgraded.status("Install the units and start the essential agents", host) == "changed"
        now = invocations(lab, host)
        assert set(now) == set(before[host])
        assert [u for u in now if now[u] == before[host][u]] == [], f"{host}: not restarted onto the new agentkit"
        before[host] = now
    again = rollout.run()
    assert {host: again.changed_tasks(host) for host in ("mainpc", "pc2")} == {"mainpc": [], "pc2": []}

    # 4. One agent changes: pc2's TieredResponder now also calls mainpc's RequestCoordinator.
    changed = copy_manifest(tmp_path, "agents-changed")
    edit_agent(changed, "pc2_core.yaml", "TieredResponder",
               depends_on=["ResourceManager", "TaskScheduler", "ObservabilityHub_PC2", "RequestCoordinator"])
    preview = rollout.run("--check", "--diff", manifest=changed)
    assert preview.status("Compare the installed units with the manifest", "pc2") == "changed"
    assert preview.status("Compare the installed units with the manifest", "mainpc") == "ok"
    assert "+Environment=AGENTKIT_DEPENDS=ResourceManager=127.0.0.1:7113" in preview.result.stdout
    assert invocations(lab, "pc2") == before["pc2"]  # --check changed nothing
    third = rollout.run(manifest=changed)
    assert third.status("Install the units and start the essential agents", "mainpc") == "ok"
    assert third.status("Install the units and start the essential agents", "pc2") == "changed"
    after = {host: invocations(lab, host) for host in ("mainpc", "pc2")}
    assert after["mainpc"] == before["mainpc"]
    restarted = sorted(u for u in after["pc2"] if after["pc2"][u] != before["pc2"].get(u))
    assert restarted == ["agentkit-TieredResponder.service"]
    # The pc2 agent calls the mainpc agent across the bridge, at mainpc's inventory address.
    reply = json.loads(ssh_ok(lab, "pc2", [AGENTKIT, "-m", "/etc/agentkit/agents", "call", "TieredResponder",
                                           "--action", "chain"]))
    assert reply["ok"] is True, reply
    deps = {dep["agent"]: dep for dep in reply["deps"]}
    assert deps["RequestCoordinator"]["ok"] is True, reply
    # It was mainpc's RequestCoordinator (pc2 has none) that answered:
    main_pid = ssh_ok(lab, "mainpc", ["systemctl", "show", "-p", "MainPID", "--value",
                                      "agentkit-RequestCoordinator.service"]).strip()
    assert deps["RequestCoordinator"]["pid"] == int(main_pid), reply
    unit = ssh_ok(lab, "pc2", ["systemctl", "cat", "agentkit-TieredResponder.service"])
    assert f",RequestCoordinator={mainpc}:7201\n" in unit
    assert run_testinfra(lab, tmp_path, manifest=changed).returncode == 0

    # 4b. Waking through the inventory: each host wakes the named agents that live there.
    woken = rollout.run("-e", '{"agentkit_wake": ["VisionProcessingAgent", "ChitchatAgent"]}', playbook="wake.yml")
    assert woken.status("Wake the agents that live on this host, and their dependencies, until ready", "pc2") \
        == "changed"
    every = json.loads(subprocess.run([str(Path(sys.executable).parent / "agentkit"), "-m", str(REPO / "agents"),
                                       "status", "--all", "--json", "--address", f"mainpc={mainpc}", "--address",
                                       f"pc2={pc2}"], capture_output=True, text=True, timeout=60).stdout)["hosts"]
    awake = {(h, a["name"]) for h, answer in every.items() for a in answer["agents"] if a["state"] == "active"
             and not a["essential"]}
    assert {("pc2", "VisionProcessingAgent"), ("mainpc", "ChitchatAgent")} <= awake, awake

    # 5. A host whose essentials do not come up stops the rollout: pc2 is not touched.
    broken = copy_manifest(tmp_path, "agents-broken")
    edit_agent(broken, "pc2_core.yaml", "TieredResponder", description="changed, but never rolled out")
    edit_agent(broken, "infrastructure_registry.yaml", "ServiceRegistry", command=["/bin/false"])
    pc2_unit = ssh_ok(lab, "pc2", ["cat", "/etc/systemd/system/agentkit-TieredResponder.service"])
    failed = rollout.run(manifest=broken, check=False)
    assert failed.result.returncode != 0
    assert failed.status("Install the units and start the essential agents", "mainpc") in ("fatal", "failed")
    assert "agentkit-ServiceRegistry.service" in failed.result.stdout
    assert "pc2" not in failed.order("Copy the manifest"), failed.tail()
    assert ssh_ok(lab, "pc2", ["cat", "/etc/systemd/system/agentkit-TieredResponder.service"]) == pc2_unit

    # 6. A manifest agentkit rejects stops at the check of the staged copy: the host's copy stays.
    invalid = copy_manifest(tmp_path, "agents-invalid")
    edit_agent(invalid, "infrastructure_registry.yaml", "ServiceRegistry", port=70000)
    host_copy = ssh_ok(lab, "mainpc", ["cat", "/etc/agentkit/agents/infrastructure_registry.yaml"])
    rejected = rollout.run(manifest=invalid, check=False)
    assert rejected.result.returncode != 0
    assert rejected.status("Check the staged manifest and read this host's part of it", "mainpc") in ("fatal", "failed")
    assert "agents.ServiceRegistry.port: expected a port number" in rejected.result.stdout, rejected.tail()
    assert ssh_ok(lab, "mainpc", ["cat", "/etc/agentkit/agents/infrastructure_registry.yaml"]) == host_copy
    assert lab.ssh("mainpc", ["sh", "-c", "ls -d /tmp/agentkit-manifest.*"]).returncode != 0  # staging removed

    # The key never shows: not in any output, not on pc2.
    assert not any(CLOUD_KEY in out for out in rollout.outputs)
    assert lab.ssh("pc2", ["test", "-e", key_file]).returncode == 1

    for name, run in (("first", first), ("second", second), ("change", third)):
        record_property(f"ansible_{name}_seconds", round(run.seconds, 1))
    print(f"\nrollout: first {first.seconds:.1f} s, no-change {second.seconds:.1f} s, "
          f"one agent changed {third.seconds:.1f} s; testinfra {passed} checks")
