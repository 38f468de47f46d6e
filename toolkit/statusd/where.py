"""Where a host's status service listens, from the manifest (hosts.<name>.status): said once
for both backends' renderers."""

from __future__ import annotations

import ipaddress


def listen(host) -> list[str]:
    """The HOST:PORT agentkit-status listens on: its bind, or loopback and the host's address."""
    port = host.status_port
    if host.status_bind != "address":
        return [f"{host.status_bind}:{port}"]
    listen = [f"127.0.0.1:{port}"]
    try:
        if ipaddress.ip_address(host.address).is_loopback:
            return listen
    except ValueError:
        pass  # a name: resolved when the service starts
    return listen + [f"[{host.address}]:{port}" if ":" in host.address else f"{host.address}:{port}"]


def loopback_only(listens: list[str]) -> bool:
    """Whether every HOST:PORT is a loopback address (a name might not be)."""
    for listen in listens:
        try:
            if not ipaddress.ip_address(listen.rpartition(":")[0].strip("[]")).is_loopback:
                return False
        except ValueError:
            return False
    return True
