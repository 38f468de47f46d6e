"""The e2e harness itself, against the real systemd: boot, run, D-Bus, socket activation, cleanup."""

import os
import socket
import statistics
import time
from pathlib import Path

import pytest

from .container import (CGROUP_PARENT, ContainerCommandError, SystemdContainer, _sweep_stale_cgroups,
                        live_containers)

CHECKOUT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _processes_in_pid_ns(ns: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _pid_ns_empties(ns: str, timeout: float) -> list[int]:
    """The kernel tears a namespace's last processes down after its init is gone:
    poll (bounded) until none is left; return what is left then."""
    deadline = time.monotonic() + timeout
    left = _processes_in_pid_ns(ns)
    for _ in range(int(timeout / 0.05) + 1):
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
        left = _processes_in_pid_ns(ns)
    return left


def _nspawn_processes_named(machine: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"--machine={machine}".encode() in argv:
                found.append(int(entry))
    return found


def _assert_nothing_left(c: SystemdContainer, pid_ns: str, nspawn_pid: int, pid1: int):
    assert c.closed
    assert not os.path.exists(f"/proc/{nspawn_pid}"), "systemd-nspawn is still there"
    assert not os.path.exists(f"/proc/{pid1}"), "the container's PID 1 is still there"
    assert _processes_in_pid_ns(pid_ns) == [], "processes of the container's PID namespace remain"
    assert _nspawn_processes_named(c.name) == []
    assert not os.path.exists(f"/run/systemd/nspawn/propagate/{c.name}")
    for root in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        assert not os.path.exists(f"{root}/{CGROUP_PARENT}/{c.name}"), "its cgroup remains"
    assert c not in live_containers()


def test_boots_to_running_or_degraded(container):
    state = container.systemctl("is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded"), container.nspawn_output(40)
    # It is a container of its own: another PID namespace, our systemd as its PID 1.
    assert _pid_ns(container.pid1) != _pid_ns(os.getpid())
    assert container.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert container.run(["systemd-detect-virt", "--container"], check=False).stdout.strip() == "systemd-nspawn"
    assert container.run(["hostname"]).stdout.strip() == container.name
    # --volatile=yes: the host's /usr, and an /etc on tmpfs that systemd filled itself
    assert (container.root / "usr/lib/os-release").exists()
    assert (container.root / "etc/machine-id").exists()
    assert not (container.root / "etc/os-release").exists()


def test_run_failure_shows_argv_status_and_stderr(container):
    with pytest.raises(ContainerCommandError) as info:
        container.run(["ls", "-l", "/no such dir"])
    message = str(info.value)
    assert "ls -l '/no such dir'" in message
    assert "exit status 2" in message
    assert "No such file or directory" in message
    assert info.value.returncode == 2
    assert not container.run(["false"], check=False).returncode == 0
    with pytest.raises(TypeError):
        container.run("ls /")  # never a shell string


def test_run_timeout_kills_the_command(container):
    started = time.monotonic()
    with pytest.raises(ContainerCommandError, match="timed out after 0.5 s"):
        container.run(["sleep", "300"], timeout=0.5)
    assert time.monotonic() - started < 15
    # Killed with nsenter's process group. (It may linger a moment as a zombie:
    # orphaned by nsenter, it is reaped by the host's PID 1, not the container's.)
    states = container.run(["ps", "-C", "sleep", "-o", "stat="], check=False).stdout.split()
    assert all(s.startswith("Z") for s in states), f"sleep still runs inside: {states}"


def test_run_env_is_clean_and_extendable(container):
    env = container.run(["env"], env={"AK_TEST": "1"}).stdout.splitlines()
    assert "AK_TEST=1" in env
    assert not any(line.startswith(("DBUS_SYSTEM_BUS_ADDRESS=", "VIRTUAL_ENV=", "PYTEST_")) for line in env)


def test_checkout_venv_runs_inside(container):
    python = f"{CHECKOUT}/.venv/bin/python"
    out = container.run([python, "-c", "import agentkit, sys; print(agentkit.__file__); print(sys.prefix)"]).stdout
    assert out.split() == [f"{CHECKOUT}/toolkit/__init__.py", f"{CHECKOUT}/.venv"]
    # read-only: the container cannot change the checkout
    denied = container.run(["touch", f"{CHECKOUT}/e2e-must-not-exist"], check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert not (CHECKOUT / "e2e-must-not-exist").exists()


def test_sdbus_from_the_host_reads_systemd_version(container):
    import sdbus

    class SystemdManager(sdbus.DbusInterfaceCommon, interface_name="org.freedesktop.systemd1.Manager"):
        @sdbus.dbus_property("s")
        def version(self) -> str:
            raise NotImplementedError

        @sdbus.dbus_property("s")
        def virtualization(self) -> str:
            raise NotImplementedError

    before = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    bus = container.open_system_bus()
    assert os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") == before
    manager = SystemdManager("org.freedesktop.systemd1", "/org/freedesktop/systemd1", bus)
    inside = container.run(["systemctl", "show", "-P", "Version"]).stdout.strip()
    assert manager.version == inside
    assert manager.virtualization == "systemd-nspawn"  # it is the container's systemd, not some other


def test_socket_activation_from_the_host(container):
    port = _free_port()
    container.write_file("/etc/systemd/system/ak-hello.socket", f"""\
[Socket]
ListenStream=127.0.0.1:{port}

[Install]
WantedBy=sockets.target
""")
    serve = ("import socket; s = socket.socket(fileno=3); c, _ = s.accept(); "
             "c.sendall(b'hello'); c.close()")
    container.write_file("/etc/systemd/system/ak-hello.service", f"""\
[Service]
ExecStart=/usr/bin/python3 -c "{serve}"
""")
    container.systemctl("daemon-reload")
    container.systemctl("start", "ak-hello.socket")
    assert container.systemctl("is-active", "ak-hello.service", check=False).stdout.strip() == "inactive"

    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.settimeout(10)
        data = b""
        for _ in range(100):
            chunk = conn.recv(100)
            if not chunk:
                break
            data += chunk
    assert data == b"hello", container.journal("ak-hello.service")
    assert "Started ak-hello.service" in container.journal("ak-hello.service")
    assert container.systemctl("is-active", "ak-hello.socket", check=False).stdout.strip() == "active"


def test_containers_have_their_own_cgroups(container_factory):
    # nspawn --keep-unit puts the payload under the cgroup it starts in: without one
    # cgroup per container, two containers would share <cgroup>/payload/system.slice.
    a, b = container_factory(hostname="mainpc"), container_factory(hostname="pc2")
    assert a.run(["hostname"]).stdout.strip() == "mainpc"
    assert b.run(["hostname"]).stdout.strip() == "pc2"
    assert Path(f"/proc/{a.pid1}/cgroup").read_text() != Path(f"/proc/{b.pid1}/cgroup").read_text()
    for c in (a, b):
        c.run(["systemd-run", "--unit=ak-twin", "sleep", "infinity"])
    a.systemctl("stop", "ak-twin")
    assert a.systemctl("is-active", "ak-twin", check=False).stdout.strip() == "inactive"
    assert b.systemctl("is-active", "ak-twin", check=False).stdout.strip() == "active"
    assert b.run(["pgrep", "-x", "sleep"], check=False).returncode == 0


def test_close_leaves_nothing(tmp_path):
    c = SystemdContainer(log_dir=tmp_path)
    pid_ns, nspawn_pid, pid1 = _pid_ns(c.pid1), c.nspawn_pid, c.pid1
    c.run(["systemd-run", "--unit=ak-linger", "sleep", "infinity"])
    assert len(_processes_in_pid_ns(pid_ns)) > 1
    c.close()
    _assert_nothing_left(c, pid_ns, nspawn_pid, pid1)
    c.close()  # idempotent
    assert c.stop_seconds is not None and c.stop_seconds < c.stop_timeout
    assert "has been shut down" in c.nspawn_output()
    with pytest.raises(Exception, match="not running"):
        c.pid1


def test_close_after_a_failing_body(tmp_path):
    seen = {}
    with pytest.raises(ZeroDivisionError):
        with SystemdContainer(log_dir=tmp_path) as c:
            seen.update(pid_ns=_pid_ns(c.pid1), nspawn_pid=c.nspawn_pid, pid1=c.pid1)
            1 / 0
    _assert_nothing_left(c, **seen)


def test_boot_failure_is_reported_and_cleaned_up(tmp_path):
    # A bind of a missing directory makes nspawn exit before booting.
    with pytest.raises(Exception) as info:
        SystemdContainer(log_dir=tmp_path, bind_ro=["/nonexistent-e2e-dir:/x"], boot_timeout=20)
    message = str(info.value)
    assert "systemd-nspawn exited" in message and "/nonexistent-e2e-dir" in message
    assert not any(c.log_dir == tmp_path for c in live_containers())


def test_boot_time(tmp_path, record_property):
    times = []
    for _ in range(3):
        with SystemdContainer(log_dir=tmp_path) as c:
            times.append(c.boot_seconds)
    p50 = statistics.median(times)
    record_property("boot_seconds", times)
    print(f"container boot to running/degraded: p50 {p50:.2f} s of {[round(t, 2) for t in times]}")
    assert p50 < 30


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from e2e.container import SystemdContainer
c = SystemdContainer(log_dir={log_dir!r})
c.run(["systemd-run", "--unit=ak-linger", "sleep", "infinity"])
print(c.name, c.nspawn_pid, c.pid1, flush=True)
time.sleep(600)  # the test kills this process; it never gets here
"""


def _start_child_with_container(tmp_path):
    import selectors
    import subprocess
    import sys

    code = CHILD.format(tests=str(CHECKOUT / "tests"), log_dir=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(child.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=90):
        child.kill()
        child.wait(timeout=10)
        pytest.fail("the child did not boot its container within 90 s")
    line = child.stdout.readline().split()
    assert len(line) == 3, f"child said {line!r} (exit {child.poll()})"
    name, nspawn_pid, pid1 = line[0], int(line[1]), int(line[2])
    return child, name, nspawn_pid, pid1, _pid_ns(pid1)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(delay)  # not our child: nothing to wait() on, so poll /proc
        delay = min(delay * 2, 0.2)
    return not os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGKILL"])
def test_container_dies_with_the_test_process(tmp_path, signum):
    """SIGTERM: the handler closes the containers. SIGKILL: PR_SET_PDEATHSIG makes nspawn stop."""
    import signal

    child, name, nspawn_pid, pid1, pid_ns = _start_child_with_container(tmp_path)
    try:
        os.kill(child.pid, getattr(signal, signum))
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert child.returncode == -getattr(signal, signum)
    assert _wait_gone(nspawn_pid, 30), f"{name}: systemd-nspawn outlived the test process"
    assert _wait_gone(pid1, 10)
    assert _pid_ns_empties(pid_ns, 10) == []
    assert _nspawn_processes_named(name) == []
    if signum == "SIGKILL":  # nobody was left to rmdir its cgroups: the next start sweeps them
        _sweep_stale_cgroups()
    for root in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        assert not os.path.exists(f"{root}/{CGROUP_PARENT}/{name}")


PLUGIN = """
import sys
sys.path.insert(0, {tests!r})
import e2e.container
e2e.container.NSPAWN = "systemd-nspawn-is-not-here"
"""


@pytest.mark.parametrize("ci", [False, True])
def test_missing_nspawn_skips_but_fails_in_ci(tmp_path, ci):
    import subprocess
    import sys

    (tmp_path / "no_nspawn.py").write_text(PLUGIN.format(tests=str(CHECKOUT / "tests")))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(tmp_path)
    if ci:
        env["CI"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no_nspawn", "-p", "no:cacheprovider", "-rA",
         f"{Path(__file__).resolve()}::test_boots_to_running_or_degraded"],
        cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert "systemd-nspawn-is-not-here is not installed" in out, out
    if ci:
        assert result.returncode == 1 and "1 error" in out, out
        assert "e2e tests cannot run in CI" in out, out
    else:
        assert result.returncode == 0 and "1 skipped" in out, out
