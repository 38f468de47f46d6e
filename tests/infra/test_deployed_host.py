"""A host agentkit deployed runs what the manifest says, as the manifest says.

One test per host for the host as a whole (ids: the manifest host, `mainpc`),
one per agent (`mainpc-essential-ModelManagerAgent`, `mainpc-health-...`,
`mainpc-optional-...`) and for the router (`mainpc-router`,
`mainpc-router-health`). Every check of a host reads the same snapshot, taken
once per host (see deployed.py): two round-trips per host in all.

"Started at boot": agentkit's agent units have no [Install] section, so
`systemctl is-enabled` says `static` for each (exit status 0, which testinfra's
`service.is_enabled` reports as True whether or not anything starts them).
What starts them at boot is agentkit.target: enabled (WantedBy=multi-user.target)
and Wants= every essential service and every optional socket. So that is what
is checked: the target is `enabled` and systemd's loaded Wants= of the target
holds the unit.
"""

from __future__ import annotations

import json
import warnings

import pytest

from agentkit import units

from .deployed import RECORD, UNIT_DIR, WILDCARDS, digest, state


def fail_if(problems: list[str], header: str, target=None) -> None:
    if not problems:
        return
    text = header + "\n" + "\n".join(f"  - {p}" for p in problems)
    recorded = ((target.record or {}).get("host") if target is not None else None)
    if recorded is not None and recorded != target.name:
        text += (f"\n  (the record on this host says agentkit installed {recorded!r} here, "
                 f"not {target.name}: see test_record)")
    pytest.fail(text, pytrace=False)


def boot_problems(snap, unit: str) -> list[str]:
    """Why `unit` would not be started at boot, if it would not."""
    problems = []
    t = snap.unit(units.TARGET)
    if t.get("UnitFileState") != "enabled":
        problems.append(f"{units.TARGET} is {t.get('UnitFileState') or t.get('LoadState')}, not enabled: "
                        "nothing of agentkit starts at boot")
    if not snap.wanted_by_target(unit):
        problems.append(f"{units.TARGET} does not want {unit} (as systemd loaded it): it would not start at boot")
    return problems


# --- the host as a whole --------------------------------------------------------------

def test_record(deployed):
    """The record of what agentkit installed is there, for this host and a profile of the manifest."""
    t = deployed.target
    if t.problem:
        pytest.fail(t.problem, pytrace=False)
    problems = []
    if t.record is None:
        problems.append(t.record_error)
    else:
        if t.record.get("host") != t.name:
            problems.append(f"{RECORD} says agentkit installed host {t.record.get('host')!r} here, but this is "
                            f"{t.name} (by {t.how})")
        if t.profile_note:
            problems.append(t.profile_note)
        if not t.record.get("files"):
            problems.append(f"{RECORD} lists no unit files")
    fail_if(problems, f"{t.describe()}: the record of agentkit's install")


def test_target_enabled_and_active(deployed, snapshots):
    t = deployed.target
    snap = snapshots.of(t)
    target = snap.unit(units.TARGET)
    problems = []
    if target.get("UnitFileState") != "enabled":
        problems.append(f"{units.TARGET} is {target.get('UnitFileState') or state(target)}, not enabled: "
                        "the agents would not start at boot")
    if target.get("ActiveState") != "active":
        problems.append(f"{units.TARGET} is {state(target)}")
    fail_if(problems, f"{t.describe()}: {units.TARGET}", t)


def test_units_match_manifest(deployed, snapshots, templates):
    """The unit files on the host are byte for byte what the manifest renders for it (its
    host, its recorded profile, the bin dir its units name), and systemd loaded them."""
    t = deployed.target
    snap = snapshots.of(t)
    planned_bin = "/"
    if snap.exec_path and "/" in snap.exec_path:
        planned_bin = snap.exec_path.rsplit("/", 1)[0] or "/"
    planned = {f.path: digest(f.text) for f in t.plan(planned_bin, templates)}
    recorded = (t.record or {}).get("files", {})
    problems = []
    for name, want in sorted(planned.items()):
        have = snap.files.get(name)
        if have is None:
            problems.append(f"{name}: missing from {UNIT_DIR}")
        elif have != want:
            why = ("edited on the host since agentkit installed it" if recorded.get(name) not in (None, have)
                   else "installed from another manifest or agentkit (roll out again)")
            problems.append(f"{name}: differs from what the manifest renders: {why}")
    for name in sorted(set(recorded) - set(planned)):
        problems.append(f"{name}: installed by agentkit but not in the manifest for {t.name} (profile {t.profile}): "
                        "a rollout removes it")
    stale = sorted(n for n, p in snap.units.items() if p.get("NeedDaemonReload") == "yes")
    if stale:
        problems.append(f"systemd runs older definitions than the files of: {', '.join(stale)} "
                        "(no daemon-reload since they changed)")
    if snap.errors.get("files"):
        problems.append(f"cannot read the unit files: {snap.errors['files']}")
    fail_if(problems, f"{t.describe()}: unit files against the manifest {t.manifest.root} "
                      f"(profile {t.profile}, bin dir {planned_bin})", t)


def test_no_failed_units(deployed, snapshots):
    t = deployed.target
    snap = snapshots.of(t)
    failed = {p["Id"]: p for p in snap.failed}
    for name, props in snap.units.items():
        if props.get("ActiveState") == "failed":
            failed.setdefault(name, props)
    problems = [f"{name}: {state(props)}" for name, props in sorted(failed.items())]
    if snap.errors.get("failed"):
        problems.append(f"cannot list failed units: {snap.errors['failed']}")
    fail_if(problems,
            f"{t.describe()}: failed agentkit units (journalctl -u UNIT says why; systemctl reset-failed clears)", t)


