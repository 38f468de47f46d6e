"""The command line: click commands over the manifest, the graph and a backend.

The backend comes from the backends table by name (or detection); nothing here
knows which one it has. What is printed is formatted by output.py and diffs.py.
Exit codes: 0 ok, 1 failure (or, for diff and install --dry-run, changes pending), 2 usage.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shlex
import socket
import sys
import sysconfig
import traceback

import click

from . import (__version__, backends, client, diffs, files, fleetstatus, graph, logs, manifest as manifest_mod,
               output, prometheus, units)
from .backends import BACKENDS, Backend, Options
from .errors import SHOWN, AgentkitError, ManifestError, did_you_mean
from .files import RenderedFile
from .model import Manifest

FIRST_BACKEND = next(iter(BACKENDS))  # render, diff, install: systemd units unless told otherwise


class Context:
    """What the common options said, wherever on the command line they stood."""

    def __init__(self) -> None:
        self.manifest_dir = "agents"
        self.manifest_given = False  # -m said where
        self.debug = False
        self.addresses: dict[str, str] = {}
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = manifest_mod.with_addresses(manifest_mod.load(self.manifest_dir), self.addresses)
        return self._manifest


def _context(ctx: click.Context) -> Context:
    return ctx.find_root().ensure_object(Context)


def _set_manifest(ctx, param, value):
    if value is not None:
        _context(ctx).manifest_dir = value
        # Only what the command line said: the next command gets the same environment.
        _context(ctx).manifest_given = ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE


def _set_addresses(ctx, param, items: tuple[str, ...]):
    addresses = _context(ctx).addresses
    for item in items:
        host, sep, address = item.partition("=")
        if not sep or not host or not address:
            raise click.BadParameter(f"expected HOST=ADDRESS, got {item!r}", ctx, param)
        if host in addresses and addresses[host] != address:
            raise click.BadParameter(f"{host} given twice ({addresses[host]} and {address})", ctx, param)
        addresses[host] = address


def _set_debug(ctx, param, value):
    if value:
        _context(ctx).debug = True
        logging.getLogger().setLevel(logging.DEBUG)


def common_options(root: bool):
    """-m/--manifest, --address and --debug, accepted before or after the subcommand."""
    def decorate(f):
        f = click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug,
                         help="Show tracebacks and debug messages.")(f)
        f = click.option("--address", multiple=True, metavar="HOST=ADDRESS", expose_value=False,
                         callback=_set_addresses,
                         help="Reach HOST at ADDRESS instead of its manifest address (repeatable): an "
                              "inventory's addresses, for agents that depend on agents of other hosts.")(f)
        f = click.option("-m", "--manifest", metavar="DIR", expose_value=False, callback=_set_manifest,
                         default="agents" if root else None, show_default=root,
                         envvar="AGENTKIT_MANIFEST" if root else None,
                         help="The manifest directory (fleet.yaml and one YAML file per group of agents).")(f)
        return f
    return decorate


def default_bin_dir() -> str:
    """Where this agentkit's own programs are installed (its virtualenv's bin/, say)."""
    return sysconfig.get_path("scripts")


host_option = click.option("--host", "hosts", multiple=True, metavar="HOST",
                           help="Only this host (repeatable). Default: every host of the manifest.")
profile_option = click.option("--profile", metavar="PROFILE",
                              help="Which optional agents to install. Default: the manifest's default_profile.")
bin_dir_option = click.option("--bin-dir", default=default_bin_dir, show_default="this agentkit's bin directory",
                              envvar="AGENTKIT_BIN_DIR", metavar="DIR",
                              help="Where bare program names in commands (agentkit-agent) live on the hosts.")
this_host_option = click.option("--host", "hosts", multiple=True, metavar="HOST",
                                help="Which host of the manifest this is. Default: this machine's hostname.")
templates_option = click.option("--templates", metavar="DIR", type=click.Path(file_okay=False, exists=True),
                                help="Templates here replace the packaged ones of the same name.")
auto_backend_option = click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto",
                                   show_default=True, help="auto: systemd when it is PID 1 here, else supervisord.")
state_dir_option = click.option("--state-dir", metavar="DIR", type=click.Path(file_okay=False),
                                help="supervisord: where its config, socket and logs live. "
                                     "Default: ~/.local/state/agentkit/<fleet>-<host>.")
def timeout_option(what: str):
    return click.option("--timeout", default=120.0, show_default=True, metavar="SECONDS", help=f"How long to wait {what}.")


START_TIMEOUT = "for the essential agents to start"
STOP_TIMEOUT = "for the agents to stop"


def backend_option(help: str):
    return click.option("--backend", type=click.Choice(list(BACKENDS)), default=FIRST_BACKEND, show_default=True,
                        help=help)


class Group(click.Group):
    def command(self, *args, **kwargs):
        """Every subcommand takes the common options too."""
        wrap = super().command(*args, **kwargs)
        return lambda f: wrap(common_options(root=False)(f))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@common_options(root=True)
@click.version_option(__version__, prog_name="agentkit")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run a fleet of AI agents under the host's own init system."""
    _context(ctx)


