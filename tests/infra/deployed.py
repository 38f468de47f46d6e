"""The deployed side of tests/infra: which manifest host a testinfra host is, and
one snapshot of its state.

The manifest is agentkit's own (agentkit.manifest.load, graph.selected,
render.plan): the same code that rendered the units decides what the host
must run. Two round-trips per host, whatever the fleet's size: the record
(/var/lib/agentkit/installed.json) at collection, for the profile and the
host's name, and one run of probe.py when the first test of the host needs it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from agentkit import graph, manifest as manifest_mod, units
from agentkit.backends.systemd import install, render
from agentkit.errors import AgentkitError
from agentkit.model import Agent, Manifest

RECORD = "/" + install.RECORD
UNIT_DIR = "/" + install.UNIT_DIR
PROBE = (Path(__file__).resolve().parent / "probe.py").read_text(encoding="utf-8")
# systemctl show properties the checks read.
PROPS = ("Id", "LoadState", "ActiveState", "SubState", "UnitFileState", "Result", "NRestarts",
         "NeedDaemonReload", "Wants", "FragmentPath")
HEALTH_TIMEOUT = 5.0
# Unit names systemd starts and stops (templates, name@.timer, are only files).
INSTANCE_SUFFIXES = (".service", ".socket", ".target", ".slice", ".timer")


def remote_python(host, program: str, payload) -> tuple[int, str, str]:
    """Run `program` with python3 on the host, `payload` (JSON) as its last argument; one host.run."""
    bootstrap = "import sys;exec(bytes.fromhex(sys.argv[1]))"
    data = zlib.compress(json.dumps(payload).encode(), 9).hex()
    # Hex only: no quoting layer (sh, ssh, sudo, Ansible's shell module) changes a byte of it.
    result = host.run("PY=/usr/bin/python3; [ -x $PY ] || PY=python3; $PY -c %s %s %s",
                      bootstrap, program.encode().hex(), data)
    return result.rc, result.stdout, result.stderr


@dataclass
class Target:
    """One host given by --hosts, and what the manifest says it must run."""

    host: object  # testinfra.host.Host
    label: str  # testinfra's name for it: the inventory name, an ssh host, "local"
    manifest: Manifest
    name: str | None = None  # the manifest's host
    how: str = ""  # how `name` was found
    problem: str | None = None  # why `name` could not be found
    record: dict | None = None
    record_error: str | None = None
    profile: str = ""
    profile_note: str = ""  # set when the profile is assumed, not read from the record
    id: str = ""

    @property
    def agents(self) -> list[Agent]:
        if self.name is None:
            return []
        return [a for a in graph.selected(self.manifest, self.profile) if a.host == self.name]

    @property
    def router(self):
        router = self.manifest.router
        return router if router is not None and self.name is not None and router.host == self.name else None

    def plan(self, bin_dir: str = "/", templates: str | None = None):
        return render.plan(self.manifest, self.name, self.profile, bin_dir=bin_dir, templates=templates)

    def describe(self) -> str:
        return self.name if self.label == self.name else f"{self.label} (manifest host {self.name})"


def read_record(host) -> tuple[dict | None, str | None]:
    result = host.run("cat -- %s", RECORD)
    if result.rc != 0:
        why = (result.stderr or result.stdout).strip() or f"exit status {result.rc}"
        if "No such file" in why:
            return None, f"{RECORD} is missing: agentkit install never ran here (or uninstall did)"
        return None, f"cannot read {RECORD}: {why}"
    try:
        data = json.loads(result.stdout)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return None, f"{RECORD} is not agentkit's record ({exc})"
    return data, None


def resolve(target: Target, option_host: str | None) -> None:
    """Which manifest host and profile `target` is; sets name/how/problem and record/profile."""
    m = target.manifest
    hosts = ", ".join(m.hosts)
    tried = []
    host = target.host
    if getattr(host.backend, "HAS_RUN_ANSIBLE", False):
        variables = host.ansible.get_variables()
        inventory_name = variables.get("inventory_hostname", target.label)
        if variables.get("agentkit_host"):
            name = str(variables["agentkit_host"])
            if name not in m.hosts:
                target.problem = (f"the inventory variable agentkit_host of {inventory_name} is {name!r}, "
                                  f"not a host of {m.root} ({hosts})")
                return _read(target)
            target.name, target.how = name, f"inventory variable agentkit_host of {inventory_name}"
        elif inventory_name in m.hosts:
            target.name, target.how = inventory_name, "inventory_hostname"
        else:
            tried.append(f"its inventory name {inventory_name!r} is not one of them and it has no agentkit_host "
                         "variable")
        try:
            target.manifest = manifest_mod.with_addresses(m, inventory_addresses(host, m), "the inventory's address")
        except AgentkitError as exc:
            target.problem = str(exc)
            return _read(target)
    if target.name is None and option_host:
        if option_host not in m.hosts:
            target.problem = f"--agentkit-host {option_host!r} is not a host of {m.root} ({hosts})"
            return _read(target)
        target.name, target.how = option_host, "--agentkit-host"
    _read(target)
    if target.name is None:
        recorded = (target.record or {}).get("host")
        if recorded in m.hosts:
            target.name, target.how = recorded, f"the host named in its {RECORD}"
        else:
            tried.append("no --agentkit-host was given")
            tried.append(f"its record names host {recorded!r}" if target.record is not None else
                         f"its record is unusable: {target.record_error}")
            target.problem = (f"cannot tell which host of {m.root} ({hosts}) {target.label} is: "
                              + "; ".join(tried) + ". Set agentkit_host in the inventory, or give --agentkit-host.")


def inventory_addresses(host, m: Manifest) -> dict[str, str]:
    """The addresses the agentkit role gives `agentkit --address`: each host of the group
    agentkit_group (agentkit_hosts) at its agentkit_address, else its ansible_host."""
    runner = host.backend.ansible_runner
    own = runner.get_variables(host.backend.host)
    addresses = {}
    for member in own.get("groups", {}).get(own.get("agentkit_group") or "agentkit_hosts", []):
        variables = runner.get_variables(member)
        name = str(variables.get("agentkit_host") or member)
        if name in m.hosts:
            addresses[name] = str(variables.get("agentkit_address") or variables.get("ansible_host") or member)
    return addresses


def _read(target: Target) -> None:
    target.record, target.record_error = read_record(target.host)
    m = target.manifest
    profile = (target.record or {}).get("profile")
    if profile in m.profiles:
        target.profile = profile
    else:
        target.profile = m.default_profile
        target.profile_note = (f"the record names profile {profile!r}, not one of the manifest's; "
                               if target.record is not None else "no record; ") + \
            f"checked against the default profile {m.default_profile!r}"


# --- the snapshot -------------------------------------------------------------------

class ProbeError(Exception):
    pass


@dataclass
class Snapshot:
    units: dict[str, dict[str, str]]
    failed: list[dict[str, str]]
    listening: list[tuple[str, int]]
    files: dict[str, str]
    exec_path: str | None
    health: dict[str, dict]
    errors: dict[str, str] = field(default_factory=dict)  # what could not be read: show, failed, listening, files

    def unit(self, name: str) -> dict[str, str]:
        return self.units.get(name) or {"Id": name, "LoadState": "not-found", "ActiveState": "inactive",
                                        "SubState": "dead"}

    def wanted_by_target(self, name: str) -> bool:
        return name in self.unit(units.TARGET).get("Wants", "").split()

    def listeners(self, port: int) -> list[str]:
        return [address for address, p in self.listening if p == port]


def unit_names(target: Target) -> list[str]:
    """Every unit the manifest gives this host, and every one the record says agentkit installed."""
    names = {f.path for f in target.plan()} | set((target.record or {}).get("files", {}))
    return sorted(n for n in names | {units.TARGET} if "@." not in n and n.endswith(INSTANCE_SUFFIXES))


def health_url(address: str, port: int) -> str:
    if address in ("0.0.0.0", ""):
        address = "127.0.0.1"
    elif address == "::":
        address = "::1"
    if ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{port}/health"


def health_checks(target: Target) -> list[tuple[str, str]]:
    """(key, URL): every essential agent's health port, and the router's. Health ports are
    never socket-activated, and optional agents are not asked at all: nothing wakes."""
    checks = [(a.name, health_url("127.0.0.1", a.health_port))
              for a in target.agents if a.essential and a.health_port is not None]
    if target.router is not None:
        checks.append((units.ROUTER, health_url(target.router.bind, target.router.port)))
    return checks


def exec_units(target: Target, most: int = 5) -> list[str]:
    """Units whose ExecStart= names a program of the bin dir (install's --bin-dir): the first
    one installed tells which bin dir the host's units were rendered with."""
    names = [units.service(a.name) for a in target.agents if not a.command[0].startswith("/")][:most]
    return names + ([units.ROUTER] if target.router is not None else [])


def take(target: Target) -> Snapshot:
    request = {"units": unit_names(target), "props": list(PROPS), "unit_dir": UNIT_DIR,
               "exec_units": exec_units(target), "health": health_checks(target), "timeout": HEALTH_TIMEOUT}
    rc, out, err = remote_python(target.host, PROBE, request)
    if rc != 0:
        hint = " (python3 is needed on the host; Ansible needs it too)" if rc == 127 else ""
        raise ProbeError(f"the probe of {target.label} failed with exit status {rc}{hint}:\n{(err or out).strip()}")
    try:
        data = json.loads(out)
    except ValueError as exc:
        raise ProbeError(f"the probe of {target.label} printed no JSON ({exc}):\n{out[:2000]}\n{err[:2000]}") from None
    if data["errors"].get("show"):  # every check reads the units' states
        raise ProbeError(f"cannot read the units' states on {target.label}: {data['errors']['show']}")
    return Snapshot(units=data["units"], failed=data["failed"],
                    listening=[(a, int(p)) for a, p in data["listening"]], files=data["files"],
                    exec_path=data["exec_path"], health=data["health"], errors=data["errors"])


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def state(props: dict[str, str]) -> str:
    """'active/running', 'failed/failed (result exit-code, 3 restarts)', 'not installed'..."""
    if props.get("LoadState") == "not-found":
        return "not installed (LoadState=not-found)"
    text = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"
    extra = []
    if props.get("Result") not in (None, "", "success"):
        extra.append(f"result {props['Result']}")
    if props.get("NRestarts") not in (None, "", "0"):
        extra.append(f"{props['NRestarts']} restarts")
    if props.get("LoadState") not in (None, "loaded"):
        extra.append(f"LoadState={props['LoadState']}")
    return text + (f" ({', '.join(extra)})" if extra else "")


WILDCARDS = ("0.0.0.0", "::", "*")