# --- each agent -------------------------------------------------------------------------

def test_essential_agent_runs(essential, snapshots):
    """Running now, and started at boot."""
    t, agent = essential.target, essential.agent
    snap = snapshots.of(t)
    unit = units.service(agent.name)
    props = snap.unit(unit)
    problems = []
    if props.get("LoadState") != "loaded":
        problems.append(f"{unit} is {state(props)}")
    elif (props.get("ActiveState"), props.get("SubState")) != ("active", "running"):
        problems.append(f"{unit} is {state(props)}, not active/running")
    if props.get("UnitFileState", "").startswith("masked"):
        problems.append(f"{unit} is masked")
    problems += boot_problems(snap, unit)
    fail_if(problems, f"{t.describe()}: essential agent {agent.name}", t)


def test_health_answers(health, snapshots):
    """GET /health on the agent's health port, on the host itself: 200, and the agent's own name."""
    t, agent = health.target, health.agent
    snap = snapshots.of(t)
    answer = snap.health.get(agent.name) or {"url": "?", "error": "not probed"}
    url, unit = answer["url"], units.service(agent.name)
    problem = None
    if answer.get("error"):
        problem = f"{url}: no answer: {answer['error']} ({unit} is {state(snap.unit(unit))})"
    elif answer["code"] != 200:
        problem = f"{url}: HTTP {answer['code']}: {answer['body'][:300]}"
    else:
        try:
            names = _strings(json.loads(answer["body"]))
        except ValueError:
            problem = f"{url}: not JSON: {answer['body'][:300]!r}"
        else:
            if agent.name not in names:
                problem = (f"{url}: answers for someone else (no {agent.name!r} in {answer['body'][:300]}): "
                           "another program holds the port?")
    fail_if([problem] if problem else [], f"{t.describe()}: health of {agent.name}", t)


def _strings(value) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*map(_strings, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_strings, value)) if value else set()
    return set()


def test_optional_agent_dormant_behind_its_socket(optional, snapshots):
    """Its socket holds the agent port (listening on every address); the agent itself is
    not running. Read from systemd and ss only: a connection would wake it."""
    t, agent = optional.target, optional.agent
    snap = snapshots.of(t)
    sock, unit = units.socket(agent.name, agent.activation), units.service(agent.name)
    problems = []
    props = snap.unit(sock)
    if props.get("LoadState") != "loaded":
        problems.append(f"{sock} is {state(props)}")
    elif props.get("ActiveState") != "active":
        problems.append(f"{sock} is {state(props)}: nothing would start {agent.name} on a connection")
    addresses = snap.listeners(agent.port)
    if snap.errors.get("listening"):
        problems.append(f"cannot list listening sockets: {snap.errors['listening']}")
    elif not addresses:
        problems.append(f"nothing listens on port {agent.port}")
    elif not set(addresses) & set(WILDCARDS):
        problems.append(f"port {agent.port} listens only on {', '.join(addresses)}, not on every address")
    problems += boot_problems(snap, sock)
    services = [unit] + ([units.proxy(agent.name)] if agent.activation == "proxy" else [])
    for name in services:
        service = snap.unit(name)
        if service.get("LoadState") != "loaded":
            problems.append(f"{name} is {state(service)}")
        elif service.get("ActiveState") == "failed":
            problems.append(f"{name} is {state(service)}")
        elif service.get("ActiveState") != "inactive":
            problems.append(f"{name} is {state(service)}, not dormant: a connection to port {agent.port} woke it, "
                            "or it was started by hand (an idle agent stops by itself)")
    fail_if(problems, f"{t.describe()}: optional agent {agent.name} ({agent.activation} activation)", t)


# --- the router --------------------------------------------------------------------------

def test_router_runs(router, snapshots):
    t = router.target
    snap = snapshots.of(t)
    props = snap.unit(units.ROUTER)
    problems = []
    if (props.get("ActiveState"), props.get("SubState")) != ("active", "running"):
        problems.append(f"{units.ROUTER} is {state(props)}, not active/running")
    problems += boot_problems(snap, units.ROUTER)
    fail_if(problems, f"{t.describe()}: the router", t)


def test_router_health_answers(router_health, snapshots):
    """/health answers with the router's JSON: 200, or 503 when both backends are down (the
    router is up; its backends are another matter, reported as a warning)."""
    t = router_health.target
    snap = snapshots.of(t)
    answer = snap.health.get(units.ROUTER) or {"url": "?", "error": "not probed"}
    header = f"{t.describe()}: the router's health"
    if answer.get("error"):
        fail_if([f"{answer['url']}: no answer: {answer['error']} "
                 f"({units.ROUTER} is {state(snap.unit(units.ROUTER))})"], header, t)
    try:
        body = json.loads(answer["body"])
    except ValueError:
        body = None
    if answer["code"] not in (200, 503) or not isinstance(body, dict) or "status" not in body:
        fail_if([f"{answer['url']}: HTTP {answer['code']}: {answer['body'][:300]}"], header, t)
    if body["status"] != "ok":
        backends = ", ".join(f"{name} {b.get('state')} ({b.get('last_error')})"
                             for name, b in (body.get("backends") or {}).items())
        warnings.warn(f"{t.describe()}: the router answers, but {body['status']}: {backends}", stacklevel=1)