def _hosts(m: Manifest, chosen: tuple[str, ...]) -> list[str]:
    for host in chosen:
        if host not in m.hosts:
            raise AgentkitError(f"unknown host {host!r} (hosts in {m.root}: {', '.join(m.hosts)})")
    return list(chosen) or list(m.hosts)


def _selected(m: Manifest, hosts: tuple[str, ...], profile: str | None):
    """The profile's agents on the chosen hosts, manifest order."""
    chosen = set(_hosts(m, hosts))
    if profile is not None and profile not in m.profiles:
        raise AgentkitError(f"unknown profile {profile!r} (profiles: {', '.join(m.profiles)})")
    return [a for a in graph.selected(m, profile) if a.host in chosen]


def _this_host(m: Manifest) -> str:
    name = socket.gethostname().split(".")[0]
    if name not in m.hosts:
        raise AgentkitError(f"this machine ({name}) is not a host of the fleet {m.name} ({m.root}); say which "
                            f"with --host ({', '.join(m.hosts)})")
    return name


def _one_host(m: Manifest, hosts: tuple[str, ...]) -> str:
    if len(hosts) > 1:
        raise click.UsageError("this acts on one host: give at most one --host")
    return _hosts(m, hosts)[0] if hosts else _this_host(m)


def _hosts_here(m: Manifest, hosts: tuple[str, ...], backend: Backend) -> tuple[list[str], str | None]:
    """The hosts whose agents run on this machine, and a note when it is none of the manifest's."""
    if hosts:
        if len(hosts) > 1 and not backend.several_hosts:
            raise click.UsageError("this acts on one host: give at most one --host")
        return _hosts(m, hosts), None
    name = socket.gethostname().split(".")[0]
    if name in m.hosts:
        return [name], None
    if not backend.several_hosts and len(m.hosts) > 1:
        raise AgentkitError(f"this machine ({name}) is not a host of the fleet {m.name} ({m.root}); say which "
                            f"with --host ({', '.join(m.hosts)})")
    return list(m.hosts), (f"this machine ({name}) is not a host of the fleet {m.name} ({m.root}): running every "
                           "host's agents here")


def _options(m: Manifest | None, bin_dir: str | None = None, **kwargs) -> Options:
    """How to run the backend here. A manifest of several hosts gives each its own directory under
    --state-dir, whichever of them a command names, so down and status find what up started."""
    return Options(bin_dir=bin_dir or default_bin_dir(), several=m is not None and len(m.hosts) > 1, **kwargs)


programs_option = click.option("--programs/--no-programs", "check_programs", default=True, show_default=True,
                               help="Check the agents' programs as this machine would run them (--no-programs: "
                                    "the manifest is for other machines).")


def _check_programs(m: Manifest, backend: Backend, hosts: list[str], profile: str | None, options: Options,
                    every: bool = False) -> None:
    """The programs of the hosts' agents (every agent's, or the profile's) run here as `backend`
    runs them, or a located error."""
    agents = ([a for a in m.agents.values() if a.host in hosts] if every
              else [a for host in hosts for a in graph.on_host(m, host, profile)])
    backend.check_programs(m, agents, options)


