"""tests/infra (pytest-testinfra checks of a deployed host) against a real systemd.

Each test boots a container, installs a fleet in it with `agentkit install`, and
runs tests/infra INSIDE it, as a user would on the host (testinfra's local
backend, or its ansible backend with an inventory of ansible_connection: local):
first on the host as installed, where every check passes, then after breaking
one thing at a time, where exactly the checks of the broken thing fail, naming it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentkit import graph, manifest as manifest_mod, units

from . import test_fleet
from .test_fleet import install, request

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "tests" / "infra"
# The pytest (with pytest-testinfra and ansible-core) running this test; the
# container sees the checkout's .venv at its own path.
VENV_BIN = Path(sys.executable).parent
PER_HOST = ("test_record", "test_target_enabled_and_active", "test_units_match_manifest", "test_no_failed_units")


@pytest.fixture(autouse=True)
def _agentkit(agentkit_bin):
    """install() runs the agentkit the containers see (see conftest.agentkit_bin)."""
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")


def boot(container_factory, **options):
    """A container that also sees this test's venv (pytest, testinfra) when it lies outside the checkout."""
    venv = Path(sys.prefix)
    if not str(venv).startswith(str(REPO) + "/"):
        options["bind_ro"] = list(options.get("bind_ro", ())) + [str(venv)]
    return container_factory(**options)


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float
    outcomes: dict[str, str]  # test id (function[param]) -> passed / failed / skipped
    messages: dict[str, str]  # failures' and skips' texts
    round_trips: int  # commands testinfra ran on the host (its "RUN" log lines)

    def failed(self) -> set[str]:
        return {name for name, outcome in self.outcomes.items() if outcome == "failed"}


_runs = iter(range(1, 1000))


def checks(container, *args: str) -> Run:
    """`pytest tests/infra ARGS` inside the container; its junit report and log, parsed."""
    n = next(_runs)
    junit, log = f"/run/infra-{n}.xml", f"/run/infra-{n}.log"
    argv = [str(VENV_BIN / "pytest"), "-p", "no:cacheprovider", "-q", "--tb=line", "-rfEsw",
            f"--junitxml={junit}", f"--log-file={log}", "--log-file-level=DEBUG", *args, str(INFRA)]
    started = time.monotonic()
    result = container.run(argv, check=False, timeout=300, env={
        "PYTHONDONTWRITEBYTECODE": "1",  # the checkout is read-only in there
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",  # ansible-inventory
        "HOME": "/run/infra-home", "ANSIBLE_LOCAL_TEMP": "/run/infra-home/.ansible/tmp",
    })
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1), f"pytest tests/infra did not run its tests:\n{output}"
    outcomes, messages = {}, {}
    for case in ET.parse(container.root / junit.lstrip("/")).iter("testcase"):
        name = case.get("name")
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = "skipped" if kind == "skipped" else "failed"
                messages[name] = (element.get("message") or "") + "\n" + (element.text or "")
        assert name not in outcomes, f"two tests with the id {name}"
        outcomes[name] = outcome
    # testinfra logs each command it runs; ansible-inventory runs here, once, not on a host.
    runs = sum(1 for line in (container.root / log.lstrip("/")).read_text(errors="replace").splitlines()
               if "RUN CommandResult(" in line and "ansible-inventory --list" not in line)
    return Run(result.returncode, output, seconds, outcomes, messages, runs)


def expected_ids(m, host: str, profile: str, hid: str | None = None) -> set[str]:
    """Every test id tests/infra has for `host`, from the manifest."""
    hid = hid or host
    agents = [a for a in graph.selected(m, profile) if a.host == host]
    ids = {f"{name}[{hid}]" for name in PER_HOST}
    ids |= {f"test_essential_agent_runs[{hid}-essential-{a.name}]" for a in agents if a.essential}
    ids |= {f"test_health_answers[{hid}-health-{a.name}]" for a in agents if a.essential and a.health_port}
    ids |= {f"test_optional_agent_dormant_behind_its_socket[{hid}-optional-{a.name}]" for a in agents if a.optional}
    if m.router is not None and m.router.host == host:
        ids |= {f"test_router_runs[{hid}-router]", f"test_router_health_answers[{hid}-router-health]"}
    return ids


