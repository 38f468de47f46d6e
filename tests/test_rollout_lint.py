"""The Ansible rollout (ansible/, inventory/) holds to ansible-lint's production
profile and parses; tests/e2e/test_ansible.py runs it against two hosts."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent


def _env(tmp_path):
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "NO_COLOR": "1",
            "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp")}


def test_ansible_lint_production_profile_is_clean(tmp_path):
    result = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor",
                             "ansible/", "inventory/"], cwd=REPO, capture_output=True, text=True, env=_env(tmp_path),
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


def test_playbook_parses_and_deploys_both_hosts(tmp_path):
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventory/", "ansible/site.yml", "--list-hosts"],
                            cwd=REPO, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    deploy = result.stdout.split("play #2")[1]  # (the e2e test checks the order: mainpc first)
    assert "Deploy the agentkit fleet" in deploy and "mainpc" in deploy and "pc2" in deploy