@cli.command()
@host_option
@auto_backend_option
@bin_dir_option
@programs_option
@click.pass_obj
def validate(obj: Context, hosts, backend, bin_dir, check_programs) -> None:
    """Check the manifest for every backend, and the programs of this machine's hosts; print every
    problem as FILE:LINE: key: message."""
    m = obj.manifest
    backend = backends.choose(backend)
    chosen = _hosts(m, hosts) if hosts else _hosts_here(m, (), backends.get("supervisord"))[0]
    if check_programs:
        _check_programs(m, backend, chosen, None, _options(m, bin_dir), every=True)
    essential = sum(a.essential for a in m.agents.values())
    click.echo(f"{m.root}: {len(m.agents)} agent{'s' if len(m.agents) != 1 else ''} on {len(m.hosts)} "
               f"host{'s' if len(m.hosts) != 1 else ''} "
               f"({essential} essential, {len(m.agents) - essential} optional), "
               f"profiles: {', '.join(m.profiles)}: ok")
    pairs = graph.cross_host(m)
    if pairs:
        click.echo("dependencies across hosts (rendered as addresses in AGENTKIT_DEPENDS, not unit dependencies):")
        for agent, dep in pairs:
            click.echo(f"  {agent.name} ({agent.host}) -> {dep.name} ({dep.host}, {m.hosts[dep.host].address}:{dep.port})")


@cli.command("render")
@host_option
@profile_option
@click.option("--out", default="build", show_default=True, metavar="DIR", help="Write DIR/<host>/ for each host.")
@backend_option("supervisord: supervisord.conf and activator.json instead of units.")
@state_dir_option
@bin_dir_option
@templates_option
@programs_option
@click.option("--runbook-url", default=prometheus.RUNBOOK, show_default=True, metavar="URL",
              help="Where docs/runbook.md is served: each alert's runbook_url is URL#<alert>.")
@click.pass_obj
def render_cmd(obj: Context, hosts, profile, out, backend, state_dir, bin_dir, templates, check_programs,
               runbook_url) -> None:
    """Write the systemd units (or supervisord configuration) of each host into OUT/<host>/, and
    Prometheus' scrape configuration and alert rules for the fleet into OUT/prometheus/."""
    m = obj.manifest
    chosen = _hosts(m, hosts)
    if prometheus.DIRECTORY in m.hosts:
        raise AgentkitError(f"a host called {prometheus.DIRECTORY!r} would share OUT/{prometheus.DIRECTORY}/ with "
                            "the Prometheus files: rename the host")
    backend = backends.get(backend)
    options = _options(m, bin_dir, templates=templates, state_dir=state_dir)
    here = check_programs and os.path.isdir(options.bin_dir)  # else for another machine (--bin-dir there)
    if here:
        _check_programs(m, backend, chosen, profile, options)
    plans = {host: backend.plan(m, host, profile, options) for host in chosen}
    ours = backends.any_ours()  # another backend's render of the same host is agentkit's too
    watch = [RenderedFile(os.path.basename(f.path), f.text) for f in prometheus.files(m, runbook=runbook_url)]
    for host in plans:  # refuse before writing anything
        files.check_replaceable(os.path.join(out, host), ours)
    files.check_replaceable(os.path.join(out, prometheus.DIRECTORY), prometheus.OURS)
    for host, planned in plans.items():
        target = os.path.join(out, host)
        files.replace_tree(target, planned, ours)
        click.echo(f"{target}/: {output.file_counts(planned)}")
    files.replace_tree(os.path.join(out, prometheus.DIRECTORY), watch, prometheus.OURS)
    click.echo(f"{os.path.join(out, prometheus.DIRECTORY)}/: Prometheus' scrape configuration and alert rules")
    if not here:
        click.echo("programs not checked: " + ("--no-programs" if not check_programs else
                                               f"the bin directory {options.bin_dir} is not on this machine"), err=True)


@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--root", type=click.Path(file_okay=False, exists=True),
              help="Compare with what is installed under ROOT (one host): ROOT/etc/systemd/system for systemd.")
@host_option
@profile_option
@backend_option("What DIRECTORY holds: that backend's files.")
@state_dir_option
@bin_dir_option
@templates_option
@click.pass_obj
def diff(obj: Context, directory, root, hosts, profile, backend, state_dir, bin_dir, templates) -> None:
    """Show how DIRECTORY/<host>/ (or an installed ROOT) differs from the manifest; exit 1 if it does."""
    if (directory is None) == (root is None):
        raise click.UsageError("give a DIRECTORY rendered earlier, or --root ROOT")
    m = obj.manifest
    backend = backends.get(backend)
    if root is not None:
        if len(hosts) > 1:
            raise click.UsageError("--root holds one host: give at most one --host")
        chosen = [hosts[0] if hosts else _this_host(m)]
    else:
        chosen = _hosts(m, hosts)
    options = _options(m, bin_dir, templates=templates, root=root or "/", state_dir=state_dir)
    changed = 0
    for host in chosen:
        planned = backend.plan(m, host, profile, options)
        if root is not None:
            place, owned = backend.place(m, host, options), backend.installed(options)
        else:
            place, owned = os.path.join(directory, host), None
        changed += diffs.show(place, planned, sys.stdout, ours=backend.ours, owned=owned)
    if changed:
        click.echo(f"{changed} file{' differs' if changed == 1 else 's differ'}", err=True)
        sys.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The resolved model as JSON.")