def never_started(container, agents) -> dict[str, str]:
    """{service: ActiveEnterTimestampMonotonic} of the agents' services, one systemctl call."""
    services = [units.service(a.name) for a in agents]
    out = container.systemctl("show", "-p", "Id,ActiveEnterTimestampMonotonic", *services).stdout
    props = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line) for block in out.split("\n\n")]
    return {p["Id"]: p["ActiveEnterTimestampMonotonic"] for p in props if p}


def assert_passes(run: Run, ids: set[str]) -> None:
    assert run.returncode == 0 and run.failed() == set(), run.output
    assert set(run.outcomes) == ids, (sorted(set(run.outcomes) - ids), sorted(ids - set(run.outcomes)))
    assert set(run.outcomes.values()) == {"passed"}, run.output  # nothing skipped either


def assert_fails(run: Run, ids: set[str], *texts: str) -> None:
    """Exactly the checks `ids` fail, and each of `texts` is in some failure's message."""
    assert run.returncode == 1, run.output
    assert run.failed() == ids, run.output
    messages = "\n".join(run.messages[i] for i in ids)
    for text in texts:
        assert text in messages, f"{text!r} not in:\n{messages}"


# --- the reference fleet's mainpc --------------------------------------------------------------

def test_the_checks_pass_on_mainpc_as_installed_and_name_each_breakage(container_factory, capsys):
    m = manifest_mod.load(str(REPO / "agents"))
    on_host = [a for a in graph.selected(m, "full") if a.host == "mainpc"]
    essential = [a for a in on_host if a.essential]
    optional = [a for a in on_host if a.optional]
    # Agents to break alone: nothing on the host requires them (a stop would take dependants
    # along), and an optional one whose dependencies on the host are essential (running anyway).
    leaves = [a for a in essential if a.health_port and not any(a.name in b.depends_on for b in on_host)]
    names = {a.name: a for a in on_host}
    waker = next(a for a in optional if all(names[d].essential for d in a.depends_on if d in names))
    assert len(leaves) >= 2, "the reference fleet has essential agents nothing on mainpc depends on"
    stopped, broken = leaves[0].name, leaves[1].name
    ids = expected_ids(m, "mainpc", "full")

    c = boot(container_factory, hostname="mainpc")
    install(c, REPO / "agents", "mainpc")

    # As installed: every check passes, one test per agent, and two round-trips to the host.
    run = checks(c, "--hosts=local://", "--agentkit-host", "mainpc")
    assert_passes(run, ids)
    assert "test_essential_agent_runs[mainpc-essential-ServiceRegistry]" in run.outcomes
    assert len(ids) == 4 + len(essential) + sum(1 for a in essential if a.health_port) + len(optional) + 2
    assert run.round_trips == 2, run.round_trips
    first = run
    # Without --agentkit-host the record says which host this is: the same checks.
    run = checks(c, "--hosts=local://")
    assert_passes(run, ids)
    # Nothing the checks did woke an optional agent: their services never started.
    assert set(never_started(c, optional).values()) == {"0"}
    # Why "enabled" is not asked of the agents' units: they have no [Install], so
    # systemctl says "static", with exit status 0 (testinfra's is_enabled: True).
    for unit in (f"agentkit-{stopped}.service", f"agentkit-{waker.name}.socket"):
        answer = c.systemctl("is-enabled", unit, check=False)
        assert (answer.returncode, answer.stdout.strip()) == (0, "static")

    # An essential agent stopped: its run check and its health check fail, naming it.
    c.systemctl("stop", f"agentkit-{stopped}.service")
    run = checks(c, "--hosts=local://", "--agentkit-host", "mainpc")
    assert_fails(run, {f"test_essential_agent_runs[mainpc-essential-{stopped}]",
                       f"test_health_answers[mainpc-health-{stopped}]"},
                 f"essential agent {stopped}", f"agentkit-{stopped}.service is inactive/dead, not active/running",
                 f"health of {stopped}", "Connection refused")
    c.systemctl("start", f"agentkit-{stopped}.service")

    # An optional agent started (a client, or someone by hand): no longer dormant.
    c.systemctl("start", f"agentkit-{waker.name}.service")
    run = checks(c, "--hosts=local://", "--agentkit-host", "mainpc")
    assert_fails(run, {f"test_optional_agent_dormant_behind_its_socket[mainpc-optional-{waker.name}]"},
                 f"optional agent {waker.name}", f"agentkit-{waker.name}.service is active/running, not dormant")
    c.systemctl("stop", f"agentkit-{waker.name}.service")

    # A unit that fails (here: a drop-in whose ExecStartPre= fails, no restart).
    dropin = f"/run/systemd/system/agentkit-{broken}.service.d/break.conf"
    c.write_file(dropin, "[Service]\nExecStartPre=/bin/false\nRestart=no\n")
    c.systemctl("daemon-reload")
    c.systemctl("restart", f"agentkit-{broken}.service", check=False)
    run = checks(c, "--hosts=local://", "--agentkit-host", "mainpc")
    assert_fails(run, {f"test_essential_agent_runs[mainpc-essential-{broken}]",
                       f"test_health_answers[mainpc-health-{broken}]", "test_no_failed_units[mainpc]"},
                 f"agentkit-{broken}.service: failed/failed (result exit-code)",
                 f"agentkit-{broken}.service is failed/failed (result exit-code), not active/running")
    c.run(["rm", "-r", str(Path(dropin).parent)])
    c.systemctl("daemon-reload")
    c.systemctl("reset-failed", f"agentkit-{broken}.service")
    c.systemctl("start", f"agentkit-{broken}.service")

    # Back as installed.
    assert_passes(checks(c, "--hosts=local://", "--agentkit-host", "mainpc"), ids)

    # A unit file edited by hand (and no daemon-reload), and the router stopped.
    edited = f"agentkit-{waker.name}.socket"
    path = c.root / "etc/systemd/system" / edited
    path.write_text(path.read_text() + "# tuned by hand\n")
    # The socket too: while it listens, the first connection (the check's own) would start the router again.
    c.systemctl("stop", "agentkit-router.socket", "agentkit-router.service")
    run = checks(c, "--hosts=local://", "--agentkit-host", "mainpc")
    assert_fails(run, {"test_units_match_manifest[mainpc]", "test_router_runs[mainpc-router]",
                       "test_router_health_answers[mainpc-router-health]"},
                 f"{edited}: differs from what the manifest renders: edited on the host since agentkit installed it",
                 f"systemd runs older definitions than the files of: {edited}",
                 "agentkit-router.service is inactive/dead, not active/running", ":8090/health: no answer")
    with capsys.disabled():
        print(f"\ntests/infra on mainpc: {len(ids)} checks in {first.seconds:.2f} s "
              f"(pytest start-up included), {first.round_trips} round-trips")


