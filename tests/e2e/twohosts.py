"""A lab of two (or more) hosts for the Ansible end-to-end test, reached over real SSH.

    with Lab(container_factory, workdir=tmp_path) as lab:      # or the lab_factory fixture
        lab.ssh("pc2", ["hostname"])
        # ansible-playbook -i inventory/ -i {lab.inventory} ansible/site.yml
        # pytest --hosts=ansible://all --ansible-inventory={lab.inventory}

Each host is a SystemdContainer (see container.py) with its own network
namespace on a bridge made for the lab (akbr<pid>n<k>, 10.77.<n>.0/24):
this machine is .1 on it, the hosts .2, .3, ... in the order of ``names``.
Agents in two hosts can listen on the same ports; the hosts reach each other
and this machine reaches them, by address.

What the containers bring, found on Debian 12 / systemd 252 with --volatile=yes:
- /etc is a fresh tmpfs that systemd fills at boot (passwd, shadow, machine-id),
  not the host's /etc: there is no /etc/ssh and no /etc/pam.d. The host's units
  are enabled anyway (first boot applies Debian's presets, "enable *"), so
  ssh.service and ssh.socket (Accept=no, port 22) start and fail for want of
  /etc/ssh. The lab masks both and runs its own sshd as a transient unit
  (SSHD_UNIT) with a config, host key and authorized_keys of its own. Users
  that packages' postinst scripts make are missing too (sshd's privilege
  separation user: the lab adds it). Without /etc/pam.d sshd runs with UsePAM
  no, which refuses locked accounts, so root's "!*" in /etc/shadow becomes "*"
  (locked for passwords, open for keys).
- systemd-networkd runs and would give host0 DHCP and a link-local address
  (80-container-host0.network). The lab binds in a .network file of its own
  that sorts first and gives host0 its static address from boot on; this also
  spares the boot a wait for network-online (6 to 7 s with DHCP, 0.5 s without).

SSH clients: Ansible (ssh_args ControlMaster=auto, ControlPersist=60s) and
testinfra leave ssh control masters running on THIS machine after they exit.
ssh_common_args name a ControlPath in the lab's own short directory under
LAB_RUN, so close() can find every ssh process of the lab by that path and
end it. close() is idempotent and also runs when start() fails halfway. A
test process killed by SIGKILL takes its containers along (container.py);
the next Lab sweeps its bridge and directory (names carry the pid), and its
ssh masters end by themselves within ControlPersist (60 s idle).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from .container import SystemdContainer, _pid_alive

# Short on purpose: ssh's ControlPath (this + "/" + 40 hex of %C) must fit a
# unix socket address (108 bytes); pytest's tmp_path may not.
LAB_RUN = Path("/run/agentkit-e2e")
SSHD_UNIT = "agentkit-lab-sshd.service"
INSIDE = "/etc/agentkit-lab"  # the lab's sshd config and keys, inside each host
NETWORK_FILE = "/etc/systemd/network/10-agentkit-lab.network"
BRIDGE_RE = re.compile(r"akbr(\d+)n\d+")
SUBNET_PREFIX = "10.77"

_counter = itertools.count(1)
_live: set["Lab"] = set()
_live_lock = threading.Lock()


class LabError(RuntimeError):
    """The lab could not be built, reached or taken down."""


@dataclass
class LabHost:
    name: str
    address: str
    container: SystemdContainer


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise LabError(f"ip {shlex.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _bridges() -> list[str]:
    out = _ip("-o", "link", "show", "type", "bridge").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _used_subnets() -> set[int]:
    """The n of every 10.77.n.x already on an interface or in a route here."""
    text = _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
    return {int(n) for n in re.findall(rf"\b{re.escape(SUBNET_PREFIX)}\.(\d+)\.", text)}


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains text (the lab's ssh clients name its ControlPath)."""
    needle, found = text.encode(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _end_processes(pids: list[int], timeout: float = 10.0) -> list[int]:
    """SIGTERM (an ssh master then removes its socket), SIGKILL after timeout; returns survivors."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.02) + 1):
            pids = [p for p in pids if _pid_alive(p)]
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    return pids


def _remove_lab_leftovers(bridge: str) -> list[str]:
    """Take down what a lab named bridge made on this machine; returns what failed."""
    errors = []
    run_dir = LAB_RUN / bridge
    left = _end_processes(_processes_mentioning(f"{run_dir}/"))
    if left:
        errors.append(f"ssh processes of the lab still alive: {left}")
    if bridge in _bridges():
        result = _ip("link", "del", bridge, check=False)
        if result.returncode != 0:
            errors.append(f"ip link del {bridge}: {result.stderr.strip()}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return errors


def sweep_stale_labs() -> None:
    """Remove bridges and directories of labs whose test process died (SIGKILL) without close()."""
    names = set(_bridges())
    if LAB_RUN.is_dir():
        names |= {p.name for p in LAB_RUN.iterdir()}
    for name in names:
        m = BRIDGE_RE.fullmatch(name)
        if m and not _pid_alive(int(m.group(1))):
            _remove_lab_leftovers(name)


def lab_requirements_missing() -> str | None:
    """Why a Lab cannot be built here (beyond what containers need), or None."""
    for tool, package in (("/usr/sbin/sshd", "openssh-server"), ("ssh", "openssh-client"),
                          ("ssh-keygen", "openssh-client"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    return None


class _SubnetLock:
    """An exclusive lock across processes while a lab picks its subnet and claims it."""

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout

    def __enter__(self):
        LAB_RUN.mkdir(parents=True, exist_ok=True)
        self._file = open(LAB_RUN / "subnet.lock", "w")
        deadline = time.monotonic() + self.timeout
        for _ in range(int(self.timeout / 0.05) + 1):
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        self._file.close()
        raise LabError(f"could not lock {LAB_RUN / 'subnet.lock'} within {self.timeout:g} s")

    def __exit__(self, *exc):
        self._file.close()  # releases the lock


def _keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at path (and path.pub); returns the public key line."""
    result = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise LabError(f"ssh-keygen for {path} failed: {result.stderr.strip()}")
    return path.with_name(path.name + ".pub").read_text().strip()


SSHD_CONFIG = f"""\
# The lab's own sshd (tests/e2e/twohosts.py): nothing of the machine's /etc/ssh.
Port 22
ListenAddress 0.0.0.0
HostKey {INSIDE}/ssh_host_ed25519_key
AuthorizedKeysFile {INSIDE}/authorized_keys
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# No /etc/pam.d in the container.
UsePAM no
UseDNS no
PrintMotd no
MaxSessions 32
MaxStartups 64:30:128
Subsystem sftp internal-sftp
"""

NETWORK_CONFIG = """\
# The lab's static address for host0 (tests/e2e/twohosts.py); sorts before
# systemd's 80-container-host0.network, so no DHCP and no link-local address.
[Match]
Name=host0

[Network]
Address={address}/24
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


class Lab:
    """Two (or more) systemd containers on a private bridge, each running sshd for root with a key made for the lab."""

    def __init__(self, factory: Callable[..., SystemdContainer], names: Sequence[str] = ("mainpc", "pc2"), *,
                 workdir: str | os.PathLike, ready_timeout: float = 60.0,
                 container_options: dict | None = None, start: bool = True):
        if not names or len(set(names)) != len(names) or len(names) > 200:
            raise ValueError(f"names must be 1 to 200 distinct host names, not {names!r}")
        self.factory = factory
        self.names = list(names)
        self.workdir = Path(workdir)
        self.ready_timeout = ready_timeout
        self.container_options = dict(container_options or {})
        self.bridge = f"akbr{os.getpid()}n{next(_counter)}"
        assert len(self.bridge) <= 15, self.bridge  # IFNAMSIZ
        self.run_dir = LAB_RUN / self.bridge
        self.subnet: int | None = None
        self.host_address = ""
        self.hosts: dict[str, LabHost] = {}
        self.private_key = self.workdir / "lab_id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.inventory = self.workdir / "lab-hosts.yml"
        self.boot_seconds: float | None = None
        self._started = False
        self._closed = False
        if start:
            self.start()

    # ---------------------------------------------------------------- start
    def start(self) -> "Lab":
        if self._started:
            raise LabError(f"lab {self.bridge} was already started")
        missing = lab_requirements_missing()
        if missing:
            raise LabError(f"cannot build a lab: {missing}")
        self._started = True
        with _live_lock:
            _live.add(self)
        began = time.monotonic()
        try:
            self._make_bridge()
            self.workdir.mkdir(parents=True, exist_ok=True)
            client_pub = _keygen(self.private_key, f"agentkit-lab-{self.bridge}")
            known = []
            for i, name in enumerate(self.names):
                address = f"{SUBNET_PREFIX}.{self.subnet}.{i + 2}"
                host_dir = self.workdir / name
                host_dir.mkdir(exist_ok=True)
                host_key = host_dir / "ssh_host_ed25519_key"
                known.append(f"{address} {' '.join(_keygen(host_key, f'{name}-host-key').split()[:2])}")
                network = host_dir / "10-agentkit-lab.network"
                network.write_text(NETWORK_CONFIG.format(address=address))
                options = dict(self.container_options)
                options["bind_ro"] = list(options.get("bind_ro", ())) + [(str(network), NETWORK_FILE)]
                container = self.factory(hostname=name, network_bridge=self.bridge, **options)
                self.hosts[name] = LabHost(name, address, container)
                self._start_sshd(self.hosts[name], host_key, client_pub)
            self.known_hosts.write_text("\n".join(known) + "\n")
            self._write_inventory()
            deadline = time.monotonic() + self.ready_timeout
            for host in self.hosts.values():
                self._wait_for_sshd(host, deadline)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - began
        return self

    def _make_bridge(self) -> None:
        with _SubnetLock():
            sweep_stale_labs()
            used = _used_subnets()
            free = [n for n in range(256) if n not in used]
            if not free:
                raise LabError(f"no free {SUBNET_PREFIX}.n.0/24 left: all are on interfaces or routes here")
            self.subnet = free[0]
            self.host_address = f"{SUBNET_PREFIX}.{self.subnet}.1"
            self.run_dir.mkdir(parents=True, mode=0o700)
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")

    def _start_sshd(self, host: LabHost, host_key: Path, client_pub: str) -> None:
        c = host.container
        # The host's ssh.socket would hold port 22; its ssh.service fails without /etc/ssh.
        c.systemctl("mask", "--runtime", "--now", "ssh.socket", "ssh.service")
        c.systemctl("reset-failed", "ssh.socket", "ssh.service", check=False)
        c.run(["usermod", "-p", "*", "root"])  # UsePAM no refuses a locked ("!") account
        # sshd's privilege separation user: made by the package's postinst, so not in a fresh /etc.
        if c.run(["getent", "passwd", "sshd"], check=False).returncode != 0:
            c.run(["useradd", "--system", "--no-create-home", "--home-dir", "/run/sshd",
                   "--shell", "/usr/sbin/nologin", "sshd"])
        c.write_file(f"{INSIDE}/sshd_config", SSHD_CONFIG)
        c.write_file(f"{INSIDE}/ssh_host_ed25519_key", host_key.read_text(), 0o600)
        c.write_file(f"{INSIDE}/authorized_keys", client_pub + "\n", 0o600)
        # Type=notify (Debian's sshd speaks sd_notify): systemd-run returns once sshd listens.
        started = c.run(["systemd-run", f"--unit={SSHD_UNIT}", "--description=agentkit lab sshd",
                         "-p", "Type=notify", "-p", "RuntimeDirectory=sshd", "-p", "RuntimeDirectoryMode=0755",
                         "/usr/sbin/sshd", "-D", "-e", "-f", f"{INSIDE}/sshd_config"], check=False, timeout=30)
        if started.returncode != 0:
            raise LabError(f"lab {self.bridge}: {SSHD_UNIT} did not start in {host.name}: "
                           f"{started.stderr.strip()}\n--- its journal ---\n{c.journal(SSHD_UNIT, 30)}")

    def _wait_for_sshd(self, host: LabHost, deadline: float) -> None:
        """Until a real ssh login works: the address may take a moment to be configured."""
        result, delay = None, 0.05
        for _ in range(100):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                result = self.ssh(host.name, ["true"], timeout=max(min(remaining, 15), 1))
            except LabError:
                continue  # timed out: the deadline decides
            if result.returncode == 0:
                return
            if re.search(r"Permission denied|Host key verification failed|IDENTIFICATION HAS CHANGED",
                         result.stderr):
                break  # retrying will not help
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise LabError(
            f"lab {self.bridge}: ssh root@{host.address} ({host.name}) did not work (gave up "
            f"{self.ready_timeout - (deadline - time.monotonic()):.1f} s into the lab's {self.ready_timeout:g} s)"
            f"\n--- last ssh stderr ---\n{result.stderr.strip() if result else ''}\n"
            f"--- {SSHD_UNIT} ---\n{host.container.journal(SSHD_UNIT, 30)}\n"
            f"--- nspawn output (last 30 lines) ---\n{host.container.nspawn_output(30)}")

    # ------------------------------------------------------------------ ssh
    @property
    def control_path(self) -> str:
        return f"{self.run_dir}/%C"

    @property
    def ssh_common_args(self) -> str:
        """What Ansible's ansible_ssh_common_args and testinfra add to every ssh command."""
        return " ".join([
            "-o", f"UserKnownHostsFile={shlex.quote(str(self.known_hosts))}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            # Masters (Ansible's ControlPersist=60s) land here; close() ends them.
            "-o", f"ControlPath={shlex.quote(self.control_path)}",
            # A master whose host went away gives up within 30 s.
            "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
        ])

    def _write_inventory(self) -> None:
        hosts = {
            name: {
                "ansible_host": host.address,
                "ansible_user": "root",
                "ansible_port": 22,
                "ansible_ssh_private_key_file": str(self.private_key),
                "ansible_ssh_common_args": self.ssh_common_args,
                "ansible_python_interpreter": "/usr/bin/python3",
            }
            for name, host in self.hosts.items()
        }
        self.inventory.write_text(
            "# Connection variables of the lab's hosts (tests/e2e/twohosts.py); groups come from inventory/.\n"
            + yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False, width=10_000))

    def ssh(self, name: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run argv (a list) as root on host name over real ssh, with the options Ansible uses.

        Text output; no check of the exit status (255: ssh itself failed). On
        timeout ssh is killed and LabError raised.
        """
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a shell string")
        host = self.hosts[name]
        command = ["ssh", "-i", str(self.private_key), "-p", "22", "-l", "root",
                   *shlex.split(self.ssh_common_args), "-o", "ConnectTimeout=10",
                   host.address, "--", shlex.join(str(a) for a in argv)]
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate(timeout=10)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise LabError(f"ssh {name} ({host.address}): {shlex.join(argv)} timed out after {timeout:g} s") \
                    from None
            raise
        return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)

    # ---------------------------------------------------------------- close
    def close(self) -> None:
        """End the lab's ssh clients, its containers and its bridge. Idempotent."""
        if self._closed or not self._started:
            return
        errors = []
        left = _end_processes(_processes_mentioning(f"{self.run_dir}/"))  # before sshd goes away
        if left:
            errors.append(f"ssh processes still alive: {left}")
        for host in reversed(list(self.hosts.values())):
            try:
                host.container.close()
            except Exception as exc:
                errors.append(f"{host.name}: {exc}")
        errors += _remove_lab_leftovers(self.bridge)
        self._closed = True
        with _live_lock:
            _live.discard(self)
        if errors:
            raise LabError(f"lab {self.bridge}: " + "; ".join(errors))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Lab":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        hosts = ", ".join(f"{h.name}={h.address}" for h in self.hosts.values())
        return f"<Lab {self.bridge} {'closed' if self._closed else hosts}>"


def close_all_labs() -> None:
    with _live_lock:
        labs = list(_live)
    for lab in labs:
        try:
            lab.close()
        except Exception:
            pass  # at exit: take down the others anyway


# Registered after container.py's close_all (imported above), so it runs first:
# ssh masters end before their hosts go.
atexit.register(close_all_labs)
