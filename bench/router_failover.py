"""Benchmark: failover -- a backend goes away under steady traffic; how long until work flows elsewhere, and what is lost.

Setting: agentkit-router (a subprocess, default settings but for the backend
URLs) in front of two stand-in backends (tests/router/standin.py, on threads of
this process). A client on this process's event loop (aiohttp) sends requests
at a steady rate, each with a fresh deadline; the tasks are the ones the
failing backend serves (code_generation when the cloud fails, simple_chat when
the local backend fails). After `--before` seconds the backend fails, in one of
these ways:

- down: its listener closes and its open connections are reset (connection refused from then on);
- error: it answers 503 to everything;
- ratelimit: it answers 429 with Retry-After: 30.

Figures per round, all from this process's monotonic clock:

- time to flow: from the failure to the first reply the other backend served
  for a request *sent after* the failure;
- requests lost: replies that were not 200, and requests with no reply
  (connection errors, timeouts), over the whole round;
- failed-over requests: those sent before the failure and answered by the
  other backend (the router moved them mid-flight).

Targets (the issue): time to flow under 1 s, no request lost; reported MET /
NOT MET, never asserted (the exit status is 1 only if the set-up fails).

Three more scenarios (--scenarios), with three stand-ins as processes of their
own (standin.py, uvloop) so that they share no interpreter with the client: a
router with two local backends (its own `local` and the peer `pc2`) and the cloud.

- first-byte: `pc2` hangs before its first byte (it accepts, reads the
  request and never answers); streamed requests (`--requests` of them,
  `--timing-rate` a second, so many wait at once) of a task type the rule
  table sends to pc2 (`--rule batch=pc2`: a fixed backend is tried first
  whenever it has room, however loaded, where work the rules send to "local"
  would go to the least loaded one, the idle `local`) go to it first, and
  with --first-byte-timeout (default 0.5 s) fail over to `local`. Its circuit
  never opens (--breaker-failures 1000000) and nothing limits the in-flight
  count, so every request waits the timeout out: the figure is the
  distribution (p50, p99, max) of each request's answer time (until the
  stream's last byte; its first chunk's too) less the timeout -- what
  failing over costs.
- hedge: the same, with --hedge-after (default 0.2 s; the first-byte timeout
  left at its 10 s): the answer time less hedge_after.
  Target, both: p99 at most 5 ms over the timeout, and none lost (every
  request a 200 stream from `local`, its text whole, ending in [DONE]).
  For reference the same paced traffic also goes through a router whose
  backends all answer: what one request costs at that pace on this machine
  with no failure at all (on an idle VM, a process woken after a pause
  answers several times slower than one kept busy back to back), so that
  "over the timeout" less this is what failing over itself adds.
- overhead: every backend answers; sequential requests on one keep-alive
  connection, not streamed and streamed, through the router and straight to
  the stand-in: p50 and p99 of each and the router's added p50.

    .venv/bin/python bench/router_failover.py [--scenarios flow,first-byte,hedge,overhead]
                                              [--rounds N] [--rate PER_S] [--modes down,error,ratelimit]
                                              [--failing cloud,local] [--first-byte-timeout S] [--hedge-after S]
                                              [--requests N] [--timing-rate PER_S] [--overhead-requests N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "router"))

from standin import StandinBackend  # noqa: E402

ROUTER = REPO / ".venv" / "bin" / "agentkit-router"
STANDIN = REPO / "tests" / "router" / "standin.py"
SCENARIOS = ("flow", "first-byte", "hedge", "overhead")
TARGET_OVER_MS = 5.0  # answer time less the timeout (or hedge_after), at p99
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(base: str, predicate, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                health = json.loads(resp.read())
        except OSError:
            health = None
        if health is not None and predicate(health):
            return health
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    raise RuntimeError(f"the router at {base} did not reach the expected state within {timeout} s")


async def round_(base: str, backend: StandinBackend, failing: str, mode: str, rate: float, before: float,
                 after: float) -> dict:
    task_type = "code_generation" if failing == "cloud" else "simple_chat"
    other = "local" if failing == "cloud" else "cloud"
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "steady"}],
                       "metadata": {"task_type": task_type}}).encode()
    records: list[tuple[float, float | None, str | None, int | None]] = []  # sent, done, backend, status
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(sent: float):
            try:
                async with session.post(base + "/v1/chat/completions", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    records.append((sent, time.monotonic(), resp.headers.get("X-Agentkit-Backend"), resp.status))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                records.append((sent, None, None, None))

        loop = asyncio.get_running_loop()
        tasks = []
        start = time.monotonic()
        failed_at = None
        interval = 1.0 / rate
        count = int((before + after) * rate)
        for i in range(count):
            due = start + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if failed_at is None and time.monotonic() >= start + before:
                failed_at = time.monotonic()
                if mode == "down":
                    await loop.run_in_executor(None, backend.stop)
                elif mode == "error":
                    backend.set_mode("error", status=503)
                else:
                    backend.set_mode("ratelimit", retry_after=30)
            tasks.append(asyncio.ensure_future(one(time.monotonic())))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    after_failure = sorted(done for sent, done, b, status in records
                           if sent >= failed_at and status == 200 and b == other)
    lost = [r for r in records if r[3] != 200]
    moved = [r for r in records if r[0] < failed_at and r[2] == other and r[3] == 200]
    return {"failing": failing, "mode": mode, "requests": len(records), "lost": len(lost),
            "time_to_flow_ms": (after_failure[0] - failed_at) * 1000 if after_failure else None,
            "failed_over_in_flight": len(moved),
            "served_by_other_after": len([r for r in records if r[0] >= failed_at and r[2] == other])}


# --- the timing scenarios: stand-ins and routers as processes ---------------------------------------

class Processes:
    """Every process started here, each in its own process group, stopped on the way out."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def standin(self, name: str, mode: str = "ok") -> tuple[subprocess.Popen, str]:
        """standin.py as a process: (the process, its base URL), once it says it is listening."""
        proc = subprocess.Popen([sys.executable, str(STANDIN), "--name", name, "--port", "0", "--mode", mode],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        self.procs.append(proc)
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            line = proc.stdout.readline() if sel.select(START_TIMEOUT) else ""
        match = re.match(r"listening (http://\S+/v1)", line)
        if not match:
            raise RuntimeError(f"the stand-in {name} did not say it was listening within {START_TIMEOUT:g} s "
                               f"(got {line!r})")
        return proc, match.group(1)

    def router(self, args: list[str]) -> tuple[subprocess.Popen, str]:
        """agentkit-router with `args`: (the process, its base URL), once /health answers."""
        port = free_port()
        program = str(ROUTER) if ROUTER.exists() else "agentkit-router"
        proc = subprocess.Popen([program, "--listen", f"127.0.0.1:{port}", "--log-level", "error"] + args,
                                env=dict(os.environ, LD_LIBRARY_PATH="/nonexistent-no-nvml"),
                                start_new_session=True)
        self.procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_health(base, lambda h: h["backends"]["local"]["up"] and h["backends"]["cloud"]["up"])
        return proc, base

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


FIXED = "batch"  # the task type the rule table sends to pc2


def router_args(local: str, pc2: str, cloud: str, *extra: str) -> list[str]:
    """Two local backends (the router's own and pc2, room for any number in flight) and the cloud; the
    timing scenarios' task type goes to pc2 first."""
    return ["--local-url", local, "--local-model", "local-8b", "--local-max-inflight", "100000",
            "--peer", f"pc2 url={pc2} max_inflight=100000; pc2-8b",
            "--cloud-url", cloud, "--cloud-model", "cloud-large",
            "--rule", f"{FIXED}=pc2", "--rule", "simple_chat=0.2", *extra]


def chat_body(text: str, stream: bool, task_type: str = FIXED) -> bytes:
    return json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}], "stream": stream,
                       "metadata": {"task_type": task_type}}).encode()