@host_option
@profile_option
@auto_backend_option
@click.pass_obj
def show(obj: Context, as_json: bool, hosts, profile, backend) -> None:
    """The resolved manifest: every setting of every agent, defaults applied; ACTIVATION as the
    backend runs it (supervisord: the activator forwards to every optional agent)."""
    m = obj.manifest
    agents = _selected(m, hosts, profile)
    if as_json:
        click.echo(json.dumps(output.model_json(m, agents, profile), indent=2))
    else:
        click.echo(output.agents_table(agents, backends.choose(backend).activation))


@cli.command("graph")
@click.option("--format", "fmt", type=click.Choice(["dot", "mermaid"]), default="dot", show_default=True)
@host_option
@profile_option
@click.pass_obj
def graph_cmd(obj: Context, fmt: str, hosts, profile) -> None:
    """The dependency graph, for Graphviz (dot -Tsvg) or Mermaid."""
    m = obj.manifest
    agents = _selected(m, hosts, profile)
    click.echo((graph.to_dot if fmt == "dot" else graph.to_mermaid)(m, agents), nl=False)


@cli.command()
@this_host_option
@profile_option
@backend_option("Where to install: systemd units, or a supervisord.")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="systemd: install under ROOT; anything but / only writes files (an image being built).")
@state_dir_option
@click.option("--dry-run", is_flag=True, help="Show what would change; exit 1 if anything would.")
@click.option("--force", is_flag=True, help="Overwrite agentkit's units even if edited by hand since.")
@timeout_option(START_TIMEOUT)
@click.option("--restart", "restart_all", is_flag=True,
              help="Restart every running agent, changed or not (after an upgrade of agentkit itself).")
@click.option("--json", "as_json", is_flag=True,
              help="Progress on stderr; on stdout one JSON object: what changed, what was (re)started, what failed.")
@bin_dir_option
@templates_option
@click.pass_obj
def install(obj: Context, hosts, profile, backend, root, state_dir, dry_run, force, timeout, restart_all, as_json,
            bin_dir, templates) -> None:
    """Install this host's units, reload systemd once, start the essential agents and wait for them."""
    m = obj.manifest
    host = _one_host(m, hosts)
    profile = profile or m.default_profile
    if dry_run and as_json:
        raise click.UsageError("--json reports what install did; --dry-run shows a diff instead")
    backend = backends.get(backend)
    options = _options(m, bin_dir, templates=templates, root=root, state_dir=state_dir, timeout=timeout,
                       force=force, restart_all=restart_all)
    if os.path.realpath(root) == "/":  # under another root (an image being built) they are not ours to find
        _check_programs(m, backend, [host], profile, options)
    if dry_run:
        sys.exit(_dry_run(backend, m, host, profile, options))
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    outcome = backend.apply(m, host, profile, options, say)
    if as_json:
        changes = outcome.changes
        click.echo(json.dumps({
            "host": host, "profile": profile, "changed": changes.any or bool(outcome.started or outcome.restarted),
            "added": changes.added, "updated": changes.changed, "removed": changes.removed,
            "restarted": outcome.restarted, "started": outcome.started,
            "failed": {unit: why for unit, why in outcome.failed.items()},
        }, indent=1))
    if _report_failures(outcome.failed):
        sys.exit(1)


def _dry_run(backend: Backend, m: Manifest, host: str, profile: str, options: Options) -> int:
    planned = backend.plan(m, host, profile, options)
    changes = backend.pending(m, host, planned, options)
    diffs.show(backend.place(m, host, options), planned, sys.stdout, ours=backend.ours,
               owned=backend.installed(options))
    if changes.any:
        click.echo(f"would add {len(changes.added)}, change {len(changes.changed)}, remove "
                   f"{len(changes.removed)} unit file(s)", err=True)
        return 1
    click.echo("nothing to change", err=True)
    return 0


