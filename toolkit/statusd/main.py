"""agentkit-status: the command (see the package's docstring)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click
from aiohttp import web

from .. import logs, units
from ..errors import AgentkitError
from ..sdnotify import Notifier, until_stopped
from ..gpu import ledger, table as gpu_table
from .board import Board
from .gpu import GpuView
from .web import make_app


FOLLOW_INTERVAL = 0.2  # s between looks at the admission ledger (an fstat when nothing changed)


def _listen(ctx, param, values) -> list[tuple[str, int]]:
    out = []
    for text in values:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"expected HOST:PORT, got {text!r}")
        out.append((host.strip("[]"), int(port)))
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--listen", multiple=True, default=["127.0.0.1:8202"], callback=_listen,
              help="HOST:PORT to serve on (repeatable; a host name is resolved)")
@click.option("--host", "host_name", required=True, help="the manifest's name of this host")
@click.option("--backend", type=click.Choice(["systemd", "supervisord"]), default="systemd",
              help="who runs the agents: systemd (read over D-Bus) or supervisord (agentkit up)")
@click.option("--state-dir", type=click.Path(file_okay=False, exists=True),
              help="supervisord: the state directory of agentkit up (its socket, activator.json)")
@click.option("--live", "liveness", multiple=True, metavar="NAME,SECONDS,FAILURES,KIND,HOST:PORT[,PATH]",
              help="supervisord: probe this agent while it runs (tcp, or http PATH); after FAILURES misses in a "
                   "row, have supervisord kill it so that it restarts (repeatable)")
@click.option("--gpu", "gpus", multiple=True, metavar="INDEX=BYTES|auto",
              help="a GPU of the host's GPU agents (repeatable; agentkit render writes these)")
@click.option("--gpu-reserve", multiple=True, metavar="INDEX=BYTES", help="what the router keeps free on a GPU")
@click.option("--tenant", "tenants", multiple=True, metavar="NAME=GPU:BYTES:CLASS",
              help="a GPU agent: its GPU, its gpu_memory, its gpu_evict class (or essential)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def main(listen: list[tuple[str, int]], host_name: str, backend: str, state_dir: str | None, liveness: tuple[str, ...],
         gpus: tuple[str, ...], gpu_reserve: tuple[str, ...], tenants: tuple[str, ...], log_level: str) -> None:
    """The host's status service: /health, /metrics, /events and a live page of every agent."""
    logs.setup(units.STATUS_PROGRAM, level=log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if backend == "supervisord" and not state_dir:
        raise click.UsageError("--backend supervisord needs --state-dir")
    try:
        probes = [_probe(text) for text in liveness]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--live") from None
    if probes and backend != "supervisord":
        raise click.UsageError("--live is for supervisord: under systemd each agent's liveness is a unit")
    try:
        table = gpu_table.parse_args(list(gpus), list(gpu_reserve), list(tenants)) if tenants else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    sys.exit(asyncio.run(serve(listen, host_name, backend, state_dir, probes, table)))


def _probe(text: str):
    from .liveness import Probe

    parts = text.split(",", 5)
    if len(parts) < 5 or parts[3] not in ("tcp", "http") or (parts[3] == "http") != (len(parts) == 6):
        raise ValueError(f"expected NAME,SECONDS,FAILURES,tcp,HOST:PORT or NAME,SECONDS,FAILURES,http,HOST:PORT,PATH, "
                         f"got {text!r}")
    host, _, port = parts[4].rpartition(":")
    return Probe(parts[0], float(parts[1]), int(parts[2]), parts[3], host, int(port), parts[5] if len(parts) == 6 else None)


def _source(backend: str, board: Board, state_dir: str | None, probes=(), view: GpuView | None = None):
    if backend == "supervisord":
        from .supervisord import SupervisordSource
        return SupervisordSource(board, state_dir, probes, view)
    from .systemd import SystemdSource  # sdbus only here
    return SystemdSource(board, view)


def ledger_path(backend: str, state_dir: str | None) -> str:
    """Where admission writes what it decided: agentkit-admit under systemd, the activator
    (in its state directory) under supervisord."""
    directory = ledger.SYSTEMD_DIR if backend == "systemd" else state_dir
    return os.path.join(directory, ledger.NAME)


async def _follow(view: GpuView, board: Board) -> None:
    while True:
        view.follow(board)
        await asyncio.sleep(FOLLOW_INTERVAL)


async def serve(listen: list[tuple[str, int]], host_name: str, backend: str = "systemd",
                state_dir: str | None = None, probes=(), table=None) -> int:
    log = logging.getLogger(units.STATUS_PROGRAM)
    board = Board(host_name)
    view = board.admission = GpuView(table, ledger_path(backend, state_dir))
    source = _source(backend, board, state_dir, probes, view)
    follower = asyncio.get_running_loop().create_task(_follow(view, board))
    notifier = Notifier(os.environ)
    runner = web.AppRunner(make_app(board, source.sample), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await source.start()
        except (AgentkitError, OSError) as exc:
            log.error("cannot read the %s host: %s", backend, exc)
            return 1
        serving = []
        for address, port in listen:
            try:
                await web.TCPSite(runner, address, port, backlog=256, reuse_address=True).start()
            except OSError as exc:
                # One address that cannot be had (a name that does not resolve yet) leaves the others.
                log.error("cannot listen on %s:%d: %s", address, port, os.strerror(exc.errno) if exc.errno else exc)
                continue
            serving.append(f"http://{address}:{port}")
        if not serving:
            return 1
        log.info("listening on %s (/health, /metrics, /events, /)", ", ".join(serving))
        notifier.send("READY=1", f"STATUS=watching {len(board.rows)} agents on {', '.join(serving)}")
        await until_stopped(notifier)
        return 0
    finally:
        follower.cancel()
        await runner.cleanup()
        source.close()
        notifier.close()


if __name__ == "__main__":
    main()