def stream_text(data: bytes) -> str | None:
    """The content of a chat completion's event stream, or None unless it ends in [DONE]."""
    events = [e for e in data.decode(errors="replace").split("\n\n") if e.strip()]
    if not events or events[-1].strip() != "data: [DONE]":
        return None
    text = []
    for event in events[:-1]:
        chunk = json.loads(event.removeprefix("data: "))
        for choice in chunk.get("choices", []):
            text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def answer_text(data: bytes, stream: bool) -> str | None:
    try:
        return stream_text(data) if stream else json.loads(data)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


async def timed(session: aiohttp.ClientSession, url: str, text: str, stream: bool,
                task_type: str = FIXED) -> dict:
    """One request: its status, backend, text, and the seconds to its first chunk and its last byte."""
    body = chat_body(text, stream, task_type)
    sent = time.monotonic()
    first = None
    data = b""
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            async for chunk in resp.content.iter_any():
                if first is None:
                    first = time.monotonic()
                data += chunk
            done = time.monotonic()
            return {"status": resp.status, "backend": resp.headers.get("X-Agentkit-Backend"),
                    "text": answer_text(data, stream), "first_s": (first or done) - sent, "done_s": done - sent}
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}", "done_s": time.monotonic() - sent}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def spread(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": statistics.median(values), "p99": percentile(values, 99), "max": max(values)}


