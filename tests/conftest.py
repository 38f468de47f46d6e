import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/ from the current templates (never in CI)")


@pytest.fixture
def update_golden(request):
    wanted = request.config.getoption("--update-golden")
    if wanted and os.environ.get("CI"):
        pytest.fail("--update-golden is for people reviewing a template change, never for CI")
    return wanted


@pytest.fixture(scope="session")
def systemd_analyze():
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing in CI: .ci/run must install Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (Debian package systemd); .ci/run installs it")
    return path


@pytest.fixture
def bin_dir(tmp_path):
    """A stand-in for the hosts' agentkit bin directory.

    systemd-analyze verify checks that every ExecStart= program exists. The
    reference agent and the router are not installed on the test machine, so the
    bin dir holds links to a real interpreter under their names.
    """
    directory = tmp_path / "bin"
    directory.mkdir()
    for program in ("agentkit-agent", "agentkit-router", "agentkit-ready", "agentkit-status", "agentkit-admit"):
        (directory / program).symlink_to(os.path.realpath("/usr/bin/python3"))
    return str(directory)
