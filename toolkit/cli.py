"""The command line: a thin layer over manifest, render, graph and files.

Exit codes: 0 ok, 1 failure (or, for diff, changes pending), 2 usage.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
import sys
import sysconfig
import time
import traceback
from dataclasses import asdict

import click

from . import __version__, files, graph, install as install_mod, manifest as manifest_mod, render, values
from .errors import AgentkitError, ManifestError
from .model import Manifest

TARGET_NAME = render.TARGET


class Context:
    def __init__(self, manifest_dir: str, debug: bool, addresses: dict[str, str] | None = None):
        self.manifest_dir = manifest_dir
        self.debug = debug
        self.addresses = addresses or {}
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = manifest_mod.with_addresses(manifest_mod.load(self.manifest_dir), self.addresses)
        return self._manifest


def _parse_addresses(ctx, param, values: tuple[str, ...]) -> dict[str, str]:
    addresses: dict[str, str] = {}
    for item in values:
        host, sep, address = item.partition("=")
        if not sep or not host or not address:
            raise click.BadParameter(f"expected HOST=ADDRESS, got {item!r}", ctx, param)
        if host in addresses and addresses[host] != address:
            raise click.BadParameter(f"{host} given twice ({addresses[host]} and {address})", ctx, param)
        addresses[host] = address
    return addresses


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
backend_option = click.option("--backend", type=click.Choice(["auto", "systemd", "supervisord"]), default="auto",
                              show_default=True,
                              help="auto: systemd when it is PID 1 here, else supervisord.")
state_dir_option = click.option("--state-dir", metavar="DIR", type=click.Path(file_okay=False),
                                help="supervisord: where its config, socket and logs live. "
                                     "Default: ~/.local/state/agentkit/<fleet>-<host>.")



@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--manifest", "manifest_dir", default="agents", show_default=True, envvar="AGENTKIT_MANIFEST",
              metavar="DIR", help="The manifest directory (fleet.yaml and one YAML file per group of agents).")
@click.option("--address", "addresses", multiple=True, metavar="HOST=ADDRESS", callback=_parse_addresses,
              help="Reach HOST at ADDRESS instead of its manifest address (repeatable): an inventory's "
                   "addresses, for agents that depend on agents of other hosts.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="agentkit")
@click.pass_context
def cli(ctx: click.Context, manifest_dir: str, addresses: dict[str, str], debug: bool) -> None:
    """Run a fleet of AI agents under the host's own init system."""
    ctx.obj = Context(manifest_dir, debug, addresses)


def _hosts(m: Manifest, chosen: tuple[str, ...]) -> list[str]:
    for host in chosen:
        if host not in m.hosts:
            raise AgentkitError(f"unknown host {host!r} (hosts in {m.root}: {', '.join(m.hosts)})")
    return list(chosen) or list(m.hosts)


def _selected(m: Manifest, hosts: tuple[str, ...], profile: str | None):
    """The profile's agents on the chosen hosts, manifest order."""
    chosen = set(_hosts(m, hosts))
    return [a for a in graph.selected(m, profile) if a.host in chosen]


@cli.command()
@click.pass_obj
def validate(obj: Context) -> None:
    """Check the manifest; print every problem as FILE:LINE: key: message."""
    m = obj.manifest
    essential = sum(a.essential for a in m.agents.values())
    click.echo(f"{m.root}: {len(m.agents)} agents on {len(m.hosts)} hosts "
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
@click.option("--backend", type=click.Choice(["systemd", "supervisord"]), default="systemd", show_default=True,
              help="supervisord: supervisord.conf and activator.json instead of units.")
@state_dir_option
@bin_dir_option
@templates_option
@click.pass_obj
def render_cmd(obj: Context, hosts, profile, out, backend, state_dir, bin_dir, templates) -> None:
    """Write the systemd units (or supervisord configuration) of each host into OUT/<host>/."""
    m = obj.manifest
    if backend == "supervisord":
        from .supervisord import plan_supervisord
        chosen = _hosts(m, hosts)
        plans = {host: plan_supervisord(m, host, profile, bin_dir=bin_dir, templates=templates,
                                        state_dir=_state_dir(m, host, state_dir, len(chosen) > 1))
                 for host in chosen}
    else:
        plans = {host: render.plan(m, host, profile, bin_dir=bin_dir, templates=templates) for host in _hosts(m, hosts)}
    for host in plans:  # refuse before writing anything
        files.check_replaceable(os.path.join(out, host))
    for host, planned in plans.items():
        target = os.path.join(out, host)
        files.replace_tree(target, planned)
        counts: dict[str, int] = {}
        for item in planned:
            kind = "template" if "@." in item.path else item.path.rsplit(".", 1)[-1]
            counts[kind] = counts.get(kind, 0) + 1
        summary = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(counts.items()))
        click.echo(f"{target}/: {summary}")