async def fail_over_burst(base: str, count: int, rate: float, wait: float, by: str = "local") -> dict:
    """`count` streamed requests for pc2 at `rate` a second, each due to wait `wait` s for its failover to
    local (`by`: who answers; pc2 itself when it is not hung, wait 0)."""
    url = base + "/v1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = []
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(timed(session, url, f"request {i}", True)))
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60 + count / rate)
    right = [r for i, r in enumerate(results)
             if r["status"] == 200 and r["backend"] == by and r["text"] == f"{by}: request {i}"]
    errors = sorted({r.get("error") or f"HTTP {r['status']} from {r.get('backend')}: {r.get('text')!r}"
                     for r in results if r not in right})
    over = [(r["done_s"] - wait) * 1000 for r in right]
    first = [(r["first_s"] - wait) * 1000 for r in right]
    return {"requests": count, "answered": len(right), "lost": count - len(right), "errors": errors[:5],
            "wait_s": wait, "over_ms": spread(over), "first_chunk_over_ms": spread(first),
            "under_wait": sum(1 for v in over if v < 0),
            "met": len(right) == count and bool(over) and percentile(over, 99) <= TARGET_OVER_MS}


async def sequential(url: str, count: int, stream: bool, warmup: int = 100) -> dict:
    """`count` requests one after the other on one keep-alive connection: p50 and p99 in ms."""
    times = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        for i in range(warmup + count):
            r = await timed(session, url, "overhead", stream, "simple_chat")
            if r["status"] != 200 or r["text"] is None or not r["text"].endswith(": overhead"):
                raise RuntimeError(f"a wrong answer on the healthy path from {url}: {r}")
            if i >= warmup:
                times.append(r["done_s"] * 1000)
    return {"p50_ms": statistics.median(times), "p99_ms": percentile(times, 99)}


def timing_scenarios(args, wanted: list[str]) -> dict:
    procs = Processes()
    out: dict = {}
    try:
        _, local = procs.standin("local")
        _, pc2 = procs.standin("pc2")
        _, hung = procs.standin("pc2", "hang")
        _, cloud = procs.standin("cloud")
        healthy, base = procs.router(router_args(local, pc2, cloud))
        if "first-byte" in wanted or "hedge" in wanted:
            out["paced"] = asyncio.run(fail_over_burst(base, args.requests, args.timing_rate, 0.0, by="pc2"))
        if "overhead" in wanted:
            rows = {}
            for stream in (False, True):
                kind = "stream" if stream else "plain"
                direct = asyncio.run(sequential(local + "/chat/completions", args.overhead_requests, stream))
                routed = asyncio.run(sequential(base + "/v1/chat/completions", args.overhead_requests, stream))
                rows[kind] = {"direct": direct, "router": routed,
                              "added_p50_ms": routed["p50_ms"] - direct["p50_ms"],
                              "added_p99_ms": routed["p99_ms"] - direct["p99_ms"]}
            out["overhead"] = rows
        procs.stop(healthy)
        # The circuit of the hung backend never opens: every request really waits its timeout out.
        never_open = ["--breaker-failures", "1000000"]
        for name, flags, wait in (
                ("first-byte", ["--first-byte-timeout", f"{args.first_byte_timeout * 1000:g}ms"],
                 args.first_byte_timeout),
                ("hedge", ["--hedge-after", f"{args.hedge_after * 1000:g}ms"], args.hedge_after)):
            if name in wanted:
                router, base = procs.router(router_args(local, hung, cloud, *flags, *never_open))
                out[name] = asyncio.run(fail_over_burst(base, args.requests, args.timing_rate, wait))
                procs.stop(router)
    finally:
        procs.stop_all()
    return out


