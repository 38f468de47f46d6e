"""The programs agents run: where a bare name is found, and whether it can run there.

A bare program name is one of agentkit's own programs (agentkit-agent, ...) or a
program in agentkit's bin directory (--bin-dir), else the first on this machine's
PATH, as a shell finds it. check() tells, before anything is written, what would
otherwise fail seconds into a start: a program that is not there or not
executable, and under systemd's sandbox one that the agent cannot see
(ProtectHome=, PrivateTmp= hide these paths) or cannot reach as its DynamicUser=
(a directory on the way that others may not enter: 203/EXEC, Permission denied).
Scripts are followed to the interpreter their #! line names.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import sys
import sysconfig
from typing import Iterable, Iterator

from . import env as contract, units
from .checks import Issue
from .model import Agent

# What the sandbox (hardening.j2) hides from an agent, and the directive that hides it.
HIDDEN = {"/home": "ProtectHome=yes", "/root": "ProtectHome=yes", "/run/user": "ProtectHome=yes",
          "/tmp": "PrivateTmp=yes", "/var/tmp": "PrivateTmp=yes"}


# What a virtualenv puts in its bin directory beside agentkit's programs: its interpreter
# and pip. `python3` in a command means the host's, found on PATH, not agentkit's venv's.
_VENV_OWN = re.compile(r"^(python|pip)(\d+(\.\d+)?)?$")


def find(program: str, bin_dir: str, search_path: str | None = None) -> str | None:
    """The absolute path a program word names, or None when it is nowhere."""
    if program.startswith("/"):
        return program
    own = os.path.join(bin_dir, program)
    if program in units.OWN_PROGRAMS or (not _VENV_OWN.match(program) and _executable(own)):
        return own  # agentkit's own: always beside agentkit, also when rendering for another machine
    found = shutil.which(program, path=os.environ.get("PATH", os.defpath) if search_path is None else search_path)
    return os.path.abspath(found) if found else None


def resolve(command: tuple[str, ...], bin_dir: str) -> tuple[str, ...]:
    """The command with its program as an absolute path (in the bin dir when it is nowhere: check() says so)."""
    return (find(command[0], bin_dir) or os.path.join(bin_dir, command[0]),) + tuple(command[1:])


def argv(command: tuple[str, ...], bin_dir: str, port: int) -> tuple[str, ...]:
    """A command as a backend runs it: its program found, each {port} the port it listens on."""
    return contract.with_port(resolve(command, bin_dir), port)


def ready_probe(bin_dir: str) -> list[str]:
    """How a unit runs agentkit-ready. For this machine's own agentkit (bin_dir is its bin
    directory): its interpreter on ready.py with -S -I, which skips site-packages (the
    console script's imports cost some 20 ms more, on every cold start); else the program
    in bin_dir, as for every agentkit program rendered for another machine."""
    from . import ready

    if os.path.realpath(bin_dir) == os.path.realpath(sysconfig.get_path("scripts")) and sys.executable:
        return [sys.executable, "-S", "-I", os.path.abspath(ready.__file__)]
    return [os.path.join(bin_dir, units.READY_PROGRAM)]


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def hidden_by(path: str) -> str | None:
    """The sandbox directive that hides `path` from an agent, or None."""
    for top, directive in HIDDEN.items():
        if path == top or path.startswith(top + "/"):
            return f"{top} ({directive})"
    return None


def _denied(path: str, uid: int | None, gids: set[int], script: bool) -> str | None:
    """The first directory on the way to `path`, or `path` itself, that a user may not pass
    (enter; run, and read when a script). uid None: a DynamicUser=, which owns nothing and is
    in none of the host's groups; uid 0 passes everywhere."""
    if uid == 0:
        return None
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        step = "/".join(parts[:i])
        try:
            info = os.stat(step)
        except OSError:
            return None  # not there: reported as such
        need = stat.S_IXUSR | (stat.S_IRUSR if script and i == len(parts) else 0)
        if uid is not None and info.st_uid == uid:
            bits = need
        elif uid is not None and info.st_gid in gids:
            bits = need >> 3
        else:
            bits = need >> 6
        if info.st_mode & bits != bits:
            return step
    return None


# The PATH systemd 252 gives a service, where `#!/usr/bin/env prog` looks.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def _interpreter(path: str, search_path: str | None) -> str | None:
    """The interpreter a script's #! line names, or None (a binary, or unreadable)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return shutil.which(words[1], path=search_path) or words[1]
    return words[0]


def _user(agent: Agent) -> tuple[int | None, set[int]] | None:
    """Who runs the agent: (uid, groups); (None, {}) a DynamicUser=; None when the user is unknown here."""
    if agent.user is None:
        return (None, set()) if agent.sandbox else (0, {0})
    try:
        entry = pwd.getpwnam(agent.user)
    except KeyError:
        return None
    return entry.pw_uid, set(os.getgrouplist(agent.user, entry.pw_gid))


def check(agents: Iterable[Agent], bin_dir: str, *, sandboxed: bool) -> Iterator[Issue]:
    """Every agent's program (and its readiness command), as this machine would run it.
    `sandboxed`: the backend runs agents in systemd's sandbox (hidden paths, DynamicUser=)."""
    probe = ready_probe(bin_dir)
    for agent in agents:
        words = [("command", agent.command[0])]
        if agent.ready.kind == "command":
            # agentkit-ready runs as the agent, in its sandbox, to run the agent's probe command.
            words.append(("ready", agent.ready.command[0]))
            words.append(("ready", probe[0]))
        for key, program in words:
            problem = _problem(agent, program, bin_dir, sandboxed)
            if problem is not None:
                yield Issue(agent.name, (key,) if key == "command" else (key, "command"), problem)
                break
        else:
            if agent.ready.kind == "command" and len(probe) > 1 and sandboxed:
                problem = _sandbox_problem(agent, probe[-1], f"{probe[-1]} (agentkit-ready, run as the agent)",
                                           script=True)
                if problem is not None:
                    yield Issue(agent.name, ("ready", "command"), problem)


def _problem(agent: Agent, program: str, bin_dir: str, sandboxed: bool) -> str | None:
    path = find(program, bin_dir)
    if path is None:
        return (f"program {program!r} is neither in agentkit's bin directory ({bin_dir}) nor on PATH: "
                "install it, or give its absolute path")
    if not os.path.exists(path):
        return f"{path} does not exist" + ("" if program.startswith("/") else f" (found for {program!r})")
    if not _executable(path):
        return f"{path} is not an executable file (chmod +x, or name the program that runs it)"
    if not sandboxed:
        return None  # supervisord runs every agent as its own user, who can run it (checked above)
    interpreter = _interpreter(path, SERVICE_PATH)
    for item in [path] + ([interpreter] if interpreter else []):
        what = path if item == path else f"{item}, the interpreter of {path},"
        problem = _sandbox_problem(agent, item, what, script=item == path and bool(interpreter))
        if problem is not None:
            return problem
    return None


def _sandbox_problem(agent: Agent, path: str, what: str, script: bool) -> str | None:
    """Why the agent, in its sandbox and as its user, cannot run (or read) `path`, or None."""
    if not (agent.sandbox or agent.user):
        return None
    runs_as = _user(agent)
    for seen in dict.fromkeys((path, os.path.realpath(path))):
        hider = hidden_by(seen) if agent.sandbox else None
        if hider is not None:
            return (f"{what} is under {hider}, which the sandbox hides from the agent: install it "
                    "elsewhere (/opt, /usr/local), or set sandbox: false")
        blocked = None if runs_as is None else _denied(seen, *runs_as, script=script)
        if blocked is not None:
            who = f"user {agent.user}" if agent.user else "its DynamicUser="
            return (f"{what} cannot be run by {who}: {blocked} is not open to it "
                    f"(chmod o+rx {blocked}, or install the program elsewhere)")
    return None
