"""tests/infra: pytest-testinfra checks of hosts agentkit deployed, driven by the manifest.

    pytest --hosts=ansible://all --ansible-inventory=inventory/ tests/infra

Without --hosts every check here is skipped (with that reason): the project's own
`pytest` run collects this directory too, and must not check the machine it
runs on. See README.md here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentkit import manifest as manifest_mod
from agentkit.errors import AgentkitError
from agentkit.model import Agent

from .deployed import ProbeError, Snapshot, Target, resolve, take

REPO = Path(__file__).resolve().parents[2]
NO_HOSTS = ("tests/infra checks hosts agentkit deployed: give --hosts=ansible://all --ansible-inventory=inventory/ "
            "(or --hosts=ssh://HOST, local://; see tests/infra/README.md)")


def pytest_addoption(parser):
    group = parser.getgroup("agentkit", "agentkit deployed-host checks (tests/infra)")
    options = [
        ("--agentkit-manifest", "DIR", "the manifest the hosts were deployed from "
                                       f"(default: $AGENTKIT_MANIFEST, else {REPO / 'agents'})"),
        ("--agentkit-host", "NAME", "which host of the manifest a --hosts host is, when the inventory does not "
                                    "say (inventory variable agentkit_host, else inventory_hostname); "
                                    "else the host's own record says"),
        ("--agentkit-templates", "DIR", "the --templates DIR the hosts were installed with, for comparing their "
                                        "unit files"),
    ]
    for name, metavar, text in options:
        try:
            group.addoption(name, metavar=metavar, default=None, help=text)
        except ValueError:  # already added: a conftest above imported this hook to register them early
            pass


def _option(config, name):
    # Options of a conftest pytest did not load at start (a plain `pytest` from the
    # repository root reaches this directory late) are not parsed: their default.
    return config.getoption(name, default=None)


def manifest_dir(config) -> str:
    return _option(config, "agentkit_manifest") or os.environ.get("AGENTKIT_MANIFEST") or str(REPO / "agents")


@dataclass(frozen=True)
class Case:
    target: Target
    agent: Agent | None = None


_TARGETS = pytest.StashKey[list]()


def targets(config) -> list[Target]:
    """The --hosts hosts, each resolved to its manifest host and profile (one read of its record)."""
    if _TARGETS in config.stash:
        return config.stash[_TARGETS]
    import testinfra

    root = manifest_dir(config)
    try:
        m = manifest_mod.load(root)
    except AgentkitError as exc:
        pytest.fail(f"tests/infra: the manifest {root} does not load:\n{exc}", pytrace=False)
    opt = config.option
    hosts = testinfra.get_hosts(
        opt.hosts.split(","), connection=opt.connection, ssh_config=opt.ssh_config,
        ssh_identity_file=opt.ssh_identity_file, sudo=opt.sudo, sudo_user=opt.sudo_user,
        ansible_inventory=opt.ansible_inventory, force_ansible=opt.force_ansible)
    found = []
    for host in sorted(hosts, key=lambda h: h.backend.get_pytest_id()):
        label = host.backend.get_pytest_id().split("://", 1)[-1] or host.backend.get_connection_type()
        target = Target(host=host, label=label, manifest=m)
        try:
            resolve(target, _option(config, "agentkit_host"))
        except Exception as exc:  # noqa: BLE001 - unreachable, bad inventory...: that host's tests fail with it
            target.record_error = f"cannot reach {label}: {type(exc).__name__}: {exc}"
            target.profile = target.profile or m.default_profile
        found.append(target)
    names = [t.name for t in found if t.name is not None]
    for target in found:
        if target.name is None:
            target.id = target.label
        elif names.count(target.name) > 1 and target.label != target.name:
            target.id = f"{target.label}-as-{target.name}"
        else:
            target.id = target.name
    config.stash[_TARGETS] = found
    return found


# Each test function takes one of these arguments: what it is parametrized by.
def _cases(argname: str, found: list[Target]):
    out = []
    for t in found:
        if argname == "deployed":
            out.append(pytest.param(Case(t), id=t.id))
        elif argname == "essential":
            out += [pytest.param(Case(t, a), id=f"{t.id}-essential-{a.name}") for a in t.agents if a.essential]
        elif argname == "health":
            out += [pytest.param(Case(t, a), id=f"{t.id}-health-{a.name}")
                    for a in t.agents if a.essential and a.health_port is not None]
        elif argname == "optional":
            out += [pytest.param(Case(t, a), id=f"{t.id}-optional-{a.name}") for a in t.agents if a.optional]
        elif argname in ("router", "router_health"):
            if t.router is not None:
                out.append(pytest.param(Case(t), id=f"{t.id}-{argname.replace('_', '-')}"))
    return out


_NONE = {
    "essential": "no essential agents on {}",
    "health": "no essential agent with a health_port on {}",
    "optional": "no optional agents on {} in the deployed profile",
    "router": "the manifest's router: section is on none of {}",
    "router_health": "the manifest's router: section is on none of {}",
}


def pytest_generate_tests(metafunc):
    argname = next((n for n in ("deployed", "essential", "health", "optional", "router", "router_health")
                    if n in metafunc.fixturenames), None)
    if argname is None:
        return
    if metafunc.config.option.hosts is None:
        metafunc.parametrize(argname, [pytest.param(None, id="no-hosts", marks=pytest.mark.skip(reason=NO_HOSTS))])
        return
    found = targets(metafunc.config)
    cases = _cases(argname, found)
    if not cases:  # said, not silently "empty parameter set"
        where = ", ".join(f"{t.id} (profile {t.profile})" if t.name else t.id for t in found)
        reason = _NONE[argname].format(where) if all(t.name for t in found) else \
            f"{_NONE[argname].format(where)}; some hosts are not known: see test_record"
        cases = [pytest.param(None, id="none", marks=pytest.mark.skip(reason=reason))]
    metafunc.parametrize(argname, cases)


class Snapshots:
    """One probe per host, taken when its first check needs it; a failure is kept and
    reported by every check of that host (one attempt, not one per check)."""

    def __init__(self):
        self._taken: dict[int, Snapshot | Exception] = {}

    def of(self, target: Target) -> Snapshot:
        if target.problem is not None:
            pytest.fail(target.problem, pytrace=False)
        key = id(target)
        if key not in self._taken:
            try:
                self._taken[key] = take(target)
            except ProbeError as exc:
                self._taken[key] = exc
            except Exception as exc:  # noqa: BLE001 - the connection itself
                self._taken[key] = ProbeError(f"cannot probe {target.label}: {type(exc).__name__}: {exc}")
        taken = self._taken[key]
        if isinstance(taken, Exception):
            pytest.fail(str(taken), pytrace=False)
        return taken


@pytest.fixture(scope="session")
def snapshots() -> Snapshots:
    return Snapshots()


@pytest.fixture(scope="session")
def templates(pytestconfig):
    return _option(pytestconfig, "agentkit_templates")
