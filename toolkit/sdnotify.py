"""systemd's two small protocols for services: sd_notify(3) and sd_listen_fds(3).

Used by the reference agent, the router and the activator. Standard library only,
and cheap to import: an agent's start-up time is the point of socket activation.
"""

import logging
import os
import socket
import time

log = logging.getLogger("agentkit.sdnotify")


class Notifier:
    """sd_notify(3) over NOTIFY_SOCKET, and the watchdog's schedule."""

    def __init__(self, env):
        self.sock = None
        self.address = env.get("NOTIFY_SOCKET", "")
        if self.address[:1] in ("/", "@"):
            if self.address[0] == "@":
                self.address = "\0" + self.address[1:]
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        elif self.address:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying", self.address)
        self.interval = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.interval = int(usec) / 2e6
        self.next_watchdog = time.monotonic()  # the first WATCHDOG=1 goes out on the first tick
        self.warned = False

    def send(self, *lines):
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self.warned:
                self.warned = True
                log.warning("cannot notify %r: %s", self.address, exc)

    def tick(self, now=None):
        """WATCHDOG=1 if it is due; call it from the loop that does the work, never from a side thread."""
        if self.interval is None:
            return
        now = time.monotonic() if now is None else now
        if now >= self.next_watchdog:
            self.send("WATCHDOG=1")
            self.next_watchdog = now + self.interval

    def until_watchdog(self, now):
        return None if self.interval is None else max(0.0, self.next_watchdog - now)

    def close(self):
        if self.sock is not None:
            self.sock.close()


async def until_stopped(notifier: "Notifier") -> None:
    """Return at SIGTERM or SIGINT, having told systemd STOPPING=1: the end of a service's main loop
    (the router's, the status service's)."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    notifier.send("STOPPING=1")


def listen_fds(env):
    """sd_listen_fds_with_names(unset_environment=1): [(fd, name)] passed to this process."""
    pid, count, names = (env.pop(key, "") for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    names = names.split(":") if names else []
    fds = []
    for i in range(int(count)):
        fd = 3 + i
        try:
            os.set_inheritable(fd, False)  # ours, not our children's
        except OSError:
            continue  # LISTEN_FDS counted more than we got
        fds.append((fd, names[i] if i < len(names) else "unknown"))
    return fds