def _report_failures(failed: dict[str, list[str]]) -> bool:
    for unit, why in failed.items():
        click.echo(f"agentkit: {unit} did not start: {why[0]}", err=True)
        for line in why[1:]:
            click.echo(f"    {line}", err=True)
    return bool(failed)


@cli.command()
@backend_option("What to uninstall.")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False))
@timeout_option(STOP_TIMEOUT)
@click.pass_obj
def uninstall(obj: Context, backend, root, timeout) -> None:
    """Stop and remove everything agentkit installed (and nothing else)."""
    removed = backends.get(backend).remove(_options(None, root=root, timeout=timeout), click.echo)
    if not removed:
        click.echo("nothing installed by agentkit here")


@cli.command()
@host_option
@profile_option
@auto_backend_option
@state_dir_option
@timeout_option(START_TIMEOUT)
@bin_dir_option
@click.pass_obj
def up(obj: Context, hosts, profile, backend, state_dir, timeout, bin_dir) -> None:
    """Run the fleet on this machine: essential agents up, optional ones dormant until used."""
    m = obj.manifest
    chosen_backend = backend
    backend = backends.choose(backend)
    chosen, note = _hosts_here(m, hosts, backend)
    profile = profile or m.default_profile
    if note:
        click.echo(note)
    options = _options(m, bin_dir, state_dir=state_dir, timeout=timeout)
    _check_programs(m, backend, chosen, profile, options)
    failed = False
    for host in chosen:
        failed |= _report_failures(backend.apply(m, host, profile, options, click.echo).failed)
    if failed:
        sys.exit(1)
    _next_steps(obj, chosen, backend, chosen_backend, state_dir)


def _next_steps(obj: Context, hosts: list[str], backend: Backend, chosen_backend: str, state_dir: str | None) -> None:
    """What to try after `up`, as commands that work pasted: the program as it was run (./dev or
    agentkit) and the options up was given that the others need to find the fleet again."""
    m = obj.manifest
    prog = os.environ.get("AGENTKIT_COMMAND") or "agentkit"
    given = [prog] + (["-m", obj.manifest_dir] if obj.manifest_given else [])
    found = (["--backend", chosen_backend] if chosen_backend != "auto" else []) + \
        (["--state-dir", state_dir] if state_dir else [])
    lines = [(given + ["status"] + found, "every agent: dormant, active, failed, ...")]
    for host in hosts:
        url = f"http://127.0.0.1:{m.hosts[host].status_port}/"
        lines.append((["curl", url + "health"], f"{host}'s status service (open {url} for its live page)"))
    optional = [a for a in m.agents.values() if a.host in hosts and a.optional]
    deepest = max(optional, key=lambda a: len(graph.closure(m, [a.name])), default=None)
    if deepest is not None:
        if os.path.basename(deepest.command[0]) == units.AGENT_PROGRAM:
            lines.append((given + ["call", deepest.name, "--action", "chain"],
                          f"wake {deepest.name} and its dependencies, and see who answered"))
        else:
            lines.append((given + ["call", deepest.name], f"wake {deepest.name} (and its dependencies) with a request"))
    lines.append((given + ["down"] + found, "stop the fleet" +
                  (f" ({prog} uninstall removes it)" if backend.keeps_files else "")))
    commands = [" ".join(shlex.quote(word) for word in words) for words, _ in lines]
    width = max(len(c) for c in commands) + 2
    click.echo("try next:")
    for command, (_, what) in zip(commands, lines):
        click.echo(f"  {command.ljust(width)}{what}")


@cli.command()
@host_option
@auto_backend_option
@state_dir_option
@timeout_option(STOP_TIMEOUT)
@click.pass_obj
def down(obj: Context, hosts, backend, state_dir, timeout) -> None:
    """Stop the fleet on this machine (supervisord: and supervisord itself)."""
    m = obj.manifest
    backend = backends.choose(backend)
    if backend.several_hosts:
        chosen = _hosts_here(m, hosts, backend)[0]
    else:  # one manager here runs whichever host's agents it was given: stop them all
        chosen = [_hosts(m, hosts[:1])[0] if hosts else None]
    options = _options(m, state_dir=state_dir, timeout=timeout)
    # Hosts side by side on this machine stop together: each waits on its own manager.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
        stopped = list(pool.map(lambda host: backend.stop(m, host, options, click.echo), chosen))
    if not any(stopped):
        raise AgentkitError("nothing was running: no agentkit fleet found to stop" +
                            ("" if state_dir else " (if up ran with --state-dir, give it here too)"))


