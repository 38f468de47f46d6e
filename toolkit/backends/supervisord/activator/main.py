"""The command: agentkit-activator --config PATH (argv, logging, the listening sockets, the loop)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

from agentkit import __version__, logs
from agentkit.errors import AgentkitError
from agentkit.sdnotify import Notifier

from ..config import Config, ConfigError
from . import PROG
from .core import BACKLOG, Activator
from .rpc import Supervisor


class ListenError(AgentkitError):
    """A public port we cannot listen on."""


def listen_all(config):
    """Listening sockets for every agent's public address, or ListenError (none left open)."""
    socks = []
    try:
        for spec in config.agents:
            host, port = spec.listen
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(BACKLOG)
            except OSError as exc:
                raise ListenError(f"agent {spec.name}: cannot listen on {host}:{port}: "
                                  f"{exc.strerror or exc}") from None
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hold the optional agents' ports under supervisord; start an agent (and its "
                    "dependencies) on its first connection, forward, and stop it when idle.")
    parser.add_argument("--config", required=True, metavar="PATH",
                        help="the activator's JSON configuration, written by agentkit's supervisord renderer")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser.parse_args(argv)


def main(argv=None):
    # Until the loop handles them: SIGTERM/SIGINT exit 0 without a traceback.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    log = logs.setup(PROG)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = Config.load(args.config)
    except ConfigError as exc:
        log.error(f"{exc}; not started")
        return 1
    try:
        import supervisor.xmlrpc  # noqa: F401 - its transport speaks to supervisord
    except ImportError:
        log.error("the Python package 'supervisor' is not installed here (pip install supervisor)")
        return 1
    try:
        listeners = listen_all(config)  # before anything else: from now on no connection is refused
    except ListenError as exc:
        log.error(str(exc))
        return 1
    rpc = Supervisor(config.supervisor)
    notifier = Notifier(os.environ)

    async def run():
        await Activator(config, listeners, rpc, notifier).run()
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(run())
        else:
            uvloop.run(run())
    finally:
        for sock in listeners:
            sock.close()
        rpc.close()
        notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
