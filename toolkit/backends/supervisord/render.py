"""plan_supervisord(): the manifest -> supervisord.conf and activator.json for one host.

For hosts whose PID 1 is not systemd (containers, WSL, CI runners): the same
manifest runs under a per-user supervisord. Pure like render.plan(): the same
manifest, host, profile, directories and templates give the same bytes, sorted
by path, reading nothing but the templates. check() finds, at validate time,
everything this renderer or supervisord would refuse.

How the systemd model maps onto supervisord:

- essential agent: a program with autostart=true.
- optional agent: a program with autostart=false. supervisord has no socket
  activation, so every optional agent runs "proxy"-like: the program
  agentkit-activator (priority 1, started first) listens on the agent's public
  port, starts the agent (and first its optional dependencies on this host)
  over supervisord's XML-RPC on the first connection, forwards to the agent's
  private address 127.0.0.1:<private port>, and stops it after idle_stop. The
  agent is told AGENTKIT_ACTIVATION=proxy and AGENTKIT_BIND=127.0.0.1:<private
  port>, whatever its systemd activation; the private port is private_port when
  set (proxy agents) else port + the fleet's private_port_offset (native ones).
- dependencies: priority= follows graph.start_order() (dependencies first,
  100 + index), which orders supervisord's start at boot and, reversed, its
  shutdown; the activator starts optional dependencies itself.
- Restart= (restart.policy) -> autorestart= and exitcodes= (a death by a
  signal is never an "expected" exit code in supervisord):
    always                 -> autorestart=true
    no, on-watchdog        -> autorestart=false (supervisord has no watchdog)
    on-failure             -> autorestart=unexpected, exitcodes=0: a non-zero
                              exit or a signal restarts, a clean exit does not
    on-abnormal, on-abort  -> autorestart=unexpected, exitcodes=0..255: only a
                              death by a signal restarts
    on-success             -> autorestart=unexpected, exitcodes=1..255: a clean
                              exit restarts, and (unlike systemd) so does a signal
  restart.burst -> startretries= (supervisord's retries of a start that dies
  within startsecs=1, its only notion of readiness). restart.delay and
  restart.interval have no equivalent: supervisord backs off 1 s, 2 s, 3 s...
  between retried starts and restarts a running program that exits at once.
- start_timeout -> stopwaitsecs= (rounded up): the manifest has no stop
  timeout, and the time an agent may take to load is the natural bound on the
  time it may take to unload; systemd's stop default (90 s) would make
  `supervisorctl stop` wait a minute and a half for a hung agent.
- Not applied (supervisord has no cgroups nor namespaces): slices, memory_max,
  cpu_weight, sandboxing, watchdog; user= needs a root supervisord, so it is
  only noted in a comment.
- The router (the manifest's router: section, on its host): the program
  agentkit-router, started with supervisord and restarted like the status
  service, its argv router_command()'s. It reads the cloud key from
  router.cloud.api_key_file itself (--cloud-api-key-file; there is no
  LoadCredential=), and refuses one its group or others may read
  (toolkit/router/key.py).

Quoting (supervisord 4): every value is %-expanded (so '%' becomes '%%'); the
ini parser cuts a value at ';' or '#' after white space; command= is split
with shlex in POSIX mode (single quotes); environment= is split with shlex in
non-POSIX mode, where a quoted value cannot hold its own quote character and
the parser strips quote characters from both ends of every value. What cannot
be written faithfully is refused with an AgentkitError rather than mangled.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Iterator

import jinja2

from ... import env as contract, graph, programs, templating, units, values
from ...checks import Issue, port_owners
from ...errors import AgentkitError
from ...files import RenderedFile
from ...model import Agent, Manifest
from ...gpu import table as gpu_table
from ...router.command import router_command, router_on
from ...statusd import where as status_where
from .config import AgentSpec, Config as ActivatorConfig

CONF = "supervisord.conf"
ACTIVATOR_CONFIG = "activator.json"
CONTROL = "activator.sock"  # the activator's control socket: agentkit wake, the status service
ACTIVATOR = units.ACTIVATOR_PROGRAM
SOCKET = "supervisor.sock"
ROUTER = units.ROUTER_PROGRAM  # the router's program, on the router's host
PRIORITY_BASE = 100  # the activator is 1: it starts first and stops last

_EVERY_EXIT_CODE = ",".join(str(code) for code in range(256))
_EVERY_FAILURE_CODE = ",".join(str(code) for code in range(1, 256))
RESTART = {  # restart.policy -> (autorestart, exitcodes)
    "always": ("true", "0"),
    "no": ("false", "0"),
    "on-watchdog": ("false", "0"),
    "on-failure": ("unexpected", "0"),
    "on-abnormal": ("unexpected", _EVERY_EXIT_CODE),
    "on-abort": ("unexpected", _EVERY_EXIT_CODE),
    "on-success": ("unexpected", _EVERY_FAILURE_CODE),
}

_INLINE_COMMENT = re.compile(r"\s[;#]")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- escaping for supervisord's config file --------------------------------------

def _parse_problem(value: str) -> str | None:
    """What supervisord's config parser would cut out of `value`, or None."""
    if _CONTROL.search(value):
        return "holds a control character, which supervisord.conf cannot hold"
    if _INLINE_COMMENT.search(value):
        return ("cannot be written to supervisord.conf: its parser takes ';' or '#' after white space as the "
                "start of a comment")
    return None


