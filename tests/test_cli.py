"""The CLI, run as users run it: the installed `agentkit` program in a subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

AGENTKIT = str(Path(sys.executable).with_name("agentkit"))
BIN = ["--bin-dir", "/opt/agentkit/bin"]


def run(*args, cwd=REPO, manifest=None):
    argv = [AGENTKIT] + (["-m", str(manifest)] if manifest else []) + [str(a) for a in args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_validate_passes_the_reference_fleet():
    result = run("validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("agents: 77 agents on 2 hosts (24 essential, 53 optional)")


def test_render_writes_one_directory_per_host_and_diff_sees_no_change(tmp_path):
    result = run("render", "--out", tmp_path / "build", *BIN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        # The agents' services, the router and the status service (and the unit that makes its user).
        f"{tmp_path}/build/mainpc/: 58 services, 3 slices, 40 sockets, 1 target, 2 templates",
        f"{tmp_path}/build/pc2/: 24 services, 3 slices, 14 sockets, 1 target, 2 templates",
        f"{tmp_path}/build/prometheus/: Prometheus' scrape configuration and alert rules",
    ]
    same = run("diff", tmp_path / "build", *BIN)
    assert (same.returncode, same.stdout) == (0, "")


def test_diff_shows_changes_and_exits_1(tmp_path):
    run("render", "--out", tmp_path, *BIN)
    unit = tmp_path / "pc2" / "agentkit-CacheManager.service"
    unit.write_text(unit.read_text().replace("MemoryMax=4G", "MemoryMax=8G"))
    (tmp_path / "pc2" / "agentkit-Gone.service").write_text("[Service]\n")
    os.unlink(tmp_path / "pc2" / "agentkit.target")
    result = run("diff", tmp_path, "--host", "pc2", *BIN)
    assert result.returncode == 1
    assert "-MemoryMax=8G\n+MemoryMax=4G\n" in result.stdout
    assert f"--- {tmp_path}/pc2/agentkit-Gone.service\n+++ /dev/null" in result.stdout
    assert f"--- /dev/null\n+++ {tmp_path}/pc2/agentkit.target" in result.stdout
    assert result.stderr == "3 files differ\n"


def test_diff_against_an_installed_root(tmp_path):
    units = tmp_path / "etc" / "systemd" / "system"
    run("render", "--out", tmp_path / "b", "--host", "pc2", *BIN)
    shutil.copytree(tmp_path / "b" / "pc2", units)
    (units / "sshd.service").write_text("[Service]\n")  # not ours: never reported
    assert run("diff", "--root", tmp_path, "--host", "pc2", *BIN).returncode == 0
    (units / "agentkit-TutorAgent.socket").unlink()
    result = run("diff", "--root", tmp_path, "--host", "pc2", *BIN)
    assert result.returncode == 1 and "agentkit-TutorAgent.socket" in result.stdout
    assert "sshd" not in result.stdout


def test_rerender_replaces_stale_units_and_keeps_nothing_half_written(tmp_path):
    run("render", "--out", tmp_path, *BIN)
    stale = tmp_path / "pc2" / "agentkit-Removed.service"
    stale.write_text("[Service]\n")
    result = run("render", "--out", tmp_path, "--profile", "core", *BIN)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert not list((tmp_path / "pc2").glob("*.socket"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mainpc", "pc2", "prometheus"]  # no staging left behind


def test_render_refuses_a_directory_holding_other_files_and_writes_nothing(tmp_path):
    (tmp_path / "pc2").mkdir()
    (tmp_path / "pc2" / "notes.txt").write_text("mine")
    result = run("render", "--out", tmp_path, *BIN)
    assert result.returncode == 1
    assert result.stderr == (f"agentkit: error: {tmp_path}/pc2: holds files agentkit did not write (notes.txt); "
                             "choose another --out\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pc2"]
    assert (tmp_path / "pc2" / "notes.txt").read_text() == "mine"


def test_unknown_host_and_profile_are_clear_errors(tmp_path):
    result = run("render", "--out", tmp_path, "--host", "pc3", *BIN)
    assert (result.returncode, result.stderr) == (1, "agentkit: error: unknown host 'pc3' (hosts in agents: mainpc, pc2)\n")
    result = run("render", "--out", tmp_path, "--profile", "tiny", *BIN)
    assert result.returncode == 1
    assert result.stderr == "agentkit: error: unknown profile 'tiny' (profiles: core, vision, learning, full)\n"
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_2():
    assert run("render", "--no-such-flag").returncode == 2
    result = run("diff")
    assert result.returncode == 2 and "give a DIRECTORY rendered earlier, or --root ROOT" in result.stderr


def test_missing_manifest_directory(tmp_path):
    result = run("validate", manifest=tmp_path / "nope")
    assert (result.returncode, result.stderr.splitlines()[0]) == (1, f"{tmp_path}/nope: no such manifest directory")


def test_show_json_is_the_resolved_model():
    result = run("show", "--json")
    model = json.loads(result.stdout)
    assert model["profile"] == "full" and len(model["agents"]) == 77
    stt = next(a for a in model["agents"] if a["name"] == "STTService")
    assert stt["host"] == "mainpc" and stt["essential"] is True and stt["port"] == 5800
    assert stt["memory_max"] == "4G" and stt["restart"] == {"policy": "on-failure", "delay": "1s", "burst": 5,
                                                            "interval": "30s"}
    assert stt["where"] == "agents/speech_io.yaml:15"
    assert model["profiles"]["vision"] == ["CacheManager", "FaceRecognitionAgent", "VisionProcessingAgent"]
    assert model["hosts"]["pc2"]["ports"] == {"error_bus": 7160}


def test_show_table_lists_each_agent_of_the_host():
    lines = run("show", "--host", "pc2", "--backend", "systemd").stdout.splitlines()
    assert lines[0].split() == ["AGENT", "HOST", "CLASS", "PORT", "HEALTH", "ACTIVATION", "READY", "DEPENDS", "ON"]
    assert len(lines) == 1 + 22
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["UnifiedWebAgent"][5:7] == ["native", "notify"]
    # Under supervisord the activator holds every optional agent's port and forwards to it.
    rows = {line.split()[0]: line.split() for line in run("show", "--host", "pc2", "--backend", "supervisord")
            .stdout.splitlines()[1:]}
    assert rows["UnifiedWebAgent"][5] == "activator" and rows["MemoryOrchestratorService"][5] == "none"


def test_graph_formats():
    dot = run("graph", "--host", "pc2")
    assert dot.returncode == 0 and dot.stdout.startswith('digraph "reference"')
    assert '"UnifiedWebAgent" -> "FileSystemAssistantAgent";' in dot.stdout
    mermaid = run("graph", "--format", "mermaid", "--profile", "core")
    assert mermaid.stdout.startswith("flowchart LR") and "VisionProcessingAgent" not in mermaid.stdout


def test_validate_lists_dependencies_across_hosts():
    result = run("validate", manifest=REPO / "tests" / "data" / "features")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "dependencies across hosts (rendered as addresses in AGENTKIT_DEPENDS, not unit dependencies):",
        "  Remote (beta) -> Native (alpha, 10.0.0.1:5002)",
    ]


def test_address_overrides_reach_dependencies_and_address_of_values(tmp_path):
    """An inventory's addresses (--address) replace the manifest's wherever an agent uses one."""
    manifest = tmp_path / "agents"
    shutil.copytree(REPO / "tests" / "data" / "features", manifest)
    fleet = manifest / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace('SHARED: "from the host"', 'SHARED: "from the host"\n'
                                               '      BETA_AT: {address_of: beta}'))
    out = tmp_path / "out"
    result = run("--address", "alpha=192.168.7.1", "--address", "beta=b.lan", "render", "--out", out, *BIN,
                 manifest=manifest)
    assert result.returncode == 0, result.stderr
    remote = (out / "beta" / "agentkit-Remote.service").read_text()
    assert "Environment=AGENTKIT_DEPENDS=Native=192.168.7.1:5002\n" in remote
    native = (out / "alpha" / "agentkit-Native.service").read_text()
    assert "Environment=BETA_AT=b.lan\n" in native
    plain = run("render", "--out", tmp_path / "plain", *BIN, manifest=manifest)
    assert plain.returncode == 0, plain.stderr
    assert "Environment=BETA_AT=beta.example\n" in (tmp_path / "plain" / "alpha" / "agentkit-Native.service").read_text()
    model = json.loads(run("--address", "beta=b.lan", "show", "--json", manifest=manifest).stdout)
    assert model["hosts"]["beta"]["address"] == "b.lan"


@pytest.mark.parametrize("arg, message", [
    ("gamma=10.0.0.9", "agentkit: error: --address gamma=10.0.0.9: unknown host 'gamma' (hosts in {m}: alpha, beta)"),
    ("alpha=not an address", "agentkit: error: --address alpha=not an address: expected a host name or an IP address"),
    ("alpha", "Error: Invalid value for '--address': expected HOST=ADDRESS, got 'alpha'"),
])
def test_bad_address_overrides_are_clear_errors(tmp_path, arg, message):
    manifest = REPO / "tests" / "data" / "features"
    result = run("--address", arg, "show", manifest=manifest)
    assert result.returncode in (1, 2) and message.format(m=manifest) in result.stderr, result.stderr


def test_readme_documents_every_agent_setting():
    from agentkit.settings import AGENT_SETTINGS

    readme = (REPO / "README.md").read_text()
    missing = [name for name in AGENT_SETTINGS if f"`{name}`" not in readme]
    assert missing == []


def test_supervisord_render_replaces_its_own_files_and_diff_reads_them(tmp_path):
    # A second render replaces supervisord.conf and activator.json (it used to refuse
    # them as foreign: the output directory was judged by systemd's file names alone).
    state = ["--state-dir", tmp_path / "state"]
    for _ in range(2):
        result = run("render", "--backend", "supervisord", "--out", tmp_path / "b", *state, *BIN)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [f"{tmp_path}/b/mainpc/: 1 conf, 1 json",
                                              f"{tmp_path}/b/pc2/: 1 conf, 1 json",
                                              f"{tmp_path}/b/prometheus/: Prometheus' scrape configuration and alert rules"]
    same = run("diff", tmp_path / "b", "--backend", "supervisord", *state, *BIN)
    assert (same.returncode, same.stdout) == (0, "")
    conf = tmp_path / "b" / "pc2" / "supervisord.conf"
    conf.write_text(conf.read_text().replace("startretries=5", "startretries=9", 1))
    changed = run("diff", tmp_path / "b", "--backend", "supervisord", *state, *BIN)
    assert changed.returncode == 1 and "-startretries=9" in changed.stdout and "+startretries=5" in changed.stdout
    # Another backend's render of the same hosts replaces them whole (both are agentkit's) ...
    units = run("render", "--out", tmp_path / "b", *BIN)
    assert units.returncode == 0, units.stderr
    assert (tmp_path / "b" / "pc2" / "agentkit.target").exists() and not conf.exists()
    # ... but a file of the user's in there is never written over.
    (tmp_path / "b" / "pc2" / "notes.txt").write_text("mine\n")
    refused = run("render", "--backend", "supervisord", "--out", tmp_path / "b", *state, *BIN)
    assert refused.returncode == 1 and "holds files agentkit did not write (notes.txt)" in refused.stderr
    assert (tmp_path / "b" / "pc2" / "notes.txt").read_text() == "mine\n"
