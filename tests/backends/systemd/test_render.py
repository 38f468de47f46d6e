"""Rendering: golden files, the reference fleet's shape, and systemd's own verdict."""

import difflib
import os
import re
import subprocess

import pytest

from agentkit import files, graph, manifest
from agentkit.backends.systemd import render

from conftest import REPO

GOLDEN_BIN = "/opt/agentkit/bin"
FLEETS = {"reference": REPO / "agents", "features": REPO / "tests" / "data" / "features"}


def _plan_all(fleet: str, bin_dir: str, profile=None):
    m = manifest.load(str(FLEETS[fleet]))
    return m, {host: render.plan(m, host, profile, bin_dir=bin_dir) for host in m.hosts}


@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_rendered_units_match_golden_files(fleet, update_golden):
    _, plans = _plan_all(fleet, GOLDEN_BIN)
    for host, planned in plans.items():
        expected_dir = REPO / "tests" / "golden" / fleet / host
        if update_golden:
            files.replace_tree(str(expected_dir), planned)
        assert sorted(os.listdir(expected_dir)) == [f.path for f in planned], f"file list of {fleet}/{host}"
        for item in planned:
            expected = (expected_dir / item.path).read_text()
            if expected != item.text:
                diff = "".join(difflib.unified_diff(expected.splitlines(True), item.text.splitlines(True),
                                                    f"golden/{fleet}/{host}/{item.path}", "rendered"))
                pytest.fail(f"{fleet}/{host}/{item.path} differs from its golden file "
                            f"(pytest --update-golden after review):\n{diff}")


def test_rendering_is_deterministic():
    _, first = _plan_all("reference", GOLDEN_BIN)
    _, second = _plan_all("reference", GOLDEN_BIN)
    assert first == second


def test_reference_fleet_renders_77_services_and_53_sockets():
    _, plans = _plan_all("reference", GOLDEN_BIN)
    names = [f.path for planned in plans.values() for f in planned if "@" not in f.path]
    # And the router on mainpc; on each host the status service and the unit that makes its user.
    assert len([n for n in names if n.endswith(".service")]) == 77 + 1 + 2 * 2
    assert len([n for n in names if n.endswith(".socket")]) == 53 + 1  # and the router's
    assert {h: len([f for f in p if f.path.endswith(".service") and "@" not in f.path])
            for h, p in plans.items()} == {"mainpc": 55 + 1 + 2, "pc2": 22 + 2}


def test_every_requires_is_paired_with_the_same_after():
    """And an essential dependency is wanted and waited for, never required: a restart of a
    required unit would restart its dependants too (systemd 252)."""
    for fleet in FLEETS:
        m, plans = _plan_all(fleet, GOLDEN_BIN)
        for planned in plans.values():
            for item in planned:
                requires = " ".join(re.findall(r"^Requires=(.*)$", item.text, re.M)).split()
                after = " ".join(re.findall(r"^After=(.*)$", item.text, re.M)).split()
                wants = " ".join(re.findall(r"^Wants=(.*)$", item.text, re.M)).split()
                assert after[:len(requires)] == requires, item.path
                for unit in after[len(requires):]:
                    assert unit in wants and unit.endswith(".service"), (item.path, unit)
                essential = {f"agentkit-{a.name}.service" for a in m.agents.values() if a.essential}
                assert not essential & set(requires), item.path


def test_profile_installs_essentials_and_the_chosen_agents_with_their_dependencies():
    m, plans = _plan_all("reference", GOLDEN_BIN, profile="vision")
    sockets = sorted(f.path for planned in plans.values() for f in planned if f.path.endswith(".socket"))
    # VisionProcessingAgent needs CacheManager, an optional agent outside the profile's group.
    assert sockets == ["agentkit-CacheManager.socket", "agentkit-FaceRecognitionAgent.socket",
                       "agentkit-VisionProcessingAgent.socket", "agentkit-router.socket"]
    services = [f for planned in plans.values() for f in planned if f.path.endswith(".service") and "@" not in f.path]
    assert len(services) == 24 + 3 + 1 + 2 * 2  # the router, and each host's status service and its user's unit
    _, core = _plan_all("reference", GOLDEN_BIN, profile="core")
    assert [f.path for planned in core.values() for f in planned if f.path.endswith(".socket")] == [
        "agentkit-router.socket"]  # no optional agent's


