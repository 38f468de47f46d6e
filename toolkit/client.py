"""One request to an agent's port, as its clients send it (ZeroMQ REQ, JSON): agentkit call."""

from __future__ import annotations

import time

from .errors import AgentkitError


def request(name: str, port: int, action: str, timeout: float, host: str = "127.0.0.1") -> tuple[dict, float]:
    """The agent's reply and the seconds it took."""
    import zmq  # ~25 ms: only for this command

    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    started = time.monotonic()
    try:
        sock.connect(f"tcp://{host}:{port}")
        sock.send_json({"action": action})
        try:
            reply = sock.recv_json()
        except zmq.Again:
            raise AgentkitError(f"{name} ({host}:{port}) did not answer within {timeout:g} s") from None
    finally:
        sock.close()
    return reply, time.monotonic() - started