@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--root", type=click.Path(file_okay=False, exists=True),
              help="Compare with the units installed under ROOT/etc/systemd/system (one host).")
@host_option
@profile_option
@bin_dir_option
@templates_option
@click.pass_obj
def diff(obj: Context, directory, root, hosts, profile, bin_dir, templates) -> None:
    """Show how DIRECTORY/<host>/ (or an installed ROOT) differs from the manifest; exit 1 if it does."""
    if (directory is None) == (root is None):
        raise click.UsageError("give a DIRECTORY rendered earlier, or --root ROOT")
    m = obj.manifest
    if root is not None:
        if len(hosts) > 1:
            raise click.UsageError("--root holds one host: give at most one --host")
        host = hosts[0] if hosts else _this_host(m)
        places = {host: os.path.join(root, "etc/systemd/system")}
    else:
        places = {host: os.path.join(directory, host) for host in _hosts(m, hosts)}
    changed = 0
    for host, place in places.items():
        planned = render.plan(m, host, profile, bin_dir=bin_dir, templates=templates)
        owned = set(install_mod.Record.read(root).files) if root is not None else None
        changed += _show_diff(place, planned, owned=owned or None)
    if changed:
        click.echo(f"{changed} file{' differs' if changed == 1 else 's differ'}", err=True)
        sys.exit(1)


def _this_host(m: Manifest) -> str:
    name = socket.gethostname().split(".")[0]
    if name not in m.hosts:
        raise AgentkitError(f"this machine ({name}) is not a host of {m.root}; say which with --host")
    return name


