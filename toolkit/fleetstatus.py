"""`agentkit status --all`: every host's status service, read over HTTP at once.

Each host's /health (its address from the manifest or --address, its status port)
is read in parallel; a host that does not answer is reported, never waited on
longer than the timeout, and makes the command exit 1 like a failed agent.
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor

from .model import Manifest

TIMEOUT = 3.0


def url_of(manifest: Manifest, host: str) -> str:
    h = manifest.hosts[host]
    address = f"[{h.address}]" if ":" in h.address else h.address
    return f"http://{address}:{h.status_port}/health"


def read(manifest: Manifest, hosts: list[str], timeout: float = TIMEOUT) -> dict[str, dict]:
    """host -> {"url", "status" (ok, degraded, unreachable), "error", "agents"}, in `hosts` order."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        answers = list(pool.map(lambda host: _health(manifest, host, timeout), hosts))
    return dict(zip(hosts, answers))


def _health(manifest: Manifest, host: str, timeout: float) -> dict:
    h = manifest.hosts[host]
    url = url_of(manifest, host)
    conn = http.client.HTTPConnection(h.address, h.status_port, timeout=timeout)
    try:
        conn.request("GET", "/health", headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(16 << 20)
        if response.status not in (200, 503):
            return {"url": url, "status": "unreachable", "error": f"answered HTTP {response.status}", "agents": []}
        answer = json.loads(body)
        return {"url": url, "status": answer.get("status", "degraded"), "error": None,
                "agents": answer.get("agents", [])}
    except (OSError, http.client.HTTPException) as exc:
        why = "no answer within %g s" % timeout if isinstance(exc, TimeoutError) else (
            getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        return {"url": url, "status": "unreachable", "error": why, "agents": []}
    except ValueError:
        return {"url": url, "status": "unreachable", "error": "the answer is not JSON", "agents": []}
    finally:
        conn.close()
