"""plan(): the manifest -> the systemd units of one host, pure and deterministic.

No I/O but reading templates: the same manifest, host, profile, bin dir and
templates always give the same bytes, sorted by path, so golden files and
`agentkit diff` are exact. Writing is files.replace_tree()'s job, and install's.
"""

from __future__ import annotations

import os

import jinja2

from ... import env as contract, escape, graph, programs, templating, units, values
from ...files import RenderedFile
from ...model import Manifest
from ...router.command import model_names, router_command, router_on
from ...gpu import table as gpu_table
from ...statusd import where

SOCKET_PROXYD = "/usr/lib/systemd/systemd-socket-proxyd"
SYSUSERS = "/usr/bin/systemd-sysusers"
TEMPLATES = ["agent.service.j2", "agent.socket.j2", "proxy.service.j2", "agentkit.target.j2", "agentkit.slice.j2",
             "agentkit-rearm@.timer.j2", "agentkit-rearm@.service.j2", "router.service.j2", "router.socket.j2",
             "status.service.j2", "status-user.service.j2", "live.service.j2"]


def _listen_stream(bind: str, port: int) -> str:
    """ListenStream= of an address and port: [::1]:8090 for IPv6, 0.0.0.0:8090 otherwise (the
    manifest refuses a scoped address, fe80::1%eth0, which systemd 252 cannot listen on)."""
    return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"


def status_command(host, bin_dir: str) -> list[str]:
    """agentkit-status's argv for a host of the manifest."""
    argv = [os.path.join(bin_dir, units.STATUS_PROGRAM)]
    for listen in where.listen(host):
        argv += ["--listen", listen]
    return argv + ["--host", host.name]


def ready_command(agent, bin_dir: str) -> str | None:
    """ExecStartPost= that holds the unit in "activating" until the agent is ready, or None
    (notify: systemd waits for READY=1 itself; started: the process running is enough).

    The port and HTTP probes run with full privileges ('+'): outside the agent's sandbox, so
    agentkit's bin directory need not be visible to the agent. A probe command is the
    user's, and runs as the agent does, in its sandbox."""
    ready = agent.ready
    if ready.kind in ("notify", "started"):
        return None
    # A little under TimeoutStartSec=, which systemd arms anew for ExecStartPost=: the probe, not
    # systemd's SIGTERM, ends a start that timed out, and its last word reaches the journal.
    budget = values.seconds(agent.start_timeout)
    probe = programs.ready_probe(bin_dir) + ["--timeout", f"{max(budget * 0.5, budget - 0.5):g}"]
    port = contract.listen_port(agent)
    if ready.kind == "port":
        return "+" + escape.systemd_exec(probe + ["--port", contract.loopback(port)])
    if ready.kind == "http":
        return "+" + escape.systemd_exec(probe + ["--http", contract.loopback(port), ready.path])
    return escape.systemd_exec(probe + ["--command", *programs.argv(ready.command, bin_dir, port)])


def admit_command(agent, table, bin_dir: str) -> str | None:
    """ExecStartPre= that admits an optional GPU agent on its GPU (agentkit-admit), or None.
    With full privileges ('+'): it reads other agents' processes and stops idle ones over D-Bus.
    systemd arms TimeoutStartSec= anew for it, as for ExecStart=: a little under it, so that
    admission, not systemd's SIGTERM, ends a wait for room, and says why."""
    if table is None or agent.essential or table.tenant(agent.name) is None:
        return None
    budget = values.seconds(agent.start_timeout)
    return "+" + escape.systemd_exec([os.path.join(bin_dir, units.ADMIT_PROGRAM), agent.name, "--timeout",
                                      f"{max(budget * 0.5, budget - 0.5):g}"] + table.args())


def live_command(agent, bin_dir: str) -> list[str]:
    """agentkit-ready --live for an agent: its health port if it has one, else the port its program
    listens on (the private one behind the proxy)."""
    live = agent.liveness
    port = contract.loopback(contract.live_port(agent))
    probe = ["--port", port] if live.kind == "tcp" else ["--http", port, live.path]
    return programs.ready_probe(bin_dir) + ["--live", f"{live.interval / 1e6:g}", str(live.failures),
                                            units.service(agent.name)] + probe


def dependencies(agent, on_host: dict) -> tuple[list[str], list[str], list[str]]:
    """(Requires= and After=, Wants=, After= only) of an agent's unit, for its dependencies on this host.

    An essential dependency runs already: Wants= and After= its service. Not Requires=: systemd
    252 propagates a restart to the units that require the restarted one, so every SIGKILL or
    crash of an essential agent would stop its dependants too, cutting short their requests
    (bench/soak.py counted them); wanted, the dependant runs on while its dependency comes back,
    and its calls wait for it, as a ZeroMQ client's do. An optional one
    sits behind its socket, which holds the way until the dependency is ready (native: it
    accepts only then; proxy: the proxy starts after the agent is active): the unit needs
    the socket (Requires= and After=) and wants the service (or its proxy, which needs the
    service) without waiting for it, so a cold chain starts all its members at once and costs
    its slowest, not the sum."""
    requires, wants, after = [], [], []
    for name in agent.depends_on:
        dep = on_host.get(name)
        if dep is None:
            continue  # on another host: an address in AGENTKIT_DEPENDS
        if dep.essential:
            wants.append(units.service(name))
            after.append(units.service(name))
        else:
            requires.append(units.socket(name, dep.activation))
            # Behind a proxy, the proxy too: when the dependant first calls, its way through is up
            # already instead of starting then. Wanting the service itself keeps it up while the
            # dependant runs (StopWhenUnneeded= counts Wants=), as the activator does.
            wants.append(units.service(name))
            if dep.activation == "proxy":
                wants.append(units.proxy(name))
    return requires, wants, after


