"""An interrupted install heals: `agentkit install` SIGKILLed at varied points (before it
writes, with a file half written, between two files, after the files and before the reload,
between the reload and the restarts, during the restarts, during the start jobs); the next
install succeeds and converges: its record matches the files, every unit file is what
`agentkit render` makes, systemd runs what is on disk (no NeedDaemonReload=, changed running
agents restarted), the essential agents are active, agentkit's temporary files are gone, and
a unit of the user's own (with a drop-in) is untouched and still running.

The kill points come from the install's own progress lines and from inotify on the unit
directory (the k-th temporary file created, the k-th rename), plus random delays. At each
point the install is first stopped (SIGSTOP) and the files looked at, which proves what the
kill interrupted (some files new and some old: mid-write), then SIGKILLed.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import queue
import random
import re
import select
import signal
import struct
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest

from agentkit import files

from . import test_fleet
from .container import BASE_ENV, NSENTER, _children, _pid_alive
from .test_fleet import show

UNITS = "etc/systemd/system"
RECORD = "var/lib/agentkit/installed.json"
TEMP = files.TEMP  # atomic_write's temporary files
TRIALS = 12

FLEET = """\
name: lab
hosts:
  lab: {address: 127.0.0.1, status: {port: 27599}}
defaults:
  command: [agentkit-agent]
  service_type: notify
  restart: {policy: on-failure, delay: 200ms, burst: 20, interval: 10s}
"""
A = """\
  First: {essential: true, port: 27501}
  Second: {essential: true, port: 27502}
  Lazy: {port: 27503, idle_stop: 5min}
  Leaving: {port: 27504, idle_stop: 5min}
  Plain:
    activation: proxy
    command: [python3, -m, http.server, "{port}", --bind, 127.0.0.1, --directory, /usr/share]
    port: 27505
    idle_stop: 5min
"""
# B changes First (a running essential agent) and Lazy, removes Leaving, adds Coming and Third.
B = """\
  First: {essential: true, port: 27501, environment: {MARK: b}}
  Second: {essential: true, port: 27502}
  Lazy: {port: 27503, idle_stop: 4min}
  Coming: {port: 27506, idle_stop: 5min}
  Third: {essential: true, port: 27507}
  Plain:
    activation: proxy
    command: [python3, -m, http.server, "{port}", --bind, 127.0.0.1, --directory, /usr/share]
    port: 27505
    idle_stop: 5min
