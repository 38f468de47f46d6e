"""End-to-end tests: agentkit against the host's own systemd booted in systemd-nspawn.

Needs root and systemd-nspawn (Debian package systemd-container). Without them
every test here is skipped, except under CI (environment variable CI set),
where they fail: CI must not pass by skipping its end-to-end tests.

The containers share the host's network namespace (its ports are the host's
ports), so tests here must not run two containers that listen on the same
ports at once; the reference fleet's ports are fixed, so these tests run
serially, in one process (no pytest-xdist spreading them).
"""

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from .container import SystemdContainer, close_all, requirements_missing

HERE = Path(__file__).resolve().parent

_boot_seconds: list[float] = []


def _in_e2e(item) -> bool:
    return HERE in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config, items):
    missing = requirements_missing()
    for item in items:
        if not _in_e2e(item):
            continue
        item.add_marker(pytest.mark.e2e)
        if missing and not os.environ.get("CI"):
            item.add_marker(pytest.mark.skip(reason=f"e2e: {missing}"))


@pytest.fixture(scope="session", autouse=True)
def _e2e_requirements():
    missing = requirements_missing()
    if missing:  # only reached under CI: the tests were marked skip otherwise
        pytest.fail(f"e2e tests cannot run in CI: {missing}", pytrace=False)



CHECKOUT = HERE.parents[1]
# agentkit's units run sandboxed: PrivateTmp= and ProtectHome= hide these from the agents.
HIDDEN_FROM_AGENTS = ("/tmp/", "/var/tmp/", "/root/", "/home/", "/run/user/")


@pytest.fixture(scope="session")
def agentkit_bin(tmp_path_factory) -> Path:
    """The bin directory of an agentkit the containers' sandboxed agents can run.

    Normally the checkout's own .venv. A checkout where the sandbox hides it (a
    clone under /tmp, say) gets a non-editable install in a venv under /opt for
    the session, removed afterwards.
    """
    here = Path(sys.executable).parent
    if not str(CHECKOUT).startswith(HIDDEN_FROM_AGENTS):
        yield here
        return
    venv = Path("/opt") / f"agentkit-e2e-{os.getpid()}"
    source = tmp_path_factory.mktemp("agentkit-source")
    try:
        shutil.copytree(CHECKOUT, source, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=300)
        # uvicorn: the third-party server tests/e2e/test_byo.py runs as an agent.
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(source),
                        "uvicorn"], check=True, timeout=600)
        yield venv / "bin"
    finally:
        shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture(scope="session")
def e2e_log_dir(tmp_path_factory):
    """Where each container's nspawn/console output goes (kept after the run)."""
    return tmp_path_factory.mktemp("e2e-containers")


@pytest.fixture
def container_factory(e2e_log_dir, agentkit_bin):
    """Boot containers: factory(**SystemdContainer options). All closed at teardown.
    agentkit_bin's venv is bound in read-only at its own path."""
    made: list[SystemdContainer] = []

    def factory(**options) -> SystemdContainer:
        options.setdefault("log_dir", e2e_log_dir)
        venv = str(agentkit_bin.parent)
        if not venv.startswith(str(CHECKOUT)):
            options["bind_ro"] = list(options.get("bind_ro", ())) + [venv]
        c = SystemdContainer(start=False, **options)
        made.append(c)  # before booting: a failed boot is closed too
        c.start()
        _boot_seconds.append(c.boot_seconds)
        return c

    yield factory
    _close_each(made, "closing containers", lambda c: c.name)


@pytest.fixture
def container(container_factory) -> SystemdContainer:
    """One booted container, shut down after the test."""
    return container_factory()


def boot_seconds() -> list[float]:
    """Boot times (seconds) of the containers the fixtures made in this session."""
    return list(_boot_seconds)


def pytest_terminal_summary(terminalreporter):
    if _boot_seconds:
        times = sorted(_boot_seconds)
        terminalreporter.write_line(
            f"e2e: {len(times)} container boots: p50 {statistics.median(times):.2f} s, "
            f"min {times[0]:.2f} s, max {times[-1]:.2f} s")


def pytest_unconfigure(config):
    close_all()  # interrupted runs (^C) included; atexit and SIGTERM are covered in container.py


@pytest.fixture
def lab_factory(container_factory, tmp_path):
    """Make labs of hosts on a private bridge reached over SSH (twohosts.Lab):
    factory(names=("mainpc", "pc2"), **Lab options). All closed at teardown."""
    from .twohosts import Lab

    made = []

    def factory(names=("mainpc", "pc2"), **options):
        options.setdefault("workdir", tmp_path / f"lab{len(made) + 1}")
        lab = Lab(container_factory, names, start=False, **options)
        made.append(lab)  # before starting: a failed start is closed too
        return lab.start()

    yield factory
    _close_each(made, "closing labs", lambda lab: lab.bridge)


def _close_each(made: list, what: str, name) -> None:
    """Close every one of `made`, newest first, even when some fail; then fail naming those."""
    errors = []
    for thing in reversed(made):
        try:
            thing.close()
        except Exception as exc:  # close the others anyway
            errors.append(f"{name(thing)}: {exc}")
    if errors:
        pytest.fail(f"{what}: " + "; ".join(errors), pytrace=False)
