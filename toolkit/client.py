"""One request to an agent's port, as its clients send it: `agentkit call`.

The reference agent speaks ZeroMQ REQ/REP with JSON; any other agent is asked over
HTTP (method, path, body) or plain TCP (bytes out, what comes back until it closes).
A failure says which step failed: nothing accepted the connection, it was accepted
but no answer came, the answer was not the protocol asked for, or it was closed
without an answer.
"""

from __future__ import annotations

import http.client
import socket
import time

from .errors import AgentkitError

PROTOCOLS = ("zmq", "http", "tcp")


class CallFailed(AgentkitError):
    """The request got no answer; the message says at which step."""


def _connect(name: str, host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise CallFailed(f"{name} ({host}:{port}): nothing accepted the connection within {timeout:g} s") from None
    except OSError as exc:
        raise CallFailed(f"{name} ({host}:{port}): nothing accepted the connection: {exc.strerror or exc}") from None


def zmq_request(name: str, port: int, action: str, timeout: float, host: str = "127.0.0.1") -> tuple[dict, float]:
    """The agent's JSON reply and the seconds it took."""
    import zmq  # ~25 ms: only for this command

    started = time.monotonic()
    # ZeroMQ connects in the background and never says it could not: a plain connect
    # first tells "nothing listens" from "no answer".
    _connect(name, host, port, timeout).close()
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, max(1, int((timeout - (time.monotonic() - started)) * 1000)))
    try:
        sock.connect(f"tcp://{host}:{port}")
        sock.send_json({"action": action})
        try:
            reply = sock.recv_json()
        except zmq.Again:
            raise CallFailed(f"{name} ({host}:{port}): accepted the connection, but no ZeroMQ answer came within "
                             f"{timeout:g} s (is it a ZeroMQ REP agent? --protocol http or tcp for others)") from None
        except ValueError:
            raise CallFailed(f"{name} ({host}:{port}): the ZeroMQ answer is not JSON") from None
    finally:
        sock.close()
    return reply, time.monotonic() - started


def http_request(name: str, port: int, method: str, path: str, body: bytes | None, timeout: float,
                 host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes, float]:
    """(status, headers, body, seconds) of one HTTP request on a fresh connection."""
    started = time.monotonic()
    sock = _connect(name, host, port, timeout)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request(method, path, body=body, headers={"User-Agent": "agentkit-call"})
        answer = conn.getresponse()
        data = answer.read()
    except socket.timeout:
        raise CallFailed(f"{name} ({host}:{port}): accepted the connection, but no HTTP answer came within "
                         f"{timeout:g} s") from None
    except http.client.RemoteDisconnected:
        raise CallFailed(f"{name} ({host}:{port}): accepted the connection, then closed it without an answer") from None
    except http.client.BadStatusLine as exc:
        raise CallFailed(f"{name} ({host}:{port}): the answer is not HTTP ({str(exc)[:60]!r}); "
                         "--protocol zmq or tcp?") from None
    except http.client.HTTPException as exc:  # a broken answer: cut short, a header too long, ...
        raise CallFailed(f"{name} ({host}:{port}): the HTTP answer is broken: {type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # what http.client refuses to send: a path with spaces, a bad method
        raise CallFailed(f"{name}: cannot send that request: {exc}") from None
    except OSError as exc:
        raise CallFailed(f"{name} ({host}:{port}): the connection failed: {exc.strerror or exc}") from None
    finally:
        conn.close()
    return answer.status, dict(answer.getheaders()), data, time.monotonic() - started


def tcp_request(name: str, port: int, data: bytes, timeout: float, host: str = "127.0.0.1") -> tuple[bytes, float]:
    """Send `data`, then read until the agent closes or `timeout` passes; (what came back, seconds)."""
    started = time.monotonic()
    sock = _connect(name, host, port, timeout)
    received = b""
    try:
        if data:
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            received += chunk
    except OSError as exc:
        raise CallFailed(f"{name} ({host}:{port}): the connection failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if not received:
        raise CallFailed(f"{name} ({host}:{port}): accepted the connection, but sent nothing back within "
                         f"{timeout:g} s")
    return received, time.monotonic() - started
