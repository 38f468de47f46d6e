"""The two-host lab (twohosts.Lab) itself: real SSH, a private network, Ansible and testinfra reach it, cleanup."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .container import ContainerError, _pid_alive
from .twohosts import LAB_RUN, Lab, LabError, _bridges, _processes_mentioning, _used_subnets, sweep_stale_labs

VENV_BIN = Path(sys.executable).parent

# Serves its hostname to every client on the socket systemd passes it (fd 3).
SERVE_HOSTNAME = ("import socket\ns = socket.socket(fileno=3)\nwhile True:\n"
                  "    c, _ = s.accept(); c.sendall(socket.gethostname().encode()); c.close()")
ASK = ("import socket, sys\nc = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
       "c.settimeout(10); print(c.recv(100).decode())")


@pytest.fixture
def lab(lab_factory, record_property) -> Lab:
    lab = lab_factory()
    record_property("lab_boot_seconds", round(lab.boot_seconds, 2))
    return lab


def _ansible_env() -> dict:
    # testinfra runs ansible-inventory from PATH.
    return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "ANSIBLE_NOCOLOR": "1"}


def _live(pids) -> list[int]:
    return [p for p in pids if _pid_alive(p)]


def test_ssh_as_root_with_strict_host_keys(lab):
    assert list(lab.hosts) == ["mainpc", "pc2"]
    for name, host in lab.hosts.items():
        result = lab.ssh(name, ["sh", "-c", "echo $(id -un) $(hostname)"])
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["root", name]
        assert host.address.startswith(lab.host_address.rsplit(".", 1)[0] + ".")
        assert host.container.systemctl("is-active", "ssh.socket", "ssh.service", check=False).stdout.split() \
            == ["inactive", "inactive"]  # the host's own sshd units stay out of it
    assert "StrictHostKeyChecking=yes" in lab.ssh_common_args
    # Strict for real: without the lab's known_hosts the same login is refused.
    unknown = lab.workdir / "empty_known_hosts"
    unknown.write_text("")
    command = [a.replace(str(lab.known_hosts), str(unknown)) for a in lab.ssh("pc2", ["true"]).args]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr, refused.stderr


def test_hosts_reach_each_other_on_their_own_networks(lab):
    netns = {os.readlink(f"/proc/{h.container.pid1}/ns/net") for h in lab.hosts.values()}
    assert len(netns) == 2 and os.readlink("/proc/self/ns/net") not in netns
    with socket.create_server(("0.0.0.0", 0)) as here:  # this machine holds the port too: no collision
        port = here.getsockname()[1]
        for name in lab.hosts:  # the same port in both hosts
            started = lab.ssh(name, ["systemd-run", "--unit=lab-echo", f"--socket-property=ListenStream={port}",
                                     "/usr/bin/python3", "-c", SERVE_HOSTNAME])
            assert started.returncode == 0, started.stderr
        main, pc2 = lab.hosts["mainpc"], lab.hosts["pc2"]
        for client, server in ((pc2, main), (main, pc2)):
            answer = lab.ssh(client.name, ["/usr/bin/python3", "-c", ASK, server.address, str(port)], timeout=30)
            assert answer.returncode == 0, answer.stderr
            assert answer.stdout.strip() == server.name
        for host in (main, pc2):  # and this machine reaches both
            with socket.create_connection((host.address, port), timeout=10) as conn:
                conn.settimeout(10)
                assert conn.recv(100).decode() == host.name


def test_ansible_ping(lab):
    result = subprocess.run([str(VENV_BIN / "ansible"), "-i", str(lab.inventory), "all", "-m", "ansible.builtin.ping"],
                            capture_output=True, text=True, timeout=180, cwd=lab.workdir, env=_ansible_env())
    assert result.returncode == 0, result.stdout + result.stderr
    for name in lab.hosts:
        assert f"{name} | SUCCESS" in result.stdout, result.stdout


def test_testinfra_ansible_backend(lab):
    test_file = lab.workdir / "test_lab_hosts.py"
    test_file.write_text(
        "def test_reached_over_ssh(host):\n"
        "    assert host.backend.get_connection_type() == 'ansible'\n"
        "    assert host.run('hostname').stdout.strip() == host.backend.get_hostname()\n"
        "    assert host.system_info.distribution == 'debian'\n"
        "    assert host.service('agentkit-lab-sshd').is_running\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--hosts=ansible://all",
         f"--ansible-inventory={lab.inventory}", str(test_file)],
        capture_output=True, text=True, timeout=180, cwd=lab.workdir, env=_ansible_env())
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout + result.stderr
    for name in lab.hosts:
        assert f"test_reached_over_ssh[ansible://{name}] PASSED" in result.stdout, result.stdout


def test_close_leaves_nothing(lab_factory):
    lab = lab_factory()
    ping = subprocess.run([str(VENV_BIN / "ansible"), "-i", str(lab.inventory), "all", "-m", "ansible.builtin.ping"],
                          capture_output=True, text=True, timeout=180, cwd=lab.workdir, env=_ansible_env())
    assert ping.returncode == 0, ping.stdout + ping.stderr
    masters = _live(_processes_mentioning(f"{lab.run_dir}/"))
    assert len(masters) == 2, "Ansible's ControlPersist masters should be under the lab's ControlPath"
    nspawns = [h.container.nspawn_pid for h in lab.hosts.values()]
    pid1s = [h.container.pid1 for h in lab.hosts.values()]
    lab.close()
    lab.close()  # idempotent
    assert lab.bridge not in _bridges()
    assert lab.subnet not in _used_subnets()
    assert not lab.run_dir.exists()
    assert _live(masters + nspawns + pid1s) == []
    assert _live(_processes_mentioning(f"{lab.run_dir}/")) == []
    assert all(h.container.closed for h in lab.hosts.values())


def test_failed_start_cleans_up(container_factory, tmp_path):
    made = []

    def pc2_fails(**options):
        if options["hostname"] == "pc2":
            raise ContainerError("pc2 did not boot (on purpose)")
        made.append(container_factory(**options))
        return made[-1]

    lab = Lab(pc2_fails, workdir=tmp_path, start=False)
    with pytest.raises(ContainerError, match="on purpose"):
        lab.start()
    assert lab.closed and made and made[0].closed
    assert lab.bridge not in _bridges() and not lab.run_dir.exists()


def test_two_labs_at_once_do_not_collide(lab_factory):
    a, b = lab_factory(names=("mainpc",)), lab_factory(names=("mainpc",))
    assert a.bridge != b.bridge and a.subnet != b.subnet
    for lab in (a, b):
        assert lab.ssh("mainpc", ["hostname"]).stdout.strip() == "mainpc"


def test_stale_lab_of_a_killed_process_is_swept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"akbr{dead.pid}n1"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    run_dir = LAB_RUN / name
    run_dir.mkdir(parents=True)
    # stands in for an ssh master whose ControlPath is in that directory
    master = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", f"{run_dir}/0123abcd"])
    try:
        sweep_stale_labs()
        assert name not in _bridges()
        assert not run_dir.exists()
        assert master.wait(timeout=10) is not None
    finally:
        master.kill()
        master.wait()
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_ssh_timeout_is_bounded(lab):
    started = time.monotonic()
    with pytest.raises(LabError, match="timed out after 1 s"):
        lab.ssh("mainpc", ["sleep", "300"], timeout=1)
    assert time.monotonic() - started < 15


CHILD = """
import subprocess, sys, time
sys.path.insert(0, {tests!r})
from e2e.container import SystemdContainer
from e2e.twohosts import Lab
lab = Lab(lambda **o: SystemdContainer(log_dir={workdir!r}, **o), workdir={workdir!r})
subprocess.run([{ansible!r}, "-i", str(lab.inventory), "all", "-m", "ansible.builtin.ping"],
               check=True, capture_output=True, timeout=180, cwd={workdir!r})