def _show_diff(place: str, planned, owned: set[str] | None = None) -> int:
    """Print unified diffs of `place` against `planned`; count the files that differ.

    Files of `place` that are not planned count when they look like ours, or, given
    `owned` (install's record), when agentkit installed them.
    """
    changed = 0
    wanted = {item.path: item for item in planned}
    present = []
    if os.path.isdir(place):
        present = [n for n in sorted(os.listdir(place))
                   if (n in owned if owned is not None else files.OURS.match(n)) or n in wanted]
    for name in sorted(set(wanted) | set(present)):
        path = os.path.join(place, name)
        new = wanted[name].text.splitlines(keepends=True) if name in wanted else []
        old: list[str] = []
        if name in present:
            with open(path, encoding="utf-8", errors="replace") as handle:
                old = handle.read().splitlines(keepends=True)
        if old != new:
            changed += 1
            sys.stdout.writelines(difflib.unified_diff(old, new, path if old else "/dev/null",
                                                       path if new else "/dev/null"))
    return changed


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The resolved model as JSON.")
@host_option
@profile_option
@click.pass_obj
def show(obj: Context, as_json: bool, hosts, profile) -> None:
    """The resolved manifest: every setting of every agent, defaults applied."""
    m = obj.manifest
    agents = _selected(m, hosts, profile)
    if as_json:
        click.echo(json.dumps(_model_json(m, agents, profile), indent=2))
        return
    rows = [("AGENT", "HOST", "CLASS", "PORT", "HEALTH", "ACTIVATION", "DEPENDS ON")]
    for a in agents:
        rows.append((a.name, a.host, "essential" if a.essential else "optional", str(a.port),
                     str(a.health_port or "-"), a.activation, ",".join(a.depends_on) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def _model_json(m: Manifest, agents, profile) -> dict:
    def agent_json(a) -> dict:
        data = asdict(a)
        data["where"] = str(a.where)
        data["environment"] = dict(a.environment)
        data["restart"] = {"policy": a.restart.policy, "delay": values.format_span(a.restart.delay_us),
                           "burst": a.restart.burst, "interval": values.format_span(a.restart.interval_us)}
        for key in ("idle_stop_us", "start_timeout_us", "watchdog_us"):
            usec = data.pop(key)
            data[key[:-3]] = values.format_span(usec) if usec is not None else None
        if a.essential:
            data.pop("idle_stop")
        for key in ("memory_max", "gpu_memory"):
            if data[key] is not None:
                data[key] = values.format_size(data[key])
        return data

    return {
        "name": m.name,
        "manifest": m.root,
        "profile": profile or m.default_profile,
        "hosts": {h.name: {"address": h.address, "environment": dict(h.environment), "ports": dict(h.ports)}
                  for h in m.hosts.values()},
        "slices": {s.name: asdict(s) for s in m.slices.values()},
        "profiles": {p.name: sorted(a.name for a in graph.selected(m, p.name) if a.optional) for p in m.profiles.values()},
        "agents": [agent_json(a) for a in agents],
        "cross_host": [{"agent": a.name, "depends_on": d.name, "address": f"{m.hosts[d.host].address}:{d.port}"}
                       for a, d in graph.cross_host(m)],
        "router": _router_json(m.router),
    }


def _router_json(router) -> dict | None:
    if router is None:
        return None
    data = {"host": router.host, "port": router.port, "bind": router.bind, "api_key_file": router.api_key_file,
            "memory_max": values.format_size(router.memory_max), "where": str(router.where)}
    for key, value in router.settings:
        text = manifest_mod.router_flag_value(key, value)  # sizes and spans as written in the manifest
        data[key] = text if text != str(value) else value
    return data


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


def _one_host(m: Manifest, hosts: tuple[str, ...]) -> str:
    if len(hosts) > 1:
        raise click.UsageError("this acts on one host: give at most one --host")
    return _hosts(m, hosts)[0] if hosts else _this_host(m)


@cli.command()
@this_host_option
@profile_option
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="Install under ROOT; anything but / only writes files (an image being built).")
@click.option("--dry-run", is_flag=True, help="Show what would change; exit 1 if anything would.")
@click.option("--force", is_flag=True, help="Overwrite agentkit's units even if edited by hand since.")
@click.option("--timeout", default=120.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the essential agents to start.")
@click.option("--restart", "restart_all", is_flag=True,
              help="Restart every running agent, changed or not (after an upgrade of agentkit itself).")
@click.option("--json", "as_json", is_flag=True,
              help="Progress on stderr; on stdout one JSON object: what changed, what was (re)started, what failed.")
@bin_dir_option
@templates_option
@click.pass_obj
def install(obj: Context, hosts, profile, root, dry_run, force, timeout, restart_all, as_json, bin_dir,
            templates) -> None:
    """Install this host's units, reload systemd once, start the essential agents and wait for them."""
    m = obj.manifest
    host = _one_host(m, hosts)
    profile = profile or m.default_profile
    if dry_run and as_json:
        raise click.UsageError("--json reports what install did; --dry-run shows a diff instead")
    planned = render.plan(m, host, profile, bin_dir=bin_dir, templates=templates)
    if dry_run:
        record = install_mod.Record.read(root)
        changes = install_mod.compare(root, planned, record, force)
        changed = _show_diff(os.path.join(root, install_mod.UNIT_DIR), planned, owned=set(record.files) or None)
        if changes.any:
            click.echo(f"would add {len(changes.added)}, change {len(changes.changed)}, remove "
                       f"{len(changes.removed)} unit file(s)", err=True)
            sys.exit(1)
        click.echo("nothing to change", err=True)
        return
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    say(f"installing {len(planned)} unit files for {host} (profile {profile}) under {root}")
    outcome = install_mod.run(install_mod.apply(root, host, profile, planned, force=force, timeout=timeout,
                                                restart_all=restart_all, progress=say))
    if not outcome.changes.any:
        say("unit files unchanged")
    if as_json:
        changes = outcome.changes
        click.echo(json.dumps({
            "host": host, "profile": profile, "changed": changes.any or bool(outcome.started or outcome.restarted),
            "added": changes.added, "updated": changes.changed, "removed": changes.removed,
            "restarted": outcome.restarted, "started": outcome.started,
            "failed": {unit: why for unit, why in outcome.failed.items()},
        }, indent=1))
    if outcome.failed:
        for unit, why in outcome.failed.items():
            click.echo(f"agentkit: {unit} did not start: {why[0]}", err=True)
            for line in why[1:]:
                click.echo(f"    {line}", err=True)
        sys.exit(1)
    if os.path.realpath(root) == "/":
        say(f"{host}: {TARGET_NAME} is up; see `agentkit status`")


@cli.command()
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False))
@click.option("--timeout", default=120.0, show_default=True, metavar="SECONDS")
@click.pass_obj
def uninstall(obj: Context, root, timeout) -> None:
    """Stop and remove everything agentkit installed (and nothing else)."""
    removed = install_mod.run(install_mod.remove(root, timeout=timeout, progress=click.echo))
    if not removed:
        click.echo("nothing installed by agentkit here")


