"""agentkit-status: the command (see the package's docstring)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click
from aiohttp import web

from .. import logs, parsers, units
from ..errors import AgentkitError
from ..sdnotify import Notifier
from .board import Board
from .web import make_app


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        if not sep:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return parsers.bind(host.strip("[]")), parsers.port(int(port))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--listen", default="127.0.0.1:8202", help="HOST:PORT to serve on")
@click.option("--host", "host_name", required=True, help="the manifest's name of this host")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def main(listen: str, host_name: str, log_level: str) -> None:
    """The host's status service: /health, /metrics, /events and a live page of every agent."""
    logs.setup(units.STATUS_PROGRAM, level=log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    address, port = _listen(listen)
    sys.exit(asyncio.run(serve(address, port, host_name)))


async def serve(address: str, port: int, host_name: str) -> int:
    from .systemd import SystemdSource  # sdbus only here

    log = logging.getLogger(units.STATUS_PROGRAM)
    board = Board(host_name)
    source = SystemdSource(board)
    notifier = Notifier(os.environ)
    runner = web.AppRunner(make_app(board, source.sample), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await source.start()
        except AgentkitError as exc:
            log.error("%s", exc)
            return 1
        site = web.TCPSite(runner, address, port, backlog=256, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", address, port, os.strerror(exc.errno) if exc.errno else exc)
            return 1
        log.info("listening on http://%s:%d (/health, /metrics, /events, /)", address, port)
        notifier.send("READY=1", f"STATUS=watching {len(board.rows)} agents on http://{address}:{port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        notifier.send("STOPPING=1")
        return 0
    finally:
        await runner.cleanup()
        source.close()
        notifier.close()


if __name__ == "__main__":
    main()