@cli.command()
@click.argument("agent")
@click.option("--protocol", type=click.Choice(["auto", *client.PROTOCOLS]), default="auto", show_default=True,
              help="auto: zmq for the reference agent (agentkit-agent), else http.")
@click.option("--action", default="ping", show_default=True, type=click.Choice(["ping", "chain"]),
              help="zmq: chain has the agent call each of its dependencies in turn.")
@click.option("--method", default="GET", show_default=True, help="http: the request method.")
@click.option("--path", default="/", show_default=True, help="http: the request path.")
@click.option("--data", help="http: the request body; tcp: the bytes to send.")
@click.option("--timeout", default=30.0, show_default=True, metavar="SECONDS")
@click.pass_obj
def call(obj: Context, agent, protocol, action, method, path, data, timeout) -> None:
    """Send one request to AGENT's port, as its clients do (ZeroMQ, HTTP or TCP); print the answer."""
    m = obj.manifest
    if agent not in m.agents:
        raise AgentkitError(f"unknown agent {agent!r}{did_you_mean(agent, m.agents)}")
    spec = m.agents[agent]
    if protocol == "auto":
        protocol = "zmq" if os.path.basename(spec.command[0]) == units.AGENT_PROGRAM else "http"
    try:
        if protocol == "zmq":
            reply, seconds = client.zmq_request(agent, spec.port, action, timeout)
            click.echo(json.dumps(reply, indent=2))
        elif protocol == "http":
            code, _, body, seconds = client.http_request(agent, spec.port, method.upper(), path,
                                                         None if data is None else data.encode(), timeout)
            click.echo(body.decode("utf-8", "replace"), nl=not body.endswith(b"\n"))
            click.echo(f"{agent} answered HTTP {code}", err=True)
        else:
            body, seconds = client.tcp_request(agent, spec.port, (data or "").encode(), timeout)
            click.echo(body.decode("utf-8", "replace"), nl=not body.endswith(b"\n"))
    except client.CallFailed as exc:
        raise AgentkitError(f"{exc}{_why_not(m, spec)}") from None
    click.echo(f"{agent} answered in {seconds * 1000:.0f} ms", err=True)


def _why_not(m: Manifest, agent) -> str:
    """What this machine's backend says of an agent that did not answer, if it says anything."""
    try:
        backend = backends.choose("auto")
        rows = backend.status(m, agent.host, None, _options(m))
    except Exception:  # noqa: BLE001 - the call's own error is what counts; this only adds to it
        return ""
    row = next((r for r in rows if r.name == agent.name), None)
    if row is None or row.state in ("active", "dormant"):
        return ""
    return f"\n{agent.name} is {row.state}: {row.detail}"


