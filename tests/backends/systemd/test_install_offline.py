"""agentkit install/uninstall under a --root that is not running (an image being built):
files, the ownership record, and what is never touched. The live path (D-Bus, start
jobs) is tested against a real systemd in tests/e2e."""

import json
import shutil

from test_cli import BIN, run

from conftest import REPO


def units(root):
    return root / "etc" / "systemd" / "system"


def test_install_writes_units_record_and_enables_the_target(tmp_path):
    result = run("install", "--host", "pc2", "--root", tmp_path, *BIN)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in units(tmp_path).iterdir() if p.is_file())
    assert len(names) == 44 and "agentkit.target" in names  # 42, the status service and its user's unit
    link = units(tmp_path) / "multi-user.target.wants" / "agentkit.target"
    assert link.is_symlink() and str(link.readlink()) == "/etc/systemd/system/agentkit.target"
    record = json.loads((tmp_path / "var/lib/agentkit/installed.json").read_text())
    assert (record["host"], record["profile"]) == ("pc2", "full") and sorted(record["files"]) == names


def test_second_install_changes_nothing_and_dry_run_says_so(tmp_path):
    run("install", "--host", "pc2", "--root", tmp_path, *BIN)
    before = {p.name: p.stat().st_mtime_ns for p in units(tmp_path).iterdir() if p.is_file()}
    again = run("install", "--host", "pc2", "--root", tmp_path, *BIN)
    assert again.returncode == 0 and "unit files unchanged" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in units(tmp_path).iterdir() if p.is_file()} == before
    dry = run("install", "--host", "pc2", "--root", tmp_path, "--dry-run", *BIN)
    assert (dry.returncode, dry.stdout, dry.stderr) == (0, "", "nothing to change\n")


def test_install_json_says_what_changed_for_ansible(tmp_path):
    first = run("install", "--host", "pc2", "--root", tmp_path, "--json", *BIN)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)  # stdout is the JSON alone; progress went to stderr
    assert (report["host"], report["profile"], report["changed"]) == ("pc2", "full", True)
    assert len(report["added"]) == 44 and report["updated"] == report["removed"] == []
    assert report["failed"] == {} and "installing 44 unit files" in first.stderr
    again = json.loads(run("install", "--host", "pc2", "--root", tmp_path, "--json", *BIN).stdout)
    assert again["changed"] is False and again["added"] == []


def test_removed_agents_lose_their_units_and_nothing_else(tmp_path):
    manifest = tmp_path / "agents"
    shutil.copytree(REPO / "agents", manifest)
    root = tmp_path / "root"
    run("install", "--host", "pc2", "--root", root, *BIN, manifest=manifest)
    (units(root) / "sshd.service").write_text("[Service]\nExecStart=/usr/sbin/sshd\n")  # the host's own
    text = (manifest / "auth_security_services.yaml").read_text()
    (manifest / "auth_security_services.yaml").write_text(text[:text.index("  AgentTrustScorer:")])
    dry = run("install", "--host", "pc2", "--root", root, "--dry-run", *BIN, manifest=manifest)
    assert dry.returncode == 1
    assert "would add 0, change 1, remove 2 unit file(s)" in dry.stderr  # the target changes
    assert f"--- {units(root)}/agentkit-AgentTrustScorer.socket\n+++ /dev/null" in dry.stdout
    result = run("install", "--host", "pc2", "--root", root, *BIN, manifest=manifest)
    assert result.returncode == 0, result.stderr
    assert not (units(root) / "agentkit-AgentTrustScorer.service").exists()
    assert not (units(root) / "agentkit-AgentTrustScorer.socket").exists()
    assert (units(root) / "agentkit-AuthenticationAgent.service").exists()
    assert (units(root) / "sshd.service").read_text().startswith("[Service]")


def test_a_unit_that_is_not_ours_is_never_overwritten(tmp_path):
    units(tmp_path).mkdir(parents=True)
    (units(tmp_path) / "agentkit-CacheManager.service").write_text("[Service]\nExecStart=/bin/true\n")
    result = run("install", "--host", "pc2", "--root", tmp_path, *BIN)
    assert result.returncode == 1
    assert result.stderr == (f"agentkit: error: {units(tmp_path)}/agentkit-CacheManager.service: exists and was "
                             "not installed by agentkit; move it away first\n")
    assert [p.name for p in units(tmp_path).iterdir()] == ["agentkit-CacheManager.service"]


def test_a_hand_edited_unit_needs_force(tmp_path):
    run("install", "--host", "pc2", "--root", tmp_path, *BIN)
    unit = units(tmp_path) / "agentkit-CacheManager.service"
    unit.write_text(unit.read_text() + "# mine\n")
    refused = run("install", "--host", "pc2", "--root", tmp_path, *BIN)
    assert refused.returncode == 1 and "changed by hand since agentkit installed it" in refused.stderr
    assert unit.read_text().endswith("# mine\n")
    forced = run("install", "--host", "pc2", "--root", tmp_path, "--force", *BIN)
    assert forced.returncode == 0 and not unit.read_text().endswith("# mine\n")


def test_uninstall_removes_all_it_owns_and_nothing_else(tmp_path):
    run("install", "--host", "pc2", "--root", tmp_path, *BIN)
    (units(tmp_path) / "sshd.service").write_text("[Service]\n")
    result = run("uninstall", "--root", tmp_path)
    assert result.returncode == 0 and "removed 44 unit file(s)" in result.stdout
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir())
    assert left == ["etc/systemd/system/sshd.service"]
    assert run("uninstall", "--root", tmp_path).stdout == "nothing installed by agentkit here\n"