def _ini_problem(value: str) -> str | None:
    """Why supervisord.conf cannot hold `value` as a plain value, or None."""
    if value != value.strip():
        return "cannot be written to supervisord.conf: its parser strips white space at either end"
    return _parse_problem(value)


def ini_value(value: str, what: str) -> str:
    """A plain value (a path, a name): '%' doubled; what the parser would cut is refused."""
    problem = _ini_problem(value)
    if problem is not None:
        raise AgentkitError(f"{what}: {value!r} {problem}")
    return value.replace("%", "%%")


def command_value(argv: list[str] | tuple[str, ...]) -> str:
    """An argv as command=: supervisord %-expands it, then splits it with shlex.split()."""
    words = []
    for word in argv:
        if _CONTROL.search(word):
            raise AgentkitError(f"command word {word!r} holds a control character")
        quoted = word if _SAFE_WORD.match(word) else "'" + word.replace("'", "'\"'\"'") + "'"
        # ';' or '#' after white space would start an ini comment: close the quote
        # just before it and open a new one, which shlex joins into the same word.
        words.append(re.sub(r"(?<=\s)(?=[;#])", "''", quoted))
    return " ".join(words).replace("%", "%%")


def _environment_problem(value: str) -> str | None:
    """Why supervisord cannot hold `value` in environment=, or None."""
    problem = _parse_problem(value)
    if problem is not None:
        return problem
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        return "cannot be written for supervisord: it strips quote characters from both ends of every environment value"
    if "'" in value and '"' in value:
        return ("cannot be written for supervisord: a value may hold single or double quotes, not both "
                "(supervisord's parser has no escapes)")
    return None


def environment_value(pairs: list[tuple[str, str]], what: str = "environment") -> str:
    """KEY="value",... as environment=: %-expanded, then split by non-POSIX shlex,
    which keeps a quoted value literal (no escapes) and strips quotes off its ends."""
    items = []
    for name, value in pairs:
        problem = _environment_problem(value)
        if problem is not None:
            raise AgentkitError(f"{what}: {name}={value!r} {problem}")
        quote = "'" if '"' in value else '"'
        items.append(f"{name}={quote}{value}{quote}")
    return ",".join(items).replace("%", "%%")


# --- the model under supervisord ------------------------------------------------

def private_port(agent: Agent, offset: int) -> int:
    """Where an optional agent listens under supervisord (the activator holds agent.port)."""
    return agent.private_port if agent.private_port is not None else agent.port + offset


def supervised_environment(manifest: Manifest, agent: Agent, private: int | None) -> list[tuple[str, str]]:
    """The agent environment, with every optional agent in proxy mode on its private port."""
    if agent.essential:  # AGENTKIT_ACTIVATION=none: the agent binds its own port (no socket to adopt here)
        return contract.for_agent(manifest, agent, activation="none")
    return contract.for_agent(manifest, agent, activation="proxy", private_port=private)


def _identifier(manifest: Manifest, host: str) -> str:
    """supervisord's identifier= of a host's supervisord."""
    return f"{units.PREFIX}{manifest.name}-{host}"


def private_ports(manifest: Manifest, agents: list[Agent]) -> dict[str, int]:
    """The private port of every optional agent of `agents` (check() vouches for them)."""
    return {a.name: private_port(a, manifest.private_port_offset) for a in agents if a.optional}