def print_timing(args, timing: dict) -> None:
    for name, what in (("first-byte", f"--first-byte-timeout {args.first_byte_timeout:g} s"),
                       ("hedge", f"--hedge-after {args.hedge_after:g} s")):
        r = timing.get(name)
        if r is None:
            continue
        print()
        print(f"{name}: pc2 hangs before its first byte; {what}; {r['requests']} streamed requests for pc2 at "
              f"{args.timing_rate:g}/s, answered by local")
        print(f"  answered whole by local: {r['answered']}/{r['requests']}, lost {r['lost']}"
              + (f" ({'; '.join(r['errors'])})" if r["errors"] else ""))
        for label, key in (("answer (last byte)", "over_ms"), ("first chunk", "first_chunk_over_ms")):
            d = r[key]
            if d["p50"] is None:
                print(f"  {label} - {r['wait_s'] * 1000:g} ms: -")
                continue
            print(f"  {label} - {r['wait_s'] * 1000:g} ms:  p50 {d['p50']:.2f} ms   p99 {d['p99']:.2f} ms   "
                  f"max {d['max']:.2f} ms")
        paced = timing.get("paced")
        if paced is not None and paced["over_ms"]["p50"] is not None:
            d = paced["over_ms"]
            print(f"  for reference, one healthy request at that pace:  p50 {d['p50']:.2f} ms   "
                  f"p99 {d['p99']:.2f} ms   max {d['max']:.2f} ms (lost {paced['lost']})")
            print(f"  so failing over itself adds about {r['over_ms']['p50'] - d['p50']:.2f} ms at p50")
        if r["under_wait"]:
            print(f"  {r['under_wait']} answered BEFORE the {r['wait_s'] * 1000:g} ms: they did not wait for it")
        worst = r["over_ms"]["max"]
        print(f"  target: p99 at most {TARGET_OVER_MS:g} ms over, none lost: {'MET' if r['met'] else 'NOT MET'}"
              f" (max {'within' if worst is not None and worst <= TARGET_OVER_MS else 'over'} {TARGET_OVER_MS:g} ms)")
    rows = timing.get("overhead")
    if rows:
        print()
        print(f"healthy path (every backend answers): {args.overhead_requests} sequential requests on one connection")
        print(f"{'':<10}{'direct p50':>11}{'p99':>8}{'router p50':>12}{'p99':>8}{'added p50':>11}{'added p99':>11}  ms")
        for kind, row in rows.items():
            print(f"{kind:<10}{row['direct']['p50_ms']:>11.3f}{row['direct']['p99_ms']:>8.3f}"
                  f"{row['router']['p50_ms']:>12.3f}{row['router']['p99_ms']:>8.3f}"
                  f"{row['added_p50_ms']:>+11.3f}{row['added_p99_ms']:>+11.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"of {', '.join(SCENARIOS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--before", type=float, default=1.0, help="seconds of traffic before the failure")
    parser.add_argument("--after", type=float, default=2.0, help="seconds of traffic after it")
    parser.add_argument("--modes", default="down,error,ratelimit")
    parser.add_argument("--failing", default="cloud,local")
    parser.add_argument("--first-byte-timeout", type=float, default=0.5, help="seconds (first-byte)")
    parser.add_argument("--hedge-after", type=float, default=0.2, help="seconds (hedge)")
    parser.add_argument("--requests", type=int, default=200, help="requests of first-byte and of hedge")
    parser.add_argument("--timing-rate", type=float, default=50.0, help="their requests per second")
    parser.add_argument("--overhead-requests", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wanted = args.scenarios.split(",")
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        parser.error(f"--scenarios: of {', '.join(SCENARIOS)} (unknown: {', '.join(unknown)})")
    if args.requests < 1 or args.timing_rate <= 0 or args.overhead_requests < 1:
        parser.error("--requests, --timing-rate and --overhead-requests must be positive")
    timing = timing_scenarios(args, wanted) if set(wanted) - {"flow"} else {}
    if "flow" not in wanted:
        if args.json:
            print(json.dumps({"timing": timing}, indent=2))
        else:
            print_timing(args, timing)
        return 0

    local = StandinBackend("local", record=False).start()
    cloud = StandinBackend("cloud", record=False).start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    program = str(ROUTER) if ROUTER.exists() else "agentkit-router"
    router = subprocess.Popen([program, "--listen", f"127.0.0.1:{port}", "--local-url", local.url,
                               "--local-model", "local-8b", "--cloud-url", cloud.url, "--cloud-model", "cloud-large",
                               "--log-level", "error"], start_new_session=True)
    results = []
    try:
        wait_health(base, lambda h: h["status"] == "ok")
        for failing in args.failing.split(","):
            backend = cloud if failing == "cloud" else local
            for mode in args.modes.split(","):
                for _ in range(args.rounds):
                    results.append(asyncio.run(round_(base, backend, failing, mode, args.rate, args.before,
                                                      args.after)))
                    backend.set_mode("ok")
                    backend.start()
                    wait_health(base, lambda h: h["backends"][failing]["state"] == "closed")
    finally:
        if router.poll() is None:
            os.killpg(router.pid, signal.SIGTERM)
            try:
                router.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(router.pid, signal.SIGKILL)
                router.wait(timeout=10)
        local.close()
        cloud.close()

    summary = []
    for failing in args.failing.split(","):
        for mode in args.modes.split(","):
            rows = [r for r in results if r["failing"] == failing and r["mode"] == mode]
            flows = [r["time_to_flow_ms"] for r in rows if r["time_to_flow_ms"] is not None]
            summary.append({"failing": failing, "mode": mode, "rounds": len(rows),
                            "requests": sum(r["requests"] for r in rows), "lost": sum(r["lost"] for r in rows),
                            "time_to_flow_ms_median": statistics.median(flows) if flows else None,
                            "time_to_flow_ms_max": max(flows) if len(flows) == len(rows) else None,
                            "failed_over_in_flight": sum(r["failed_over_in_flight"] for r in rows)})
    met = all(s["lost"] == 0 and s["time_to_flow_ms_max"] is not None and s["time_to_flow_ms_max"] < 1000
              for s in summary)
    if args.json:
        print(json.dumps({"rounds": results, "summary": summary, "target_met": met, "timing": timing}, indent=2))
        return 0
    print(f"failover at {args.rate:g} requests/s, {args.rounds} rounds each ({args.before:g} s before, "
          f"{args.after:g} s after the failure)")
    print(f"{'failing':<8}{'mode':<11}{'requests':>9}{'lost':>6}{'flow p50 ms':>13}{'flow max ms':>13}{'moved':>7}")
    for s in summary:
        p50 = "-" if s["time_to_flow_ms_median"] is None else f"{s['time_to_flow_ms_median']:.1f}"
        worst = "-" if s["time_to_flow_ms_max"] is None else f"{s['time_to_flow_ms_max']:.1f}"
        print(f"{s['failing']:<8}{s['mode']:<11}{s['requests']:>9}{s['lost']:>6}{p50:>13}{worst:>13}"
              f"{s['failed_over_in_flight']:>7}")
    print(f"target: under 1 s to flow, none lost: {'MET' if met else 'NOT MET'}")
    print_timing(args, timing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