"""
ESSENTIAL = {"A": ["First", "Second"], "B": ["First", "Second", "Third"]}
MINE = "mine.service"
MINE_TEXT = "[Unit]\nDescription=the user's own\n\n[Service]\nExecStart=/bin/sleep infinity\n"
MINE_DROPIN = "[Service]\nEnvironment=MINE=1\n"

# Kill points, cycled through the trials: (what to wait for, random delay range in seconds).
POINTS = [
    ("line:installing", (0.0, 0.0)),
    ("temp", None),            # the k-th temporary unit file created: a file half written
    ("rename", None),          # the k-th unit file renamed into place: between two files
    ("line:removed:", (0.0, 0.0)),  # files written, record not complete, before the reload
    ("line:restarting", (0.0, 0.0)),  # between the reload and the restarts
    ("line:reloading", (0.0, 0.05)),
    ("line:restarting", (0.0, 0.4)),  # during the restarts
    ("line:[1/", (0.0, 0.1)),  # during the start jobs
]


@pytest.fixture(autouse=True)
def _bin(agentkit_bin):
    global BIN
    BIN = str(agentkit_bin)
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")


BIN = ""


def argv(which: str) -> list[str]:
    return [test_fleet.AGENTKIT, "-m", f"/srv/{which}", "install", "--host", "lab", "--bin-dir", BIN]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Inotify:
    """IN_CREATE and IN_MOVED_TO in one directory (libc's inotify, through ctypes)."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self, path: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert libc.inotify_add_watch(self.fd, str(path).encode(), self.IN_CREATE | self.IN_MOVED_TO) >= 0

    def events(self, timeout: float):
        """(mask, name) of what happened, waiting up to `timeout` for the first."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        data, out, offset = os.read(self.fd, 65536), [], 0
        while offset < len(data):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
            out.append((mask, name))
            offset += 16 + length
        return out

    def close(self):
        os.close(self.fd)


def start_install(container, which: str):
    """`agentkit install` inside the container, its progress lines on a queue; (nsenter, agentkit pid, lines)."""
    proc = subprocess.Popen([NSENTER, "-t", str(container.pid1), "-a", "-r", "-w", "--", *argv(which)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=BASE_ENV, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    pid = None
    for _ in range(2000):  # nsenter forks the program into the container's PID namespace
        kids = _children(proc.pid)
        if kids:
            pid = kids[0]
            break
        if proc.poll() is not None:
            break
        select.select([], [], [], 0.001)
    assert pid is not None, "agentkit install did not start"
    return proc, pid, lines


def snapshot(container, plans: dict, which: str) -> dict:
    """The unit files at the moment of the kill: how many of those the install changes hold the new
    text, how many the old, and agentkit's temporary files."""
    units = container.root / UNITS
    other = "A" if which == "B" else "B"
    new = old = 0
    for name, text in plans[which].items():
        if plans[other].get(name) == text:
            continue
        try:
            current = (units / name).read_text()
        except FileNotFoundError:
            current = None
        if current == text:
            new += 1
        elif current == plans[other].get(name):
            old += 1
    temps = sorted(n for n in os.listdir(units) if TEMP.match(n))
    return {"new": new, "old": old, "temps": temps}


def kill_install(container, which: str, point, rng, plans) -> dict:
    """Run one install of manifest `which` and kill it at `point`: what the kill interrupted."""
    what, delay = point
    watch = Inotify(container.root / UNITS) if what in ("temp", "rename") else None
    proc, pid, lines = start_install(container, which)
    seen: list[str] = []
    state = None
    try:
        if watch is not None:
            k, count = rng.randint(1, 3), 0
            for _ in range(10_000):
                if not _pid_alive(pid):
                    break
                for mask, name in watch.events(0.05):
                    if what == "temp" and mask & Inotify.IN_CREATE and TEMP.match(name) \
                            or what == "rename" and mask & Inotify.IN_MOVED_TO and name.startswith("agentkit"):
                        count += 1
                if count >= k:
                    break
        else:
            needle = what.split(":", 1)[1]
            for _ in range(10_000):
                line = lines.get(timeout=120)
                if line is None:
                    break
                seen.append(line)
                if line.startswith(needle):
                    break
            if delay[1]:
                select.select([], [], [], rng.uniform(*delay))  # a random point after the line
        alive = _pid_alive(pid)
        if alive:
            os.kill(pid, signal.SIGSTOP)
            state = snapshot(container, plans, which)
            os.kill(pid, signal.SIGKILL)
    finally:
        if watch is not None:
            watch.close()
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        # nsenter stops itself when its child is stopped (to pass the stop on): it must go on to reap.
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=60)
    for _ in range(10_000):
        line = lines.get(timeout=60)
        if line is None:
            break
        seen.append(line)
    return {"point": what, "lines": seen, "state": state, "phase": phase(seen, state, proc.returncode)}


def phase(lines: list[str], state: dict | None, returncode) -> str:
    if state is None:
        return f"finished before the kill (exit {returncode})"
    if state["temps"] or (state["new"] and state["old"]):
        return "mid-write"
    last = next((line for line in reversed(lines) if not line.startswith("agentkit:")), "")
    if last.startswith("[") and "/" in last:
        return "during the start jobs"
    if last.startswith("restarting"):
        return "between the reload and the starts"
    if last.startswith("reloading"):
        return "during the reload"
    if last.startswith(("added:", "changed:", "removed:")):
        return "written, before the reload"
    if last.startswith("writing"):
        return "writing" if state["old"] else "written, before the reload"
    return "before writing"