print(lab.bridge, *(h.container.nspawn_pid for h in lab.hosts.values()), flush=True)
time.sleep(600)  # the test kills this process; it never gets here
"""


def test_lab_of_a_sigkilled_test_process_is_swept(tmp_path):
    """Its containers die with it (container.py); its bridge and ssh masters wait for the next sweep."""
    import selectors
    import signal

    code = CHILD.format(tests=str(Path(__file__).parents[1]), workdir=str(tmp_path),
                        ansible=str(VENV_BIN / "ansible"))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_ansible_env())
    try:
        sel = selectors.DefaultSelector()
        sel.register(child.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=120), "the child did not build its lab within 120 s"
        line = child.stdout.readline().split()
        assert len(line) == 3, f"child said {line!r} (exit {child.poll()})"
        bridge, nspawns = line[0], [int(p) for p in line[1:]]
        masters = _live(_processes_mentioning(f"{LAB_RUN / bridge}/"))
        assert masters, "expected Ansible's ssh masters under the lab's ControlPath"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    deadline = time.monotonic() + 30
    while _live(nspawns) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live(nspawns) == [], "the containers outlived the killed test process"
    assert bridge in _bridges()  # nobody was left to remove it
    sweep_stale_labs()
    assert bridge not in _bridges() and not (LAB_RUN / bridge).exists()
    assert _live(masters) == []