def check(manifest: Manifest) -> Iterator[Issue]:
    """What plan_supervisord() or supervisord itself would refuse in a manifest."""
    offset = manifest.private_port_offset
    owners = port_owners(manifest)
    identifier_problem = next(filter(None, (_ini_problem(_identifier(manifest, h)) for h in manifest.hosts)), None)
    if identifier_problem is not None or "%" in manifest.name:
        yield Issue(None, ("name",), f"{manifest.name!r} cannot name a supervisord: "
                    f"{identifier_problem or 'its state directory may not hold %'}")
    host_env = {}
    for host in manifest.hosts.values():
        host_env[host.name] = dict(host.environment)
        for name, value in host.environment:
            problem = _environment_problem(value)
            if problem is not None:
                yield Issue(None, ("hosts", host.name, "environment", name), f"{value!r} {problem}")
    # Of the AGENTKIT_* values only AGENTKIT_DEPENDS holds text of the user's: the
    # addresses of the hosts that agents of other hosts depend on.
    reached = {manifest.agents[d].host for a in manifest.agents.values() for d in a.depends_on
               if manifest.agents[d].host != a.host}
    for name in sorted(reached):
        address = manifest.hosts[name].address
        problem = _environment_problem(address)
        if problem is not None:
            yield Issue(None, ("hosts", name, "address"), f"{address!r} {problem} (it is in the {contract.DEPENDS} "
                        "of the agents that depend on this host's)")
    for agent in manifest.agents.values():
        if agent.name == ACTIVATOR:
            yield Issue(agent.name, (), f"under supervisord the program name {ACTIVATOR} is agentkit's own "
                        "activator; rename the agent")
        elif agent.name == units.STATUS_PROGRAM:
            yield Issue(agent.name, (), f"under supervisord the program name {units.STATUS_PROGRAM} is the "
                        "host's status service; rename the agent")
        elif agent.name == ROUTER and router_on(manifest, agent.host) is not None:
            yield Issue(agent.name, (), f"under supervisord the program name {ROUTER} is the router's "
                        f"(router.host: {agent.host}); rename the agent")
        own_host = host_env[agent.host]
        for name, value in agent.environment:
            if own_host.get(name) == value:
                continue  # a host's variable is reported once, at the host
            problem = _environment_problem(value)
            if problem is not None:
                yield Issue(agent.name, ("environment", name), f"{name}={value!r} {problem}")
        if agent.essential or agent.private_port is not None:
            continue
        if owners[(agent.host, agent.port)] != f"{agent.name}.port":
            continue  # its port clashes already (reported by the fleet checks): so would port + offset
        # Under supervisord every optional agent listens on a private port, native ones
        # at port + private_port_offset, which systemd never uses.
        port = private_port(agent, offset)
        how = f"port {agent.port} + private_port_offset {offset}"
        if port > 65535:
            yield Issue(agent.name, ("port",), f"under supervisord it listens on a private port, and {how} is "
                        "above 65535 (lower private_port_offset, or use activation: proxy with a private_port)")
            continue
        label = f"{agent.name} (its private port under supervisord)"
        other = owners.setdefault((agent.host, port), label)
        if other != label:
            yield Issue(agent.name, ("port",), f"under supervisord it listens on 127.0.0.1:{port} ({how}), "
                        f"which is also used on {agent.host} by {other} (change private_port_offset, "
                        "or use activation: proxy with a private_port)")


def _optional_dependencies(manifest: Manifest, agent: Agent, on_host: dict[str, Agent],
                           order: dict[str, int]) -> list[str]:
    """The optional agents on this host that `agent` needs, transitively, dependencies first.
    Essential ones already run; other hosts' are reached by address, not started."""
    seen: set[str] = set()
    todo = list(agent.depends_on)
    while todo:
        name = todo.pop()
        dep = on_host.get(name)
        if dep is None or dep.essential or name in seen:
            continue
        seen.add(name)
        todo.extend(dep.depends_on)
    return sorted(seen, key=order.__getitem__)


def probe(agent: Agent, bin_dir: str, port: int) -> tuple[str, ...]:
    """The activator's readiness probe of an agent: ("port",), ("http", path) or ("command", argv...).
    supervisord has no sd_notify: notify and started agents are ready when their port accepts."""
    ready = agent.ready
    if ready.kind == "http":
        return ("http", ready.path)
    if ready.kind == "command":
        return ("command",) + programs.argv(ready.command, bin_dir, port)
    return ("port",)


# --- the plan -------------------------------------------------------------------

def live_option(agent: Agent, privates: dict[str, int]) -> str:
    """agentkit-status's --live for an agent: NAME,INTERVAL,FAILURES,KIND,HOST:PORT[,PATH], its health
    port if it has one, else the port its program listens on. Under supervisord the status
    service probes (it may ask supervisord to kill a program; nothing else may)."""
    live = agent.liveness
    port = contract.live_port(agent, privates.get(agent.name))
    return ",".join([agent.name, f"{live.interval / 1e6:g}", str(live.failures), live.kind, f"127.0.0.1:{port}"]
                    + ([live.path] if live.kind == "http" else []))