@cli.command()
@this_host_option
@profile_option
@auto_backend_option
@state_dir_option
@click.option("--all", "every_host", is_flag=True,
              help="Every host of the manifest, from its status service over HTTP (hosts.<name>.status; "
                   "addresses from the manifest or --address).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
@click.pass_obj
def status(obj: Context, hosts, profile, backend, state_dir, every_host, as_json) -> None:
    """Every agent of this host: dormant, starting, active, stopping, failed; since when, restarts, memory."""
    m = obj.manifest
    if every_host:
        _status_of_every_host(m, list(hosts) or list(m.hosts), as_json)
        return
    backend = backends.choose(backend)
    chosen = _hosts_here(m, hosts, backend)[0] if backend.several_hosts else [_one_host(m, hosts)]
    options = _options(m, state_dir=state_dir)
    profile = profile or backend.recorded_profile(options) or m.default_profile
    rows = [r.as_json() for host in chosen for r in backend.status(m, host, profile, options)]
    if as_json:
        click.echo(json.dumps({"host": chosen[0] if len(chosen) == 1 else chosen, "backend": backend.name,
                               "profile": profile, "agents": rows}, indent=2))
        return
    click.echo(output.status_table(rows))
    if any(r["state"] == "failed" for r in rows):
        sys.exit(1)


def _status_of_every_host(m: Manifest, hosts: list[str], as_json: bool) -> None:
    for host in hosts:
        if host not in m.hosts:
            raise AgentkitError(f"unknown host {host!r} (hosts: {', '.join(m.hosts)})")
    answers = fleetstatus.read(m, hosts)
    if as_json:
        click.echo(json.dumps({"hosts": answers}, indent=2))
    else:
        rows = [dict(agent, host=host) for host, answer in answers.items() for agent in answer["agents"]]
        if rows:
            click.echo(output.status_table(rows))
        for host, answer in answers.items():
            if answer["error"]:
                click.echo(f"{host}: {answer['url']}: {answer['error']}", err=True)
    if any(a["error"] or any(r["state"] == "failed" for r in a["agents"]) for a in answers.values()):
        sys.exit(1)


@cli.command()
@click.argument("names", nargs=-1, metavar="[AGENT]...")
@click.option("--group", "groups", multiple=True, metavar="GROUP", help="Every agent of this group (repeatable).")
@click.option("--profile", "profiles", multiple=True, metavar="PROFILE",
              help="Every optional agent of this profile (repeatable).")
@this_host_option
@auto_backend_option
@state_dir_option
@click.option("--wait", is_flag=True, help="Return once every agent is ready (else as soon as they are starting).")
@timeout_option("with --wait")
@click.pass_obj
def wake(obj: Context, names, groups, profiles, hosts, backend, state_dir, wait, timeout) -> None:
    """Start agents and their dependencies ahead of their first request; they stop again when idle.

    Agents of other hosts are skipped (say so once each), so that the same command can run on
    every host of the fleet (ansible/wake.yml)."""
    m = obj.manifest
    wanted = _named_agents(m, names, groups, profiles)
    backend = backends.choose(backend)
    chosen = _hosts_here(m, hosts, backend)[0] if backend.several_hosts else [_one_host(m, hosts)]
    elsewhere = [a for a in wanted if a.host not in chosen]
    for agent in elsewhere:
        click.echo(f"{agent.name}: on {agent.host}, not here ({', '.join(chosen)}): skipped", err=True)
    options = _options(m, state_dir=state_dir, timeout=timeout)
    failed = False
    for host in chosen:
        here = [a for a in wanted if a.host == host]
        if not here:
            continue
        results = backend.wake(m, host, here, options, wait, lambda line: None)
        for name, why in results.items():
            if why is None:
                click.echo(f"{name}: {'ready' if wait else 'starting'}")
            else:
                failed = True
                click.echo(f"{name}: did not start: {why}", err=True)
    if failed:
        sys.exit(1)


def _named_agents(m: Manifest, names, groups, profiles) -> list:
    """The agents named, those of the groups, and the optional ones of the profiles, manifest order."""
    if not (names or groups or profiles):
        raise click.UsageError("name the agents to wake: AGENT..., --group GROUP or --profile PROFILE")
    picked = set()
    for name in names:
        if name not in m.agents:
            raise AgentkitError(f"unknown agent {name!r}{did_you_mean(name, m.agents)}")
        picked.add(name)
    known_groups = {a.group for a in m.agents.values()}
    for group in groups:
        if group not in known_groups:
            raise AgentkitError(f"unknown group {group!r}{did_you_mean(group, sorted(known_groups))}")
        picked |= {a.name for a in m.agents.values() if a.group == group}
    for profile in profiles:
        if profile not in m.profiles:
            raise AgentkitError(f"unknown profile {profile!r}{did_you_mean(profile, m.profiles)}")
        picked |= {a.name for host in m.hosts for a in graph.on_host(m, host, profile) if a.optional}
    return [a for a in m.agents.values() if a.name in picked]


WRITERS = ("render", "install", "up")  # the commands whose refusal leaves the host as it was


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; turn agentkit's errors into a message and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    logs.setup("agentkit", debug=debug)
    try:
        cli.main(args=argv, prog_name="agentkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except ManifestError as exc:
        for problem in exc.problems[:SHOWN]:
            click.echo(str(problem), err=True)
        count = len(exc.problems)
        if count > SHOWN:
            click.echo(f"agentkit: ... and {count - SHOWN:,} more (the first {SHOWN} are shown)", err=True)
        words = [w for w in (argv if argv is not None else sys.argv[1:]) if w in cli.commands]
        writes = bool(words) and words[0] in WRITERS
        click.echo(f"agentkit: {count} problem{'s' if count != 1 else ''} in the manifest"
                   f"{'; nothing was written' if writes else ''}", err=True)
        return exc.exit_code
    except AgentkitError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"agentkit: error: {exc}", err=True)
        return exc.exit_code
    except OSError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"agentkit: error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}",
                   err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