def _systemd_is_pid1() -> bool:
    return os.path.isdir("/run/systemd/system")  # sd_booted(3)


def _backend(choice: str) -> str:
    if choice == "auto":
        return "systemd" if _systemd_is_pid1() else "supervisord"
    return choice


def _up_hosts(m: Manifest, hosts: tuple[str, ...], backend: str) -> tuple[list[str], str | None]:
    """The hosts to run here, and a note when this machine is none of the manifest's."""
    if hosts:
        return _hosts(m, hosts), None
    name = socket.gethostname().split(".")[0]
    if name in m.hosts:
        return [name], None
    if backend == "systemd" and len(m.hosts) > 1:
        raise AgentkitError(f"this machine ({name}) is not a host of {m.root}; say which with --host")
    return list(m.hosts), f"this machine ({name}) is not a host of {m.root}: running every host's agents here"


def _state_dir(m: Manifest, host: str, state_dir: str | None, several: bool) -> str:
    from . import supervisor_run
    if state_dir is None:
        return supervisor_run.default_state_dir(m, host)
    return os.path.join(os.path.abspath(state_dir), host) if several else os.path.abspath(state_dir)


@cli.command()
@host_option
@profile_option
@backend_option
@state_dir_option
@click.option("--timeout", default=120.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the essential agents to start.")
@bin_dir_option
@click.pass_context
def up(ctx: click.Context, hosts, profile, backend, state_dir, timeout, bin_dir) -> None:
    """Run the fleet on this machine: essential agents up, optional ones dormant until used."""
    from . import supervisor_run
    m = ctx.obj.manifest
    backend = _backend(backend)
    chosen, note = _up_hosts(m, hosts, backend)
    profile = profile or m.default_profile
    if note:
        click.echo(note)
    if backend == "systemd":
        ctx.invoke(install, hosts=tuple(chosen), profile=profile, root="/", dry_run=False, force=False,
                   timeout=timeout, bin_dir=bin_dir, templates=None)
        _next_steps(m, chosen, "systemd")
        return
    failed = False
    for host in chosen:
        directory = _state_dir(m, host, state_dir, len(chosen) > 1)
        result = supervisor_run.up(m, host, profile, bin_dir=bin_dir, state_dir=directory, timeout=timeout,
                                   progress=click.echo)
        click.echo(f"{host}: {len(result.essential) - len([n for n in result.failed if n in result.essential])}"
                   f"/{len(result.essential)} essential agents running, {len(result.optional)} optional agents "
                   f"dormant (the activator holds their ports); state, logs and control socket in {directory}")
        for name, why in result.failed.items():
            failed = True
            click.echo(f"agentkit: {name} did not start: {why} (log: {directory}/logs/)", err=True)
    if failed:
        sys.exit(1)
    _next_steps(m, chosen, "supervisord")


def _next_steps(m: Manifest, hosts: list[str], backend: str) -> None:
    optional = [a for a in m.agents.values() if a.host in hosts and a.optional]
    deepest = max(optional, key=lambda a: len(graph.closure(m, [a.name])), default=None)
    click.echo("try next:")
    click.echo("  agentkit status                      every agent: dormant, active, failed, ...")
    if deepest is not None:
        click.echo(f"  agentkit call {deepest.name} --action chain"
                   f"    wake {deepest.name} and its dependencies, and see who answered")
    click.echo("  agentkit down                        stop the fleet" if backend == "supervisord" else
               "  agentkit down                        stop the fleet (agentkit uninstall removes it)")


@cli.command()
@host_option
@backend_option
@state_dir_option
@click.option("--timeout", default=120.0, show_default=True, metavar="SECONDS")
@click.pass_obj
def down(obj: Context, hosts, backend, state_dir, timeout) -> None:
    """Stop the fleet on this machine (supervisord: and supervisord itself)."""
    from . import supervisor_run
    m = obj.manifest
    backend = _backend(backend)
    if backend == "systemd":
        subprocess_run(["systemctl", "stop", TARGET_NAME, "agentkit-*.socket", "agentkit-*.service"])
        click.echo(f"stopped {TARGET_NAME} and its units")
        return
    chosen, _ = _up_hosts(m, hosts, backend)
    for host in chosen:
        directory = _state_dir(m, host, state_dir, len(chosen) > 1)
        if supervisor_run.down(directory, timeout=timeout):
            click.echo(f"{host}: supervisord and every agent stopped ({directory})")
        else:
            click.echo(f"{host}: nothing running ({directory})")


def subprocess_run(argv: list[str]) -> None:
    import subprocess
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AgentkitError(f"{' '.join(argv)}: {(result.stderr or result.stdout).strip()}")


@cli.command()
@click.argument("agent")
@click.option("--action", default="ping", show_default=True, type=click.Choice(["ping", "chain"]),
              help="chain: the agent calls each of its dependencies in turn.")
@click.option("--timeout", default=30.0, show_default=True, metavar="SECONDS")
@click.pass_obj
def call(obj: Context, agent, action, timeout) -> None:
    """Send one request to AGENT's port, as its clients do (ZeroMQ REQ, JSON); print the reply."""
    import zmq
    m = obj.manifest
    if agent not in m.agents:
        raise AgentkitError(f"unknown agent {agent!r}{manifest_mod._suggest(agent, m.agents)}")
    port = m.agents[agent].port
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    started = time.monotonic()
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_json({"action": action})
        try:
            reply = sock.recv_json()
        except zmq.Again:
            raise AgentkitError(f"{agent} (127.0.0.1:{port}) did not answer within {timeout:g} s") from None
    finally:
        sock.close()
    click.echo(json.dumps(reply, indent=2))
    click.echo(f"{agent} answered in {(time.monotonic() - started) * 1000:.0f} ms", err=True)


@cli.command()
@this_host_option
@profile_option
@backend_option
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
@click.pass_obj
def status(obj: Context, hosts, profile, backend, state_dir, as_json) -> None:
    """Every agent of this host: dormant, starting, active, stopping, failed; since when, restarts, memory."""
    m = obj.manifest
    backend = _backend(backend)
    if backend == "systemd":
        from . import status as status_mod
        from .systemd import Systemd
        host = _one_host(m, hosts)
        record = install_mod.Record.read("/")
        profile = profile or record.profile or m.default_profile

        async def gather():
            manager = Systemd()
            try:
                return await status_mod.collect(m, host, profile, manager)
            finally:
                manager.close()

        rows = [r.as_json() for r in install_mod.run(gather())]
        chosen = [host]
    else:
        from . import supervisor_run
        chosen, _ = _up_hosts(m, hosts, backend)
        profile = profile or m.default_profile
        rows = []
        for host in chosen:
            directory = _state_dir(m, host, state_dir, len(chosen) > 1)
            if not supervisor_run.running(directory):
                raise AgentkitError(f"{host}: no supervisord answers in {directory} (start the fleet with agentkit up)")
            rows += supervisor_run.collect(m, host, profile, directory)
    if as_json:
        click.echo(json.dumps({"host": chosen[0] if len(chosen) == 1 else chosen, "backend": backend,
                               "profile": profile, "agents": rows}, indent=2))
        return
    now = time.time()
    table = [("AGENT", "STATE", "SINCE", "RESTARTS", "MEMORY", "START")]
    for r in rows:
        table.append((r["name"], r["state"], _ago(now, r["since"]), "-" if r["restarts"] is None else str(r["restarts"]),
                      _mib(r["memory"]), "-" if r["last_start_s"] is None else f"{r['last_start_s']:.3f}s"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    click.echo(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if counts.get("failed"):
        sys.exit(1)


def _ago(now: float, since: float | None) -> str:
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.1f}M"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; turn agentkit's errors into a message and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
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
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        count = len(exc.problems)
        click.echo(f"agentkit: {count} problem{'s' if count != 1 else ''} in the manifest; nothing was written",
                   err=True)
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