def converged(container, which: str, plans: dict, mine: dict) -> None:
    units = container.root / UNITS
    plan = plans[which]
    on_disk = {p.name: p.read_bytes() for p in units.iterdir() if p.is_file() and p.name.startswith("agentkit")}
    assert {n: t.decode() for n, t in on_disk.items()} == plan, "the unit files are not what render makes"
    record = json.loads((container.root / RECORD).read_text())
    assert "pending" not in record, record
    assert record["files"] == {n: digest(t) for n, t in on_disk.items()}
    assert [n for n in os.listdir(units) if TEMP.match(n)] == []
    assert [n for n in os.listdir(container.root / "var/lib/agentkit") if n.startswith(".")] == []
    instances = [n for n in plan if "@." not in n and n.endswith((".service", ".socket", ".target", ".slice"))]
    out = container.systemctl("show", "--property=Id,NeedDaemonReload", *instances).stdout
    stale = re.findall(r"NeedDaemonReload=yes\nId=(\S+)", out) + re.findall(r"Id=(\S+)\nNeedDaemonReload=yes", out)
    assert stale == [], f"systemd does not run what is on disk: {stale}"
    for name in ESSENTIAL[which]:
        assert container.systemctl("is-active", f"agentkit-{name}.service", check=False).stdout.strip() == "active", name
    # A changed running agent was restarted: First runs with B's environment exactly when B is installed.
    pid = show(container, "agentkit-First.service", "MainPID")["MainPID"]
    environ = (Path(f"/proc/{container.pid1}/root/proc/{pid}/environ")).read_bytes().split(b"\0")
    assert (b"MARK=b" in environ) == (which == "B"), f"agentkit-First runs the old unit ({which} installed)"
    # The user's own unit: same bytes, drop-in too, and the same process.
    assert (units / MINE).read_text() == MINE_TEXT
    assert (units / f"{MINE}.d/local.conf").read_text() == MINE_DROPIN
    assert show(container, MINE, "ActiveState", "MainPID") == mine


def test_an_install_killed_anywhere_heals_on_the_next_run(container_factory):
    rng = random.Random(16)
    container = container_factory(hostname="lab")
    plans = {}
    for which, agents in (("A", A), ("B", B)):
        container.write_file(f"/srv/{which}/fleet.yaml", FLEET)
        container.write_file(f"/srv/{which}/lab.yaml", "host: lab\nagents:\n" + agents)
        container.run([test_fleet.AGENTKIT, "-m", f"/srv/{which}", "render", "--host", "lab", "--out",
                       f"/srv/out-{which}", "--bin-dir", BIN])
        out = container.root / f"srv/out-{which}/lab"
        plans[which] = {p.name: p.read_text() for p in out.iterdir()}
    container.write_file(f"/{UNITS}/{MINE}", MINE_TEXT)
    container.write_file(f"/{UNITS}/{MINE}.d/local.conf", MINE_DROPIN)
    container.systemctl("daemon-reload")
    container.systemctl("start", MINE)
    mine = show(container, MINE, "ActiveState", "MainPID")
    assert mine["ActiveState"] == "active"

    heal = container.run(argv("A"), timeout=300, check=False)
    assert heal.returncode == 0, heal.stdout + heal.stderr
    converged(container, "A", plans, mine)
    installed = "A"
    trials = []
    for trial in range(TRIALS):
        target = "B" if installed == "A" else "A"
        point = POINTS[trial % len(POINTS)]
        result = kill_install(container, target, point, rng, plans)
        # Mostly the same manifest again; every third trial the other one (a change of mind).
        then = target if trial % 3 != 2 else installed
        heal = container.run(argv(then), timeout=300, check=False)
        assert heal.returncode == 0, f"trial {trial} ({result['phase']}): the next install failed:\n" \
                                     f"{heal.stdout}\n{heal.stderr}"
        converged(container, then, plans, mine)
        installed = then
        trials.append((trial, target, point[0], result["phase"], result["state"], then))
    print("\ntrial, killed install of, point, phase, files at the kill (changed ones: new/old, temp files), then")
    for row in trials:
        print("  ", row)
    phases = {row[3] for row in trials}
    assert len(trials) >= 10
    assert "mid-write" in phases, phases
    assert "between the reload and the starts" in phases, phases
    mid = [row for row in trials if row[3] == "mid-write"]
    assert any(row[4]["new"] and row[4]["old"] for row in mid) and any(row[4]["temps"] for row in mid), mid
