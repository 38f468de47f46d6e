"""supervisord's XML-RPC API, called from a small thread pool so that the loop never blocks."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

RPC_CONNECT_TIMEOUT = 30.0  # s to keep trying supervisord's socket (it may not exist yet)
RPC_TIMEOUT = 120.0        # s for one XML-RPC call (stopProcess waits for the stop)
RPC_THREADS = 4

# supervisord's process states (supervisor.states.ProcessStates), by name.
UP_STATES = frozenset(("STARTING", "RUNNING", "BACKOFF"))
DOWN_STATES = frozenset(("STOPPED", "EXITED", "FATAL"))
# supervisord's fault codes (supervisor.xmlrpc.Faults).
BAD_NAME, ALREADY_STARTED, NOT_RUNNING = 10, 60, 70


class SupervisorUnreachable(Exception):
    """supervisord's XML-RPC socket did not answer in time."""


class Supervisor:
    """supervisord's XML-RPC interface, called from worker threads.

    supervisor's own transport (unix socket or HTTP) keeps one connection open and is
    not thread-safe: every worker thread gets its own ServerProxy. Calls retry while
    supervisord's socket is missing or refuses (it may not be up yet), up to
    RPC_CONNECT_TIMEOUT; faults come back as xmlrpc.client.Fault.
    """

    def __init__(self, url, connect_timeout=RPC_CONNECT_TIMEOUT):
        self.url = url
        self.connect_timeout = connect_timeout
        self.local = threading.local()
        self.closing = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="xmlrpc")

    def _proxy(self):
        proxy = getattr(self.local, "proxy", None)
        if proxy is None:
            import xmlrpc.client
            from supervisor.xmlrpc import SupervisorTransport
            transport = SupervisorTransport(None, None, self.url)
            make = getattr(transport, "_get_connection", None)
            if make is not None:
                def connection():  # its unix socket connection ignores timeouts: give it one
                    conn = make()
                    conn.timeout = RPC_TIMEOUT
                    connect = conn.connect

                    def connect_with_timeout():
                        connect()
                        if conn.sock is not None:
                            conn.sock.settimeout(RPC_TIMEOUT)
                    conn.connect = connect_with_timeout
                    return conn
                transport._get_connection = connection
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            self.local.proxy, self.local.transport = proxy, transport
        return proxy

    def call_blocking(self, method, *args):
        import http.client
        import xmlrpc.client
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.05
        while True:
            proxy = self._proxy()
            try:
                return getattr(proxy.supervisor, method)(*args)
            except xmlrpc.client.Fault:
                raise
            except xmlrpc.client.ProtocolError as exc:
                self.local.transport.close()
                raise SupervisorUnreachable(f"supervisord at {self.url} answered HTTP {exc.errcode} "
                                            f"{exc.errmsg}") from None
            except (OSError, http.client.HTTPException) as exc:
                # Missing socket, refused, or a kept-alive connection that went away:
                # reconnect. Repeating a start or stop is harmless (ALREADY_STARTED,
                # NOT_RUNNING are expected answers).
                self.local.transport.close()
                if time.monotonic() + delay > deadline:
                    raise SupervisorUnreachable(f"cannot reach supervisord at {self.url}: {exc}") from None
                if self.closing.wait(delay):
                    raise SupervisorUnreachable("the activator is stopping") from None
                delay = min(delay * 2, 0.5)

    async def call(self, method, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(self.call_blocking, method, *args))

    def close(self):
        self.closing.set()
        self.executor.shutdown(wait=False, cancel_futures=True)


def fault_code(exc):
    """An xmlrpc.client.Fault's code (BAD_NAME, ...), else None."""
    return getattr(exc, "faultCode", None)
