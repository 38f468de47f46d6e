"""The wheel, built and installed into a fresh virtualenv, renders the same files:
the templates really ship inside the package."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from agentkit import manifest
from agentkit.backends.systemd import render

from conftest import REPO


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_renders_what_the_checkout_renders(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info",
                                                               "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                   check=True, timeout=600)
    (wheel,) = wheels.glob("agentkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "templates").glob("*/*.j2"))
    assert len(templates) > 8
    for template in templates:  # each backend's templates folder
        assert f"agentkit/{template}" in names
    modules = sorted(p.relative_to(REPO / "toolkit").as_posix() for p in (REPO / "toolkit").rglob("*.py"))
    assert [m for m in modules if f"agentkit/{m}" not in names] == []  # every package is listed in pyproject

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=600)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import agentkit; print(agentkit.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv))

    out = tmp_path / "out"
    subprocess.run([str(venv / "bin" / "agentkit"), "-m", str(REPO / "agents"), "render", "--out", str(out),
                    "--bin-dir", "/opt/agentkit/bin"], cwd=tmp_path, check=True, timeout=120)
    m = manifest.load(str(REPO / "agents"))
    for host in m.hosts:
        planned = render.plan(m, host, bin_dir="/opt/agentkit/bin")
        assert sorted(p.name for p in (out / host).iterdir()) == [f.path for f in planned]
        for item in planned:
            assert (out / host / item.path).read_text() == item.text, item.path