def plan(manifest: Manifest, host: str, profile: str | None = None, *,
         bin_dir: str, templates: str | None = None) -> list[RenderedFile]:
    """Every unit file of `host` for `profile`, sorted by path."""
    agents = graph.on_host(manifest, host, profile)
    (service_t, socket_t, proxy_t, target_t, slice_t, rearm_timer_t, rearm_service_t,
     router_t, router_socket_t, status_t, status_user_t, live_t) = templating.templates("systemd", TEMPLATES, templates).values()

    profile_name = profile or manifest.default_profile
    on_host = {a.name: a for a in agents}
    gpus = gpu_table.for_host(manifest, host, agents)
    files: list[RenderedFile] = []
    try:
        for agent in agents:
            requires, wants, after = dependencies(agent, on_host)
            if agent.liveness is not None:
                wants = wants + [units.live(agent.name)]
            service = units.service(agent.name)
            socket = units.socket(agent.name, agent.activation)
            common = {"agent": agent, "unit": service, "source": os.path.basename(agent.where.file)}
            files.append(RenderedFile(service, service_t.render(
                common,
                requires=requires,
                wants=wants,
                after=after,
                command=escape.systemd_exec(programs.argv(agent.command, bin_dir, contract.listen_port(agent))),
                ready=ready_command(agent, bin_dir),
                admit=admit_command(agent, gpus, bin_dir),
                environment=[escape.systemd_env(k, v) for k, v in contract.for_agent(manifest, agent)],
                slice=units.slice_(agent.slice),
                target=units.TARGET,
            )))
            if agent.liveness is not None:
                files.append(RenderedFile(units.live(agent.name), live_t.render(
                    common, target=units.TARGET, slice=units.slice_(agent.slice),
                    command=escape.systemd_exec(live_command(agent, bin_dir)))))
            if agent.optional or agent.activation == "native":  # an essential native one: its port too
                files.append(RenderedFile(socket, socket_t.render(
                    common, target=units.TARGET, proxy=units.proxy(agent.name) if agent.activation == "proxy" else None)))
            if agent.activation == "proxy":
                files.append(RenderedFile(units.proxy(agent.name), proxy_t.render(
                    common, socket=socket, target=units.TARGET,
                    command=escape.systemd_exec((SOCKET_PROXYD, f"--exit-idle-time={values.format_span(agent.idle_stop)}",
                                                 contract.loopback(agent.private_port))),
                )))
        socketed = [a for a in agents if a.optional or a.activation == "native"]
        if socketed:
            delay = max(a.restart.interval for a in socketed)
            files.append(RenderedFile(units.REARM + ".timer", rearm_timer_t.render(delay=delay)))
            files.append(RenderedFile(units.REARM + ".service", rearm_service_t.render()))
        used_slices = sorted({a.slice for a in agents})
        files.append(RenderedFile(units.ROOT_SLICE, slice_t.render(
            slice=None, name=manifest.name, host=host)))
        for name in used_slices:
            files.append(RenderedFile(units.slice_(name), slice_t.render(
                slice=manifest.slices[name], name=manifest.name, host=host)))
        router = router_on(manifest, host)
        if router is not None:
            local_models, cloud_models = model_names(router)
            source = os.path.basename(router.where.file)
            files.append(RenderedFile(units.ROUTER_SOCKET, router_socket_t.render(
                source=source, target=units.TARGET, listen=_listen_stream(router.bind, router.port))))
            files.append(RenderedFile(units.ROUTER, router_t.render(
                router=router, agent={"user": None}, source=source, target=units.TARGET, socket=units.ROUTER_SOCKET,
                slice=units.ROOT_SLICE, command=" \\\n    ".join(escape.systemd_exec(g) for g in router_command(router, bin_dir)),
                local_model=local_models, cloud_model=cloud_models,
            )))
        files.append(RenderedFile(units.STATUS, status_t.render(
            host=host, source=os.path.basename(manifest.hosts[host].where.file), target=units.TARGET,
            slice=units.ROOT_SLICE,
            command=escape.systemd_exec(status_command(manifest.hosts[host], bin_dir) + (gpus.args() if gpus else [])),
            loopback=where.loopback_only(where.listen(manifest.hosts[host])),
            agent={"user": units.STATUS_USER}, user=units.STATUS_USER, user_unit=units.STATUS_USER_UNIT,
        )))
        files.append(RenderedFile(units.STATUS_USER_UNIT, status_user_t.render(
            target=units.TARGET, user=units.STATUS_USER, sysusers=SYSUSERS)))
        files.append(RenderedFile(units.TARGET, target_t.render(
            name=manifest.name, host=host, profile=profile_name,
            services=[units.service(a.name) for a in agents if a.essential] + ([units.ROUTER] if router is not None else [])
            + [units.STATUS],
            sockets=[units.socket(a.name, a.activation) for a in socketed]
            + ([units.ROUTER_SOCKET] if router is not None else []),
        )))
    except jinja2.TemplateError as exc:
        raise templating.render_error(exc) from exc
    return sorted(files, key=lambda f: f.path)