def test_commands_are_never_wrapped_in_a_shell():
    for fleet in FLEETS:
        _, plans = _plan_all(fleet, GOLDEN_BIN)
        for planned in plans.values():
            for item in planned:
                for line in re.findall(r"^ExecStart=(.*)$", item.text, re.M):
                    assert not re.match(r"(/usr)?/bin/(ba|da)?sh\b", line), line
                    assert line.startswith("/"), line


def test_bare_program_names_resolve_in_the_bin_dir():
    _, plans = _plan_all("reference", "/srv/ak/bin")
    text = next(f.text for f in plans["mainpc"] if f.path == "agentkit-STTService.service")
    assert "\nExecStart=/srv/ak/bin/agentkit-agent\n" in text


def test_user_templates_replace_packaged_ones_by_name(tmp_path):
    (tmp_path / "agentkit.target.j2").write_text("[Unit]\nDescription=custom {{ host }}\n")
    m = manifest.load(str(FLEETS["reference"]))
    planned = render.plan(m, "pc2", bin_dir=GOLDEN_BIN, templates=str(tmp_path))
    assert next(f.text for f in planned if f.path == "agentkit.target") == "[Unit]\nDescription=custom pc2\n"
    assert any(f.path == "agentkit-CacheManager.service" for f in planned)


@pytest.mark.systemd
@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_systemd_analyze_verify_says_nothing(fleet, systemd_analyze, bin_dir, tmp_path):
    """systemd-analyze verify exits 0 on some warnings: any output at all fails."""
    _, plans = _plan_all(fleet, bin_dir)
    for host, planned in plans.items():
        directory = tmp_path / host
        files.replace_tree(str(directory), planned)
        result = subprocess.run([systemd_analyze, "verify", "--man=no", *sorted(os.listdir(directory))],
                                cwd=directory, capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), f"{fleet}/{host}"


@pytest.mark.systemd
def test_systemd_analyze_verify_catches_a_broken_unit(systemd_analyze, bin_dir, tmp_path):
    """The check above can fail: an unknown directive is reported (with exit status 0)."""
    _, plans = _plan_all("features", bin_dir)
    files.replace_tree(str(tmp_path / "alpha"), plans["alpha"])
    unit = tmp_path / "alpha" / "agentkit-Base.service"
    unit.write_text(unit.read_text() + "RestartSteps=3\n")  # systemd 254's, not 252's
    result = subprocess.run([systemd_analyze, "verify", "--man=no", unit.name], cwd=unit.parent,
                            capture_output=True, text=True, timeout=60)
    assert "RestartSteps" in result.stdout + result.stderr


def test_start_order_puts_dependencies_first():
    m = manifest.load(str(FLEETS["reference"]))
    order = [a.name for a in graph.start_order(list(m.agents.values()))]
    position = {name: i for i, name in enumerate(order)}
    assert len(order) == 77
    for agent in m.agents.values():
        for dep in agent.depends_on:
            assert position[dep] < position[agent.name], (dep, agent.name)


@pytest.mark.systemd
@pytest.mark.parametrize("bind, listen", [("0.0.0.0", "0.0.0.0:8090"), ("::", "[::]:8090"),
                                          ("fe80::1", "[fe80::1]:8090")])
def test_the_router_socket_listens_where_the_router_binds(bind, listen, systemd_analyze, tmp_path):
    """(A scoped address, fe80::1%lo, is refused by the manifest: ListenStream= cannot hold it.)"""
    assert render._listen_stream(bind, 8090) == listen
    unit = tmp_path / "agentkit-router.socket"
    unit.write_text(f"[Unit]\nDescription=x\n\n[Socket]\nListenStream={listen}\n")
    (tmp_path / "agentkit-router.service").write_text("[Service]\nExecStart=/bin/true\n")
    result = subprocess.run([systemd_analyze, "verify", "--man=no", unit.name], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