# --- a lab fleet: proxy mode, a profile, the router on loopback, Ansible's inventory ------------

LAB = {
    "fleet.yaml": """\
        name: infralab
        hosts:
          lab: {address: 127.0.0.1}
        defaults:
          command: [agentkit-agent]
          service_type: notify
          restart: {policy: on-failure, delay: 200ms, burst: 4, interval: 10s}
        profiles:
          small: {agents: [Native, Proxied]}
          full: {all: true}
        default_profile: full
        router:
          host: lab
          port: 17490
          bind: 127.0.0.1
          local: {url: "http://127.0.0.1:9/v1", model: local-8b}
          cloud: {url: "http://127.0.0.1:9/v1", model: cloud-large}
          gpu: {capacity: 2G}
        """,
    "lab.yaml": """\
        host: lab
        agents:
          Base: {essential: true, port: 17401, health_port: 17451}
          Leaf: {essential: true, port: 17402, health_port: 17452, depends_on: [Base]}
          Quiet: {essential: true, port: 17406}
          Native: {port: 17403, health_port: 17453, depends_on: [Base]}
          Proxied: {port: 17404, activation: proxy, depends_on: [Base]}
          Extra: {port: 17405}
        """,
}


def test_the_checks_follow_the_manifest_profile_and_inventory(container_factory, tmp_path):
    root = tmp_path / "infralab"
    root.mkdir()
    for name, text in LAB.items():
        (root / name).write_text(textwrap.dedent(text))
    m = manifest_mod.load(str(root))
    ids = expected_ids(m, "lab", "small")
    assert "test_optional_agent_dormant_behind_its_socket[lab-optional-Proxied]" in ids
    assert not any("Extra" in i for i in ids)  # not in the profile installed
    assert "test_health_answers[lab-health-Quiet]" not in ids  # no health port

    c = boot(container_factory, hostname="lab", bind_ro=[str(root)])
    install(c, root, "lab", "--profile", "small")
    # An inventory: the host's inventory name is not the manifest's; agentkit_host says which.
    c.write_file("/run/inventory.yml", textwrap.dedent("""\
        all:
          hosts:
            labbox: {ansible_connection: local, agentkit_host: lab}
        """))
    ansible = ("--hosts=ansible://all", "--ansible-inventory=/run/inventory.yml", "--agentkit-manifest", str(root))
    run = checks(c, *ansible)
    assert_passes(run, ids)
    assert run.round_trips == 2, run.round_trips

    # A client wakes the proxied agent: the proxy and the agent run, and the check says so.
    assert request(17404, {"action": "ping"})["agent"] == "Proxied"
    run = checks(c, *ansible)
    assert_fails(run, {"test_optional_agent_dormant_behind_its_socket[lab-optional-Proxied]"},
                 "optional agent Proxied (proxy activation)",
                 "agentkit-Proxied.service is active/running, not dormant",
                 "agentkit-Proxied-proxy.service is active/running, not dormant")

    # An inventory that names a host the manifest does not have: said, per host check.
    c.write_file("/run/inventory.yml", textwrap.dedent("""\
        all:
          hosts:
            labbox: {ansible_connection: local, agentkit_host: elsewhere}
        """))
    run = checks(c, *ansible)
    assert run.failed() == {f"{name}[labbox]" for name in PER_HOST}, run.output
    assert "the inventory variable agentkit_host of labbox is 'elsewhere', not a host of" in \
        run.messages["test_record[labbox]"]
    skipped = {i for i, outcome in run.outcomes.items() if outcome == "skipped"}
    assert skipped == {"test_essential_agent_runs[none]", "test_health_answers[none]",
                       "test_optional_agent_dormant_behind_its_socket[none]", "test_router_runs[none]",
                       "test_router_health_answers[none]"}, run.output
    assert "some hosts are not known: see test_record" in run.messages["test_essential_agent_runs[none]"]


# --- no --hosts ---------------------------------------------------------------------------------

def test_without_hosts_everything_is_skipped_with_the_reason():
    """The project's own `pytest` run collects tests/infra: it must check nothing, and say why."""
    result = subprocess.run([str(VENV_BIN / "pytest"), "-p", "no:cacheprovider", "-q", "-rs", str(INFRA)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 skipped" in result.stdout and "failed" not in result.stdout, result.stdout
    assert "give --hosts=ansible://all --ansible-inventory=inventory/" in result.stdout, result.stdout