def plan_supervisord(manifest: Manifest, host: str, profile: str | None = None, *, bin_dir: str,
                     state_dir: str, templates: str | None = None) -> list[RenderedFile]:
    """supervisord.conf and activator.json for `host` and `profile`, sorted by path."""
    agents = graph.on_host(manifest, host, profile)
    state_dir = str(state_dir)
    if not posixpath.isabs(state_dir):
        raise AgentkitError(f"the supervisord state directory must be an absolute path (its socket, pid file, "
                            f"logs and activator.json live there), got {state_dir!r}")
    if "%" in state_dir:
        raise AgentkitError(f"the supervisord state directory {state_dir!r} may not hold '%': supervisord "
                            "expands it in log file names twice")
    state_dir = posixpath.normpath(state_dir)
    if state_dir.startswith("//"):
        state_dir = "/" + state_dir.lstrip("/")
    profile_name = profile or manifest.default_profile
    conf_t = templating.templates("supervisord", ["supervisord.conf.j2"], templates)["supervisord.conf.j2"]
    privates = private_ports(manifest, agents)
    ordered = graph.start_order(agents)
    order = {a.name: i for i, a in enumerate(ordered)}
    on_host = {a.name: a for a in agents}
    socket = posixpath.join(state_dir, SOCKET)
    logs = posixpath.join(state_dir, "logs")

    def path(*parts: str, what: str) -> str:
        return ini_value(posixpath.join(*parts), what)

    entries = []
    for agent in sorted(agents, key=lambda a: order[a.name]):
        autorestart, exitcodes = RESTART[agent.restart.policy]
        where = f"agent {agent.name}"
        entries.append({
            "name": agent.name,
            "essential": agent.essential,
            "command": command_value(programs.argv(agent.command, bin_dir,
                                                   contract.listen_port(agent, privates.get(agent.name)))),
            "environment": environment_value(supervised_environment(manifest, agent, privates.get(agent.name)),
                                             f"{where}: environment"),
            "priority": PRIORITY_BASE + order[agent.name],
            "autorestart": autorestart,
            "exitcodes": exitcodes,
            "startretries": agent.restart.burst,
            "stopwaitsecs": max(1, math.ceil(values.seconds(agent.start_timeout))),
            "logfile": path(logs, f"{agent.name}.log", what=f"{where}: log file"),
            "directory": (ini_value(agent.working_directory, f"{where}: working_directory")
                          if agent.working_directory else None),
            "user": agent.user,
            "private": privates.get(agent.name),
        })
    gpus = gpu_table.for_host(manifest, host, agents)
    router = router_on(manifest, host)
    context = {
        "fleet": manifest.name,
        "host": host,
        "profile": profile_name,
        "socket": path(socket, what="state_dir"),
        "logfile": path(logs, "supervisord.log", what="state_dir"),
        "pidfile": path(state_dir, "supervisord.pid", what="state_dir"),
        "childlogdir": path(logs, what="state_dir"),
        "identifier": ini_value(_identifier(manifest, host), "identifier (fleet name and host)"),
        "status": {
            "name": units.STATUS_PROGRAM,
            "command": command_value([posixpath.join(bin_dir, units.STATUS_PROGRAM), "--backend", "supervisord",
                                      "--state-dir", state_dir, "--host", host]
                                     + [w for a in status_where.listen(manifest.hosts[host]) for w in ("--listen", a)]
                                     + [w for a in agents if a.liveness for w in ("--live", live_option(a, privates))]
                                     + (gpus.args() if gpus else [])),
            "logfile": path(logs, f"{units.STATUS_PROGRAM}.log", what="state_dir"),
        },
        "activator": {
            "name": ACTIVATOR,
            "command": command_value((posixpath.join(bin_dir, ACTIVATOR), "--config",
                                      posixpath.join(state_dir, ACTIVATOR_CONFIG))),
            "logfile": path(logs, f"{ACTIVATOR}.log", what="state_dir"),
        },
        "router": None if router is None else {
            "name": ROUTER,
            "source": _CONTROL.sub("?", posixpath.basename(router.where.file)),  # in a comment
            "command": command_value([word for group in router_command(router, bin_dir, key_file=router.api_key_file)
                                      for word in group]),
            "key_file": router.api_key_file,
            "logfile": path(logs, f"{ROUTER}.log", what="state_dir"),
        },
        "programs": entries,
    }
    try:
        conf = conf_t.render(context)
    except jinja2.TemplateError as exc:
        raise templating.render_error(exc) from exc

    entries = tuple(
        AgentSpec(name=agent.name, program=agent.name, listen=("0.0.0.0", agent.port),
                  target=("127.0.0.1", privates[agent.name]),
                  depends_on=tuple(_optional_dependencies(manifest, agent, on_host, order)),
                  idle_stop=values.seconds(agent.idle_stop), start_timeout=values.seconds(agent.start_timeout),
                  ready=probe(agent, bin_dir, privates[agent.name]))
        for agent in sorted((a for a in agents if a.optional), key=lambda a: a.name))
    activator = ActivatorConfig(fleet=manifest.name, host=host, supervisor=f"unix://{socket}",
                                control=posixpath.join(state_dir, CONTROL), agents=entries, gpu=gpus)
    return sorted([
        RenderedFile(CONF, conf),
        RenderedFile(ACTIVATOR_CONFIG, activator.dumps()),
    ], key=lambda f: f.path)
