"""Boot the host's own systemd in a throw-away systemd-nspawn container.

The end-to-end tests install agentkit's units into a real systemd and talk to
it over D-Bus. ``SystemdContainer`` boots one (see DESIGN.md, "Testing on a
real systemd")::

    with SystemdContainer() as c:
        c.systemctl("start", "foo.socket")
        c.run(["/usr/bin/true"])
        c.dbus_address   # unix:path=/proc/PID1/root/run/dbus/system_bus_socket

The container is ``systemd-nspawn -D / --volatile=yes``: the host's /usr read
only, everything else on a tmpfs that vanishes with it. The checkout is bound
read-only at its own path, so its .venv (whose scripts name that path in their
shebangs) runs inside unchanged. Without ``network_bridge`` the container
shares the host's network namespace: its ports are the host's ports.

Every container is stopped by ``close()`` (idempotent), by the context
manager, by ``close_all()`` at interpreter exit (atexit) and when the test
process gets SIGTERM or SIGHUP. The nspawn process also gets
PR_SET_PDEATHSIG=SIGTERM, so even a SIGKILLed test process takes its
containers down with it (note: the death signal fires when the *thread* that
started the container exits; start containers from the main thread or from a
thread that outlives them).
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

CHECKOUT = Path(__file__).resolve().parents[2]

NSPAWN = "systemd-nspawn"
NSENTER = "nsenter"

# The environment of commands run inside: nothing of the test process's own
# (its PATH names the venv, DBUS_SYSTEM_BUS_ADDRESS may name a container's bus).
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

# States of `systemctl is-system-running` (systemd 252).
READY_STATES = ("running", "degraded")
WAIT_STATES = ("initializing", "starting", "offline", "unknown", "")
DEAD_STATES = ("maintenance", "stopping")

_counter = itertools.count(1)
_live: set["SystemdContainer"] = set()
_live_lock = threading.Lock()
_env_lock = threading.Lock()
_handlers_installed = False
_previous_handlers: dict[int, object] = {}


class ContainerError(RuntimeError):
    """The container did not boot, or could not be managed."""


class ContainerCommandError(subprocess.CalledProcessError):
    """A command run inside the container exited non-zero (or timed out: returncode None)."""

    def __init__(self, machine: str, argv: Sequence[str], returncode, stdout: str, stderr: str, note: str = ""):
        super().__init__(returncode, list(argv), stdout, stderr)
        self.machine = machine
        self.note = note

    def __str__(self) -> str:
        status = self.note or f"exit status {self.returncode}"
        return (
            f"in container {self.machine}: {shlex.join(self.cmd)} failed ({status})\n"
            f"--- stdout ---\n{_text(self.stdout).rstrip()}\n"
            f"--- stderr ---\n{_text(self.stderr).rstrip()}"
        )


def _text(data) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data


def requirements_missing() -> str | None:
    """Why e2e containers cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "e2e tests boot systemd-nspawn containers and must run as root"
    for tool, package in ((NSPAWN, "systemd-container"), (NSENTER, "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "/usr/lib/systemd/systemd is missing: the container boots the host's own systemd"
    return None


_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> None:
    # Runs in the child between fork and exec: if the test process dies, even
    # by SIGKILL, nspawn gets SIGTERM and shuts its container down.
    _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


# With --keep-unit (and no systemd on the host to give it a scope) nspawn puts
# the container under the cgroup it was started in, as <that>/payload. Two
# containers started from one cgroup would then share one tree
# (/payload/system.slice/x.service...), and each container's systemd would see
# and manage the other's cgroups. So each nspawn starts in a cgroup of its own.
CGROUP_PARENT = "agentkit-e2e"


def _cgroup_hierarchies() -> list[Path]:
    """The roots of the hierarchies nspawn and systemd use for their cgroups."""
    roots = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mountpoint, fstype, options = line.split()[:4]
        if fstype == "cgroup2" and mountpoint.startswith("/sys/fs/cgroup"):
            roots.append(Path(mountpoint))  # /sys/fs/cgroup (unified) or .../unified (hybrid)
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            roots.append(Path(mountpoint))  # legacy/hybrid
    return roots


def _sweep_stale_cgroups() -> None:
    """Remove the empty cgroups of containers whose test process died by SIGKILL.

    (Their nspawn got SIGTERM through PR_SET_PDEATHSIG and shut down, but nobody
    was left to rmdir the cgroups.) Names are ak<pid>n<counter>.
    """
    for root in _cgroup_hierarchies():
        parent = root / CGROUP_PARENT
        if not parent.is_dir():
            continue
        for cg in parent.iterdir():
            m = re.fullmatch(r"ak(\d+)n\d+", cg.name)
            if cg.is_dir() and m and not _pid_alive(int(m.group(1))):
                _remove_cgroup_tree(cg, time.monotonic())  # busy ones stay


def _remove_cgroup_tree(path: Path, deadline: float) -> list[str]:
    """rmdir path and its children, deepest first; returns what could not go."""
    if not path.exists():
        return []
    dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    left = []
    for d in dirs + [path]:
        delay = 0.01
        for _ in range(200):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY: a dying process has not left it yet
                if time.monotonic() > deadline:
                    left.append(str(d))
                    break
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        else:
            left.append(str(d))
    return left


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        return found
    except FileNotFoundError:
        return []
    except OSError:  # no CONFIG_PROC_CHILDREN: scan every process's parent
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


NSSWITCH = "/etc/nsswitch.conf"


class SystemdContainer:
    """One booted systemd (the host's own) in a volatile systemd-nspawn container."""

    def __init__(
        self,
        *,
        name: str | None = None,
        hostname: str | None = None,
        bind: Iterable[str | tuple[str, str]] = (),
        bind_ro: Iterable[str | tuple[str, str]] = (),
        network_bridge: str | None = None,
        extra_args: Sequence[str] = (),
        log_dir: str | os.PathLike | None = None,
        boot_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        checkout: str | os.PathLike = CHECKOUT,
        start: bool = True,
    ):
        self.name = name or f"ak{os.getpid()}n{next(_counter)}"
        self.hostname = hostname
        self.checkout = Path(checkout).resolve()
        self.binds = [_bind_spec(b) for b in bind]
        self.binds_ro = [(str(self.checkout), str(self.checkout))] + [_bind_spec(b) for b in bind_ro]
        # --volatile=yes leaves /etc empty, and without nsswitch.conf's "systemd" the system bus
        # cannot tell who a DynamicUser= is and drops its connection (the status service's).
        # A host's /etc has it (libnss-systemd): the container gets the host's.
        if os.path.exists(NSSWITCH):
            self.binds_ro.append((NSSWITCH, NSSWITCH))
        self.network_bridge = network_bridge
        self.extra_args = list(extra_args)
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="agentkit-e2e-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}.nspawn.log"
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.boot_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._pid1: int | None = None
        self._log = None
        self._cgroups: list[Path] = []
        if start:
            self.start()

    # ----------------------------------------------------------------- boot
    @property
    def command(self) -> list[str]:
        argv = [NSPAWN, "-D", "/", "--volatile=yes", f"--machine={self.name}",
                "--register=no", "--keep-unit"]
        if self.hostname:
            argv.append(f"--hostname={self.hostname}")
        argv += [f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro]
        argv += [f"--bind={src}:{dst}" for src, dst in self.binds]
        if self.network_bridge:
            argv.append(f"--network-bridge={self.network_bridge}")
        argv += self.extra_args
        argv += ["-b", "systemd.firstboot=off"]
        return argv

    def start(self) -> "SystemdContainer":
        if self._proc is not None:
            raise ContainerError(f"container {self.name} was already started")
        _install_handlers()
        started = time.monotonic()
        self._log = open(self.log_path, "wb")
        _sweep_stale_cgroups()
        for root in _cgroup_hierarchies():
            cg = root / CGROUP_PARENT / self.name
            cg.mkdir(parents=True, exist_ok=True)
            self._cgroups.append(cg)
        procs_files = [str(cg / "cgroup.procs") for cg in self._cgroups]

        def prepare_child():
            _set_pdeathsig()
            for procs in procs_files:  # "0" moves the writer: the coming nspawn
                with open(procs, "w") as f:
                    f.write("0")

        with _live_lock:
            try:
                self._proc = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # a ^C on the terminal is ours to handle, not nspawn's
                    preexec_fn=prepare_child,
                )
            except BaseException:
                self._log.close()
                for cg in self._cgroups:
                    _remove_cgroup_tree(cg, time.monotonic() + 5)
                raise
            _live.add(self)
        try:
            self._pid1 = self._find_pid1(started + self.boot_timeout)
            self._wait_booted(started + self.boot_timeout)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def _find_pid1(self, deadline: float) -> int:
        nspawn_exe = _exe(self._proc.pid)
        delay = 0.005
        for _ in range(2000):
            self._check_nspawn_alive("while starting")
            for child in _children(self._proc.pid):
                exe = _exe(child)
                # Until it execs, the child is still a copy of systemd-nspawn.
                if exe and exe != nspawn_exe and not exe.endswith(" (deleted)"):
                    return child
            if time.monotonic() > deadline:
                break
            time.sleep(delay)  # nspawn reports nothing we could wait on; poll its children
            delay = min(delay * 2, 0.1)
        raise self._boot_error("its PID 1 did not appear")

    def _wait_booted(self, deadline: float) -> None:
        state = ""
        delay = 0.02
        for _ in range(1000):
            self._check_nspawn_alive("while booting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # --wait blocks until the boot is over, once the manager is on its bus;
            # before that systemctl answers at once (offline / cannot connect).
            try:
                result = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                                  timeout=max(remaining, 0.1))
            except ContainerCommandError:  # timed out
                break
            state = result.stdout.strip()
            if state in READY_STATES:
                return
            if state in DEAD_STATES:
                raise self._boot_error(f"systemctl is-system-running says {state!r}")
            time.sleep(delay)  # the manager is not listening yet; poll again
            delay = min(delay * 2, 0.25)
        raise self._boot_error(
            f"not booted after {self.boot_timeout:.0f} s (systemctl is-system-running: {state!r})")

    def _check_nspawn_alive(self, when: str) -> None:
        if self._proc.poll() is not None:
            raise self._boot_error(f"systemd-nspawn exited with status {self._proc.returncode} {when}")

    def _boot_error(self, what: str) -> ContainerError:
        return ContainerError(
            f"container {self.name}: {what}\ncommand: {shlex.join(self.command)}\n"
            f"--- nspawn output ({self.log_path}, last 80 lines) ---\n{self.nspawn_output(80)}")

    def nspawn_output(self, lines: int | None = None) -> str:
        """What systemd-nspawn and the container's console printed so far."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        if lines is None:
            return text
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------- properties
    @property
    def pid1(self) -> int:
        """The host's PID of the container's init (systemd)."""
        if self._pid1 is None or self.closed:
            raise ContainerError(f"container {self.name} is not running")
        return self._pid1

    @property
    def nspawn_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def root(self) -> Path:
        """The container's / seen from the host (write units through it)."""
        return Path(f"/proc/{self.pid1}/root")

    @property
    def dbus_address(self) -> str:
        """The container's system bus, usable from the host (DBUS_SYSTEM_BUS_ADDRESS)."""
        return f"unix:path=/proc/{self.pid1}/root/run/dbus/system_bus_socket"

    @property
    def closed(self) -> bool:
        return self._proc is None or self._proc.returncode is not None

    def open_system_bus(self):
        """A new sdbus.SdBus connected to the container's system bus (from the host).

        sdbus (0.14) has no call taking a bus address, and sd_bus_open_system_machine
        needs systemd-machined, which --register=no keeps out; libsystemd reads
        DBUS_SYSTEM_BUS_ADDRESS when the bus is opened, so set it just for that.
        """
        import sdbus

        key = "DBUS_SYSTEM_BUS_ADDRESS"
        with _env_lock:
            saved = os.environ.get(key)
            os.environ[key] = self.dbus_address
            try:
                return sdbus.sd_bus_open_system()
            finally:
                if saved is None:
                    del os.environ[key]
                else:
                    os.environ[key] = saved

    # ------------------------------------------------------------ commands
    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60.0,
            env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        """Run argv (a list, no shell) inside every namespace of the container.

        stdout and stderr come back as text. The environment is BASE_ENV plus env.
        On timeout the whole process group (nsenter and what it started) is
        killed and ContainerCommandError is raised whatever check says.
        """
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a shell string")
        argv = [str(a) for a in argv]
        full = [NSENTER, "-t", str(self.pid1), "-a", "-r", "-w", "--", *argv]
        proc = subprocess.Popen(
            full, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**BASE_ENV, **(env or {})}, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            stdout, stderr = proc.communicate(timeout=10)
            raise ContainerCommandError(self.name, argv, None, stdout, stderr,
                                        note=f"timed out after {timeout:g} s") from None
        except BaseException:
            _killpg(proc.pid)
            proc.wait(timeout=10)
            raise
        if check and proc.returncode != 0:
            raise ContainerCommandError(self.name, argv, proc.returncode, stdout, stderr)
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return self.run(["systemctl", "--no-pager", "--no-ask-password", *args], check=check, timeout=timeout)

    def journal(self, unit: str, lines: int = 100) -> str:
        """The last lines of unit's journal inside the container."""
        return self.run(["journalctl", "--no-pager", "-o", "short-precise", "-u", unit, "-n", str(lines)],
                        check=False).stdout

    def write_file(self, path: str, text: str, mode: int = 0o644) -> Path:
        """Write text to path (absolute, inside the container) through root."""
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not absolute")
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        return target

    # ---------------------------------------------------------------- stop
    def close(self) -> None:
        """Shut the container down and wait until nothing of it is left. Idempotent.

        SIGTERM to nspawn makes it power the container off; after stop_timeout
        its PID 1 (which takes its whole PID namespace along) and nspawn get SIGKILL.
        """
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                started = time.monotonic()
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    if self._pid1 is not None and _pid_alive(self._pid1):
                        _kill(self._pid1)
                    _kill(proc.pid)
                    proc.wait(timeout=30)
                self.stop_seconds = time.monotonic() - started
            # nspawn gone: anything left in its PID namespace would be orphaned.
            if self._pid1 is not None and _pid_alive(self._pid1):
                _kill(self._pid1)
            if proc.returncode is not None:
                left = []
                for cg in self._cgroups:
                    left += _remove_cgroup_tree(cg, time.monotonic() + 10)
                if left:
                    raise ContainerError(f"container {self.name}: cgroups still busy after stop: {left}")
        finally:
            if self._log is not None and proc.returncode is not None:
                self._log.close()
            if proc.returncode is not None:
                with _live_lock:
                    _live.discard(self)

    def __enter__(self) -> "SystemdContainer":
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pid1={self._pid1}"
        return f"<SystemdContainer {self.name} {state}>"


def _bind_spec(spec: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(spec, tuple):
        return str(spec[0]), str(spec[1])
    src, _, dst = str(spec).partition(":")
    return src, dst or src


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def live_containers() -> list[SystemdContainer]:
    with _live_lock:
        return list(_live)


def close_all() -> None:
    """Close every container this process started and has not closed."""
    errors = []
    for container in live_containers():
        try:
            container.close()
        except Exception as exc:  # close the others anyway
            errors.append(f"{container.name}: {exc!r}")
    if errors:
        raise ContainerError("could not close: " + "; ".join(errors))


def _on_signal(signum, frame):
    try:
        close_all()
    finally:
        previous = _previous_handlers.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            pass
        else:  # default action (terminate), as if we had never caught it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        _previous_handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)
    _handlers_installed = True


atexit.register(close_all)
