"""Benchmark: what a gateway adds -- direct, nginx, agentkit-router and the LiteLLM proxy, side by side in one run.

One stand-in OpenAI-compatible backend (tests/router/standin.py as a process,
uvloop, instant answers) serves every path of the run:

1. direct: wrk talks to the backend itself (the reference);
2. nginx: Debian's nginx as a plain reverse proxy (the floor) -- generated
   config in a temp dir, 1 worker, an upstream with keepalive, HTTP/1.1 to the
   upstream, proxy_buffering off, no access log;
3. router: agentkit-router, both its local and its cloud URL pointing at the
   one stand-in (the requests say task_type simple_chat, so they go "local");
4. litellm: the LiteLLM proxy (the peer users would pick instead), pinned to
   LITELLM_VERSION, installed on first use into its own venv .venv-litellm at
   the repo root, one model "auto" routed to the stand-in as an
   OpenAI-compatible provider (openai/local-8b with api_base), uvicorn with
   --num_workers 1, a master key (it refuses to start without one), no
   database. It runs offline: every remote fetch it makes at start-up (model
   cost map, blog posts, Anthropic beta headers, auto-router presets, policy
   templates) is switched to its bundled copy with LITELLM_LOCAL_*=true,
   LITELLM_MODE=PRODUCTION stops it reading a .env, and HTTP(S)_PROXY points at
   a closed loopback port (NO_PROXY=127.0.0.1,localhost), so anything it would
   still try to fetch from outside fails at once instead of leaving the machine.

Every path gets the same request (a chat completion, model "auto", metadata
task_type simple_chat, an Authorization header), sent by wrk from a Lua script:
(a) 1 connection: latency p50 and p99 (wrk --latency; wrk's own histogram,
read in the script's done()), (b) 8 connections: requests/s; both without and
(for direct, router and litellm) with `stream: true`, where a request's time is
until the last byte of the event stream. Each measurement is --rounds rounds of
--seconds seconds (default 2 x 15 s, as in DESIGN.md), after a warm-up of up to
2 s that is not counted; p50/p99/req/s are the medians over the rounds. "added
p50" is the path's p50 minus direct's (streaming minus streaming).

Pinning (2 cores): the gateway's process group (nginx master and worker, the
router, litellm and anything it forks) on CPU 0; the backend, wrk and this
script on CPU 1. Gateway CPU is utime+stime of every process in the gateway's
group, from /proc/PID/stat, over each 8-connection round, as % of one core
(and CPU time per request). The backend's CPU is in the JSON too. The paths
run one after the other, each gateway started before its rounds and stopped
after them, so an idle gateway never shares CPU 0 with the one measured.

The pinning has a price of its own: a gateway path crosses between the cores
four times per request (wrk -> gateway -> backend -> gateway -> wrk), direct
never. So with direct the run also measures (1 connection only) a second
stand-in on CPU 0, which crosses twice: its added p50, doubled, is the part of
every gateway's added p50 that is the machine's cross-core wake-up, not the
gateway (on a VM it can be most of nginx's figure).

Correctness: before and after its rounds every path answers one request of each
kind, checked (200, the stand-in's reply text, a well-formed event stream
ending in [DONE]); wrk's non-2xx/3xx count and socket errors (connect, read,
write, timeout) must be 0 in every run, warm-ups included.

Targets (reported MET / NOT MET, never asserted), non-streaming: the router adds
under 1 ms at p50; under a third of what LiteLLM adds; at least twice LiteLLM's
req/s at 8 connections. The ratio router/nginx added latency is printed too.
Exit status: 0 when every path ran and answered right, 1 on a functional failure
(a path that fails to start, a non-2xx or wrong answer, a socket error), 2 when
a tool the chosen paths need is missing (wrk: apt-get install wrk; nginx:
apt-get install nginx-light) -- the benchmark installs LiteLLM, nothing else.

    .venv/bin/python bench/gateway.py [--paths direct,nginx,router,litellm] [--seconds 15] [--rounds 2] [--json]

Every process it starts (backend, nginx, router, litellm and its children, wrk)
runs in its own process group, which is stopped (SIGTERM, then SIGKILL) on
exit, failure, ^C and SIGTERM; the temp dir (configs, logs) goes too, after the
logs of a failed path are printed. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import importlib.metadata
import json
import os
import platform
import random
import re
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "router" / "standin.py"
VENV_BIN = Path(sys.prefix) / "bin"
LITELLM_VENV = REPO / ".venv-litellm"
LITELLM_VERSION = "1.106.2"  # as in DESIGN.md; 1.107.0 was a compromised release (withdrawn)

PATHS = ("direct", "nginx", "router", "litellm")
CROSS_CORE = "direct-cross-core"  # a reference row: what crossing between the pinned cores costs
STREAMED = ("direct", "router", "litellm")  # nginx passes bytes through: its streaming figure adds nothing
AVOID_PORTS = ((7100, 8300), (17000, 18999))  # other tests' ports
GATEWAY_CPU, LOAD_CPU = 0, 1
MAX_ROUNDS = 20
FOREIGN_LOAD_PERCENT = 10  # other processes' CPU on the measured cores above which a row is flagged
MAX_SECONDS = 300
WARMUP_SECONDS = 2
WRK_TIMEOUT_S = 10  # wrk's per-request timeout; a timeout counts as an error
START_TIMEOUT = {"backend": 20.0, "nginx": 20.0, "router": 30.0, "litellm": 180.0}
INSTALL_TIMEOUT = 900.0
STOP_TIMEOUT = 10.0
CHECK_TIMEOUT = 30.0

MESSAGE = "how far away is the moon tonight"
EXPECTED_TEXT = "local: " + MESSAGE  # the stand-in answers "<name>: <last user message>"

TARGET_ROUTER_ADDED_MS = 1.0
TARGET_VS_LITELLM_LATENCY = 1 / 3
TARGET_VS_LITELLM_THROUGHPUT = 2.0

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


class Failure(Exception):
    """A functional failure of one path (or of the set-up): reported, exit status 1."""


class Missing(Exception):
    """A tool the chosen paths need is not installed: exit status 2."""


# --- processes ----------------------------------------------------------------------------

def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (process group, utime+stime clock ticks, all threads) of every live process."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                rest = handle.read().rsplit(b")", 1)[1].split()
            found[int(entry.name)] = (int(rest[2]), int(rest[11]) + int(rest[12]))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, (group, _) in _proc_stats().items() if group == pgid]


def group_cpu_ticks() -> dict[int, int]:
    """process group -> utime+stime (clock ticks) of its live processes, in one pass over /proc."""
    ticks: dict[int, int] = {}
    for group, used in _proc_stats().values():
        ticks[group] = ticks.get(group, 0) + used
    return ticks


def cpus_allowed(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


class Processes:
    """Every child in its own session (so its own process group), pinned, and stopped for sure.

    Children also get SIGTERM if this script dies without cleaning up (PR_SET_PDEATHSIG).
    """

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], *, cpu: int, log: Path | None = None,
              stdout=None, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
        parent = os.getpid()
        cpus = {cpu} if self.pin else None

        def in_child() -> None:  # no threads in this script: preexec_fn is safe here
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl
                os._exit(1)

        err = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=stdout if stdout is not None else err,
                                    stderr=err, env=env, cwd=cwd, start_new_session=True, preexec_fn=in_child)
        except OSError as exc:
            raise Failure(f"{name}: cannot start {shlex_join(argv)}: {exc}") from None
        finally:
            if log is not None:
                err.close()
        self.running.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM to the group, a bounded wait for all of it, then SIGKILL to whatever is left."""
        self.running = [(n, p) for n, p in self.running if p is not proc]
        pgid = proc.pid  # start_new_session: the group's id is the leader's pid
        if proc.poll() is None or _group_members(pgid):  # members may outlive the leader (a worker, a grandchild)
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline:
                if proc.poll() is not None and not _group_members(pgid):
                    break
                time.sleep(0.02)
            else:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.running)):
            self.stop(proc)


def shlex_join(argv: list[str]) -> str:
    return shlex.join(str(a) for a in argv)


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (so no outgoing connection takes it between
    now and the gateway's bind, which for LiteLLM is 10-20 s away) and outside the ranges other tests use."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            ephemeral = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    candidates = [p for p in range(20000, ephemeral) if not any(lo <= p <= hi for lo, hi in AVOID_PORTS)]
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    for _ in range(50):  # no room below the ephemeral range: let the kernel choose
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not any(low <= port <= high for low, high in AVOID_PORTS):
            return port
    raise Failure("no free port outside 7100-8300 and 17000-18999")


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"


# --- HTTP checks --------------------------------------------------------------------------

def http_request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 timeout: float = CHECK_TIMEOUT) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_until_up(name: str, proc: subprocess.Popen, port: int, path: str, ready, timeout: float,
                  log: Path) -> None:
    """Poll GET path until ready(status, body) holds; fails when the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    for _ in range(int(timeout / 0.05) + 1):
        if proc.poll() is not None:
            raise Failure(f"{name} exited with status {proc.returncode} before it was ready; its log:\n"
                          + log_tail(log))
        try:
            status, _, body = http_request(port, "GET", path, timeout=2)
            if ready(status, body):
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise Failure(f"{name} was not ready within {timeout:g} s (GET {path}: {last}); its log:\n" + log_tail(log))


def check_answer(port: int, path: str, body: bytes, headers: dict, stream: bool) -> None:
    """One request; raises Failure unless it is a 200 with the stand-in's reply (streamed: events ending in [DONE])."""
    try:
        status, resp_headers, data = http_request(port, "POST", path, body, headers)
    except (OSError, http.client.HTTPException) as exc:
        raise Failure(f"POST {path}: {type(exc).__name__}: {exc}") from None
    if status != 200:
        raise Failure(f"POST {path}: HTTP {status}: {data[:300]!r}")
    if not stream:
        try:
            text = json.loads(data)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise Failure(f"POST {path}: not a chat completion: {data[:300]!r}") from None
    else:
        if not resp_headers.get("content-type", "").startswith("text/event-stream"):
            raise Failure(f"POST {path} (stream): Content-Type {resp_headers.get('content-type')!r}")
        events = [line[len(b"data: "):] for line in data.split(b"\n") if line.startswith(b"data: ")]
        if not events or events[-1].strip() != b"[DONE]":
            raise Failure(f"POST {path} (stream): the event stream does not end with [DONE]: {data[-200:]!r}")
        try:
            text = "".join(choice.get("delta", {}).get("content") or ""
                           for event in events[:-1] for choice in json.loads(event)["choices"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Failure(f"POST {path} (stream): an event is not a chat completion chunk: {data[:300]!r}") from None
    if text != EXPECTED_TEXT:
        raise Failure(f"POST {path}{' (stream)' if stream else ''}: reply {text!r}, expected {EXPECTED_TEXT!r}")


# --- wrk ----------------------------------------------------------------------------------

WRK_SCRIPT = """\
-- generated by bench/gateway.py
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def request_body(stream: bool) -> bytes:
    body = {"model": "auto", "messages": [{"role": "user", "content": MESSAGE}],
            "metadata": {"task_type": "simple_chat"}}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class WrkRun:
    connections: int
    seconds: int
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: dict  # status (non-2xx/3xx), connect, read, write, timeout
    cpu_percent: float | None = None  # the gateway's, over this run
    cpu_us_per_request: float | None = None
    backend_cpu_percent: float | None = None
    foreign_cpu_percent: float | None = None  # CPU the measured cores spent on processes not ours
    steal_percent: float | None = None  # time the hypervisor took from the measured cores

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_json(self) -> dict:
        out = {"connections": self.connections, "seconds": self.seconds, "requests": self.requests,
               "duration_s": round(self.duration_s, 3), "rps": round(self.rps, 1),
               "p50_ms": round(self.p50_ms, 4), "p99_ms": round(self.p99_ms, 4), "errors": self.errors}
        if self.cpu_percent is not None:
            out["gateway_cpu_percent"] = round(self.cpu_percent, 1)
            out["gateway_cpu_us_per_request"] = round(self.cpu_us_per_request, 1) if self.cpu_us_per_request else None
        if self.backend_cpu_percent is not None:
            out["backend_cpu_percent"] = round(self.backend_cpu_percent, 1)
        if self.foreign_cpu_percent is not None:
            out["foreign_cpu_percent"] = round(self.foreign_cpu_percent, 1)
            out["steal_percent"] = round(self.steal_percent, 1)
        return out


# --- the bench ----------------------------------------------------------------------------

@dataclass
class Gateway:
    name: str
    port: int
    path: str  # the chat completions path on that port
    proc: subprocess.Popen | None  # None: direct (no gateway)
    log: Path | None
    version: str = ""


@dataclass
class Row:
    path: str
    stream: bool
    latency: list[WrkRun] = field(default_factory=list)
    throughput: list[WrkRun] = field(default_factory=list)
    warmup: WrkRun | None = None
    added_p50_ms: float | None = None

    @property
    def label(self) -> str:
        if self.path == CROSS_CORE:
            return f"direct, backend on CPU {GATEWAY_CPU}"
        return f"{self.path}, stream" if self.stream else self.path

    def median(self, runs: list[WrkRun], attr: str) -> float | None:
        values = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    @property
    def p50_ms(self):
        return self.median(self.latency, "p50_ms")

    @property
    def p99_ms(self):
        return self.median(self.latency, "p99_ms")

    @property
    def rps(self):
        return self.median(self.throughput, "rps")

    @property
    def cpu_percent(self):
        return self.median(self.throughput, "cpu_percent")

    @property
    def cpu_us_per_request(self):
        return self.median(self.throughput, "cpu_us_per_request")

    @property
    def errors(self) -> int:
        runs = self.latency + self.throughput + ([self.warmup] if self.warmup else [])
        return sum(r.error_count for r in runs)

    @property
    def foreign_max(self) -> float | None:
        values = [r.foreign_cpu_percent for r in self.latency + self.throughput if r.foreign_cpu_percent is not None]
        return max(values) if values else None

    def as_json(self) -> dict:
        def rnd(v, n):
            return None if v is None else round(v, n)
        return {"path": self.path, "stream": self.stream, "p50_ms": rnd(self.p50_ms, 4),
                "p99_ms": rnd(self.p99_ms, 4), "added_p50_ms": rnd(self.added_p50_ms, 4),
                "rps": rnd(self.rps, 1), "gateway_cpu_percent": rnd(self.cpu_percent, 1),
                "gateway_cpu_us_per_request": rnd(self.cpu_us_per_request, 1),
                "backend_cpu_percent": rnd(self.median(self.throughput, "backend_cpu_percent"), 1),
                "requests": sum(r.requests for r in self.latency + self.throughput), "errors": self.errors,
                "foreign_cpu_percent_max": rnd(self.foreign_max, 1),
                "latency_rounds": [r.as_json() for r in self.latency],
                "throughput_rounds": [r.as_json() for r in self.throughput]}


class Bench:
    def __init__(self, args, tmp: Path, procs: Processes, say) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.say = say
        self.key = "sk-bench-" + secrets.token_hex(16)  # LiteLLM's master key; everyone gets the header
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        self.backend_port = 0
        self.backend_pgid = 0
        self.versions: dict[str, str] = {"python": platform.python_version()}
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.pinning: dict[str, str] = {}
        self.start_s: dict[str, float] = {}  # gateway start to ready (LiteLLM: its install not included)
        self.scripts = {}
        for stream in (False, True):
            script = tmp / f"chat{'-stream' if stream else ''}.lua"
            script.write_text(WRK_SCRIPT.format(body=request_body(stream).decode(), key=self.key))
            self.scripts[stream] = script

    # --- processes under test

    def _start_standin(self, name: str, cpu: int) -> tuple[subprocess.Popen, int]:
        log = self.tmp / f"{name}.log"
        proc = self.procs.start(name, [sys.executable, str(STANDIN), "--name", "local", "--port", "0"],
                                cpu=cpu, log=log, stdout=subprocess.PIPE)
        try:
            line = _read_line(proc, START_TIMEOUT["backend"])
            match = re.match(r"listening http://127\.0\.0\.1:(\d+)/v1", line or "")
            if not match:
                raise Failure(f"the stand-in backend did not say it was listening within "
                              f"{START_TIMEOUT['backend']:g} s (got {line!r}); its log:\n{log_tail(log)}")
            port = int(match.group(1))
            wait_until_up(name, proc, port, "/v1/models", lambda s, b: s == 200, START_TIMEOUT["backend"], log)
        except BaseException:
            self.procs.stop(proc)
            raise
        return proc, port

    def start_backend(self) -> None:
        proc, self.backend_port = self._start_standin("backend", LOAD_CPU)
        self.backend_pgid = proc.pid
        self.pinning["backend"] = cpus_allowed(proc.pid)

    def start(self, name: str) -> Gateway:
        if name == "direct":
            return Gateway("direct", self.backend_port, "/v1/chat/completions", None, None)
        return getattr(self, f"_start_{name}")()

    def _wait_ready(self, name: str, proc: subprocess.Popen, port: int, path: str, ready, log: Path) -> None:
        """wait_until_up, and a gateway that never got ready is stopped at once, not left on the gateway core."""
        try:
            wait_until_up(name, proc, port, path, ready, START_TIMEOUT[name], log)
        except BaseException:
            self.procs.stop(proc)
            raise

    def _start_nginx(self) -> Gateway:
        nginx = find_nginx()
        prefix = self.tmp / "nginx"
        (prefix / "logs").mkdir(parents=True)
        (prefix / "temp").mkdir()
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, backend=self.backend_port))
        log = self.tmp / "nginx.log"  # its stderr: start-up and error log alike (-e stderr, error_log stderr)
        proc = self.procs.start("nginx", [nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr",
                                          "-g", "daemon off;"], cpu=GATEWAY_CPU, log=log)
        self._wait_ready("nginx", proc, port, "/v1/models", lambda s, b: s == 200, log)
        return Gateway("nginx", port, "/v1/chat/completions", proc, log, self.versions.get("nginx", ""))

    def _start_router(self) -> Gateway:
        program = VENV_BIN / "agentkit-router"
        if not program.exists():
            program = shutil.which("agentkit-router")
            if program is None:
                raise Failure("agentkit-router is not installed in this venv: pip install -e .")
        port = free_port()
        backend = f"http://127.0.0.1:{self.backend_port}/v1"
        log = self.tmp / "router.log"
        proc = self.procs.start("router", [str(program), "--listen", f"127.0.0.1:{port}",
                                           "--local-url", backend, "--local-model", "local-8b",
                                           "--cloud-url", backend, "--cloud-model", "cloud-large"],
                                cpu=GATEWAY_CPU, log=log)

        def healthy(status, body):
            try:
                return status == 200 and json.loads(body).get("status") == "ok"
            except ValueError:
                return False
        self._wait_ready("router", proc, port, "/health", healthy, log)
        return Gateway("router", port, "/v1/chat/completions", proc, log, self.versions.get("agentkit", ""))

    def _start_litellm(self) -> Gateway:
        version = ensure_litellm(self.say)
        self.versions["litellm"] = version
        home = self.tmp / "litellm"
        home.mkdir()
        config = home / "config.yaml"
        config.write_text(LITELLM_CONFIG.format(backend=self.backend_port))
        port = free_port()
        log = self.tmp / "litellm.log"
        env = {
            "PATH": f"{LITELLM_VENV / 'bin'}:/usr/bin:/bin",
            "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
            "LITELLM_MASTER_KEY": self.key,
            "LITELLM_MODE": "PRODUCTION",  # no .env from the working directory
            "LITELLM_LOCAL_MODEL_COST_MAP": "true",
            "LITELLM_LOCAL_BLOG_POSTS": "true",
            "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "true",
            "LITELLM_LOCAL_AUTOROUTER_PRESETS": "true",
            "LITELLM_LOCAL_POLICY_TEMPLATES": "true",
            # Anything still fetched from outside goes to a closed loopback port and fails at once.
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        }
        proc = self.procs.start("litellm", [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config),
                                            "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                                cpu=GATEWAY_CPU, log=log, env=env, cwd=home)
        self._wait_ready("litellm", proc, port, "/health/liveliness", lambda s, b: s == 200, log)
        return Gateway("litellm", port, "/v1/chat/completions", proc, log, version)

    # --- measuring

    def wrk(self, gateway: Gateway, stream: bool, connections: int, seconds: int) -> WrkRun:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{WRK_TIMEOUT_S}s", "--latency",
                "-s", str(self.scripts[stream]), f"http://127.0.0.1:{gateway.port}{gateway.path}"]
        pgid = gateway.proc.pid if gateway.proc is not None else None
        groups0, machine0 = group_cpu_ticks(), self._machine_ticks()
        ours0 = self._our_ticks(groups0)
        started = time.monotonic()
        proc = self.procs.start("wrk", argv, cpu=LOAD_CPU, stdout=subprocess.PIPE, log=self.tmp / "wrk.err")
        try:
            out, _ = proc.communicate(timeout=seconds + WRK_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            raise Failure(f"{gateway.name}: wrk did not finish within {seconds + WRK_TIMEOUT_S + 30} s") from None
        finally:
            self.procs.stop(proc)
        elapsed = time.monotonic() - started
        groups1, machine1 = group_cpu_ticks(), self._machine_ticks()
        ours1 = self._our_ticks(groups1)
        text = out.decode(errors="replace")
        match = re.search(r"^WRKJSON (\{.*\})$", text, re.M)
        if proc.returncode != 0 or not match:
            raise Failure(f"{gateway.name}: wrk failed (exit {proc.returncode}): {shlex_join(argv)}\n{text[-1500:]}"
                          + log_tail(self.tmp / "wrk.err", 5))
        data = json.loads(match.group(1))
        errors = {k: data[k] for k in ("status", "connect", "read", "write", "timeout")}
        run = WrkRun(connections, seconds, data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000,
                     data["p99_us"] / 1000, errors)
        hz = os.sysconf("SC_CLK_TCK")
        if pgid:
            cpu_s = (groups1.get(pgid, 0) - groups0.get(pgid, 0)) / hz
            run.cpu_percent = 100 * cpu_s / elapsed
            run.cpu_us_per_request = 1e6 * cpu_s / run.requests if run.requests else None
        backend = groups1.get(self.backend_pgid, 0) - groups0.get(self.backend_pgid, 0)
        run.backend_cpu_percent = 100 * backend / hz / elapsed
        busy, steal = (b - a for a, b in zip(machine0, machine1))
        run.foreign_cpu_percent = max(0.0, 100 * (busy - (ours1 - ours0)) / hz / elapsed)
        run.steal_percent = 100 * steal / hz / elapsed
        if run.error_count:
            self.failures.append(f"{gateway.name}{', stream' if stream else ''}: {connections} connection(s): "
                                 f"errors {errors} in {run.requests} requests")
        return run

    def _machine_ticks(self) -> tuple[int, int]:
        """(user+nice+system, steal) ticks of the measured CPUs (all when nothing is pinned), from /proc/stat."""
        wanted = {f"cpu{GATEWAY_CPU}", f"cpu{LOAD_CPU}"} if self.procs.pin else None
        busy = steal = 0
        with open("/proc/stat") as handle:
            for line in handle:
                name, _, rest = line.partition(" ")
                if not (name.startswith("cpu") and name[3:].isdigit()) or (wanted and name not in wanted):
                    continue
                values = [int(v) for v in rest.split()]
                busy += values[0] + values[1] + values[2]
                steal += values[7] if len(values) > 7 else 0
        return busy, steal

    def _our_ticks(self, groups: dict[int, int]) -> float:
        """CPU ticks of everything this bench runs: its children's groups, reaped children (wrk), itself."""
        hz = os.sysconf("SC_CLK_TCK")
        times = os.times()
        return (sum(groups.get(proc.pid, 0) for _, proc in self.procs.running)
                + hz * (times.user + times.system + times.children_user + times.children_system))

    def check(self, gateway: Gateway, streams: list[bool]) -> None:
        for stream in streams:
            check_answer(gateway.port, gateway.path, request_body(stream), self.headers, stream)

    def run_path(self, name: str) -> None:
        self.say(f"{name}: starting")
        began = time.monotonic()
        gateway = self.start(name)
        if gateway.proc is not None:
            self.start_s[name] = round(time.monotonic() - began, 2)
            members = _group_members(gateway.proc.pid)
            self.pinning[name] = ", ".join(f"{pid}: {cpus_allowed(pid)}" for pid in members)
        streams = [False, True] if name in STREAMED else [False]
        try:
            self.check(gateway, streams)
            rows = {stream: Row(name, stream) for stream in streams}
            for stream in streams:
                row = rows[stream]
                warm = min(WARMUP_SECONDS, self.args.seconds)
                row.warmup = self.wrk(gateway, stream, 8, warm)
                for number in range(self.args.rounds):
                    self.say(f"{row.label}: round {number + 1}/{self.args.rounds}")
                    row.latency.append(self.wrk(gateway, stream, 1, self.args.seconds))
                    row.throughput.append(self.wrk(gateway, stream, 8, self.args.seconds))
                self.rows.append(row)
            self.check(gateway, streams)
            if name == "direct" and self.procs.pin:
                self.cross_core()
        finally:
            if gateway.proc is not None:
                self.procs.stop(gateway.proc)
                if gateway.proc.returncode not in (0, -signal.SIGTERM, None):
                    self.say(f"{name}: exited with status {gateway.proc.returncode} when stopped")

    def cross_core(self) -> None:
        """The pinning's own price: direct, with a second stand-in on the gateway's core (latency only).

        Every gateway path crosses between the two cores four times per request (wrk -> gateway -> backend ->
        gateway -> wrk), direct with the backend beside wrk never; this row crosses twice."""
        proc, port = self._start_standin("backend-cross-core", GATEWAY_CPU)
        try:
            gateway = Gateway(CROSS_CORE, port, "/v1/chat/completions", None, None)
            self.check(gateway, [False])
            row = Row(CROSS_CORE, False)
            row.warmup = self.wrk(gateway, False, 1, min(WARMUP_SECONDS, self.args.seconds))
            for number in range(self.args.rounds):
                self.say(f"{row.label}: round {number + 1}/{self.args.rounds}")
                row.latency.append(self.wrk(gateway, False, 1, self.args.seconds))
            self.rows.append(row)
        finally:
            self.procs.stop(proc)

    def finish(self) -> None:
        """added p50 against direct, streaming against streaming."""
        direct = {r.stream: r for r in self.rows if r.path == "direct"}
        for row in self.rows:
            base = direct.get(row.stream)
            if base is not None and row.p50_ms is not None and base.p50_ms is not None:
                row.added_p50_ms = 0.0 if row is base else row.p50_ms - base.p50_ms

    def row(self, path: str, stream: bool = False) -> Row | None:
        return next((r for r in self.rows if r.path == path and r.stream == stream), None)

    def targets(self) -> list[dict]:
        router, litellm = self.row("router"), self.row("litellm")
        out = []

        def target(name, value, limit, met, text):
            out.append({"target": name, "value": value, "limit": limit, "met": met, "text": text})

        r_added = router.added_p50_ms if router else None
        l_added = litellm.added_p50_ms if litellm else None
        if r_added is None:
            target("router_added_p50_under_1ms", None, TARGET_ROUTER_ADDED_MS, None,
                   "router added p50 under 1 ms: not measured (needs paths direct and router)")
        else:
            met = r_added < TARGET_ROUTER_ADDED_MS
            target("router_added_p50_under_1ms", r_added, TARGET_ROUTER_ADDED_MS, met,
                   f"router added p50 under {TARGET_ROUTER_ADDED_MS:g} ms: {r_added:+.3f} ms: "
                   f"{'MET' if met else 'NOT MET'}")
        if r_added is None or l_added is None:
            target("router_added_under_third_of_litellm", None, None, None,
                   "router added p50 under a third of LiteLLM's: not measured (needs direct, router, litellm)")
        else:
            limit = l_added * TARGET_VS_LITELLM_LATENCY
            met = r_added < limit
            target("router_added_under_third_of_litellm", r_added, limit, met,
                   f"router added p50 under a third of LiteLLM's ({l_added:+.2f} ms, so under {limit:.2f} ms): "
                   f"{r_added:+.3f} ms ({_ratio(l_added, r_added)} less): {'MET' if met else 'NOT MET'}")
        if not (router and litellm and router.rps and litellm.rps):
            target("router_throughput_twice_litellm", None, None, None,
                   "router req/s at least twice LiteLLM's: not measured (needs router and litellm)")
        else:
            limit = litellm.rps * TARGET_VS_LITELLM_THROUGHPUT
            met = router.rps >= limit
            target("router_throughput_twice_litellm", router.rps, limit, met,
                   f"router req/s at 8 connections at least twice LiteLLM's ({litellm.rps:,.0f}, so "
                   f"{limit:,.0f}): {router.rps:,.0f} ({router.rps / litellm.rps:.1f}x): "
                   f"{'MET' if met else 'NOT MET'}")
        return out

    def router_vs_nginx(self) -> float | None:
        router, nginx = self.row("router"), self.row("nginx")
        if router and nginx and router.added_p50_ms is not None and nginx.added_p50_ms is not None:
            if nginx.added_p50_ms > 0:
                return router.added_p50_ms / nginx.added_p50_ms
        return None


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """The first line of a child's stdout, waiting at most `timeout` s."""
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                return buffer.decode(errors="replace") or None
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode(errors="replace")


NGINX_CONF = """\
# generated by bench/gateway.py: nginx as a plain reverse proxy, the floor
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""

LITELLM_CONFIG = """\
# generated by bench/gateway.py: one model, the stand-in as an OpenAI-compatible provider
model_list:
  - model_name: auto
    litellm_params:
      model: openai/local-8b
      api_base: http://127.0.0.1:{backend}/v1
      api_key: sk-standin
litellm_settings:
  drop_params: true
"""


# --- tools ------------------------------------------------------------------------------------

def find_nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)),
                                          None)
    if found is None:
        raise Missing("nginx is not installed: apt-get install nginx-light (or nginx)")
    return found


def tool_versions(paths: list[str]) -> dict[str, str]:
    versions = {}
    if shutil.which("wrk") is None:
        raise Missing("wrk is not installed: apt-get install wrk")
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    versions["wrk"] = (result.stdout + result.stderr).split("\n", 1)[0].split(" Copyright")[0].strip()
    versions["wrk"] = versions["wrk"].removeprefix("wrk ").split(" [")[0]
    if "nginx" in paths:
        result = subprocess.run([find_nginx(), "-v"], capture_output=True, text=True, timeout=10)
        versions["nginx"] = (result.stderr or result.stdout).strip().rsplit("/", 1)[-1]
    if "router" in paths:
        try:
            versions["agentkit"] = importlib.metadata.version("agentkit")
        except importlib.metadata.PackageNotFoundError:
            versions["agentkit"] = "?"
        for name in ("aiohttp", "uvloop"):
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                pass
    return versions


def installed_litellm() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    result = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                            capture_output=True, text=True, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_litellm(say) -> str:
    """LITELLM_VERSION in .venv-litellm, installed on first use (pip, from the package index)."""
    version = installed_litellm()
    if version == LITELLM_VERSION and (LITELLM_VENV / "bin" / "litellm").exists():
        return version
    say(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (first use; a minute or two)")
    steps = []
    if not (LITELLM_VENV / "bin" / "python").exists():
        steps.append(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                      "-m", "venv", str(LITELLM_VENV)])
    steps.append([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"])
    for argv in steps:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failure(f"litellm: {shlex_join(argv)} did not finish within {INSTALL_TIMEOUT:g} s") from None
        if result.returncode != 0:
            raise Failure(f"litellm: {shlex_join(argv)} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    version = installed_litellm()
    if version != LITELLM_VERSION:
        raise Failure(f"litellm: installed version is {version}, expected {LITELLM_VERSION}")
    return version


def cpu_busy(seconds: float = 1.0) -> dict[str, float]:
    """How busy each CPU is before the bench starts anything (%, over `seconds`)."""
    def sample():
        out = {}
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *values = line.split()
                    values = [int(v) for v in values]
                    out[name] = (sum(values), values[3] + values[4])  # total, idle + iowait
        return out
    first = sample()
    time.sleep(seconds)
    second = sample()
    busy = {}
    for name, (total, idle) in second.items():
        t0, i0 = first.get(name, (0, 0))
        if total > t0:
            busy[name] = round(100 * (1 - (idle - i0) / (total - t0)), 1)
    return busy


# --- report -------------------------------------------------------------------------------

def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def print_report(bench: Bench, machine: dict, out) -> None:
    args = bench.args
    print(f"\nwhat a gateway adds: wrk on loopback, one stand-in backend; gateway on CPU {GATEWAY_CPU}, backend and "
          f"wrk on CPU {LOAD_CPU}; {args.rounds} x {args.seconds} s per measurement (medians)", file=out)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in bench.versions.items()), file=out)
    header = ("path", "1 conn p50 / p99 (ms)", "added p50", "req/s @ 8 conn", "gateway CPU @ 8 conn")
    lines = []
    for row in bench.rows:
        added = "-" if row.added_p50_ms is None or row.path == "direct" else f"{row.added_p50_ms:+.3f} ms" \
            if abs(row.added_p50_ms) < 1 else f"{row.added_p50_ms:+.2f} ms"
        cpu = "-" if row.cpu_percent is None else (
            f"{row.cpu_percent:.0f} % ({row.cpu_us_per_request:,.0f} us/req)" if row.cpu_us_per_request else
            f"{row.cpu_percent:.0f} %")
        rps = "-" if row.rps is None else f"{row.rps:,.0f}"
        lines.append((row.label, f"{_ms(row.p50_ms)} / {_ms(row.p99_ms)}", added, rps, cpu))
    widths = [max(len(str(x[i])) for x in [header] + lines) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for line in lines:
        print(" | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                         enumerate(zip(line, widths))), file=out)
    cross = bench.row(CROSS_CORE)
    if cross is not None and cross.added_p50_ms is not None:
        print(f"\n{cross.label}: crossing between the pinned cores twice per request adds "
              f"{cross.added_p50_ms:+.3f} ms at p50.\nEvery gateway path crosses four times (wrk -> gateway -> "
              f"backend -> gateway -> wrk), so about {2 * cross.added_p50_ms:+.3f} ms of each gateway's added p50 "
              "is the pinning on this machine, not the gateway.", file=out)
    if bench.start_s:
        print("start-up to ready: " + ", ".join(f"{k} {v:g} s" for k, v in bench.start_s.items()), file=out)
    print("\ntargets (non-streaming):", file=out)
    for target in bench.targets():
        print("  " + target["text"], file=out)
    ratio = bench.router_vs_nginx()
    router, nginx = bench.row("router"), bench.row("nginx")
    if ratio is not None:
        print(f"  router/nginx added p50: {ratio:.1f}x ({router.added_p50_ms:+.3f} ms vs "
              f"{nginx.added_p50_ms:+.3f} ms)", file=out)
    elif router and nginx and router.added_p50_ms is not None and nginx.added_p50_ms is not None:
        print(f"  router/nginx added p50: n/a (nginx adds {nginx.added_p50_ms:+.3f} ms, within noise)", file=out)
    busy = machine.get("busy_before_percent", {})
    load = machine.get("loadavg_start"), machine.get("loadavg_end")
    print(f"\nmachine: {machine['cpus']} CPUs; busy before start: "
          + ", ".join(f"{k} {v:.0f} %" for k, v in busy.items())
          + f"; load average at start {load[0]}, at end {load[1]}", file=out)
    if machine.get("loaded"):
        print("  note: the machine was busy before the run: figures may be low", file=out)
    foreign = [(row.label, row.foreign_max) for row in bench.rows if row.foreign_max is not None]
    if foreign:
        worst = max(f for _, f in foreign)
        print(f"other processes on the measured cores during the runs: at most {worst:.0f} % of a core"
              + (" (figures may be disturbed: " + ", ".join(f"{label} {f:.0f} %" for label, f in foreign
                                                            if f > FOREIGN_LOAD_PERCENT) + ")"
                 if worst > FOREIGN_LOAD_PERCENT else ""), file=out)
    if bench.failures:
        print(f"\nFAILED ({len(bench.failures)}):", file=out)
        for failure in bench.failures:
            print("  " + failure.replace("\n", "\n  "), file=out)


# --- main -----------------------------------------------------------------------------------

def _interrupted(signum, frame):
    raise KeyboardInterrupt


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of: {', '.join(PATHS)}")
    parser.add_argument("--seconds", type=int, default=15, help=f"length of one wrk run (1-{MAX_SECONDS})")
    parser.add_argument("--rounds", type=int, default=2, help=f"runs per measurement (1-{MAX_ROUNDS})")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout; the report on stderr")
    args = parser.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in args.paths if p not in PATHS]
    if not args.paths or unknown:
        parser.error(f"--paths: of {', '.join(PATHS)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    args.paths = [p for p in PATHS if p in args.paths]  # direct first: the others are measured against it
    if not 1 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds: 1 to {MAX_SECONDS}")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds: 1 to {MAX_ROUNDS}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (
        lambda *a: print(*a, flush=True))
    try:
        versions = tool_versions(args.paths)
    except Missing as exc:
        print(f"bench/gateway.py: {exc}", file=sys.stderr)
        return 2
    allowed = os.sched_getaffinity(0)
    pin = {GATEWAY_CPU, LOAD_CPU} <= allowed
    if not pin:
        say(f"warning: CPUs {GATEWAY_CPU} and {LOAD_CPU} are not both available (allowed: {sorted(allowed)}): "
            "nothing is pinned")
    machine = {"cpus": os.cpu_count(), "allowed_cpus": sorted(allowed), "kernel": platform.release(),
               "loadavg_start": open("/proc/loadavg").read().split()[0], "busy_before_percent": cpu_busy()}
    machine["loaded"] = any(v > 15 for k, v in machine["busy_before_percent"].items()
                            if k in (f"cpu{GATEWAY_CPU}", f"cpu{LOAD_CPU}"))
    if machine["loaded"]:
        say(f"warning: the machine is busy before the run: {machine['busy_before_percent']}")
    previous = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    status = 0
    procs = Processes(pin)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="agentkit-bench-gateway-") as tmp:
            bench = Bench(args, Path(tmp), procs, say)
            bench.versions.update(versions)
            try:
                if pin:
                    os.sched_setaffinity(0, {LOAD_CPU})  # this script stays off the gateway's core
                bench.start_backend()
                for name in args.paths:
                    try:
                        bench.run_path(name)
                    except Failure as exc:
                        bench.failures.append(f"{name}: {exc}")
                        say(f"{name}: FAILED: {exc}")
            except Failure as exc:
                bench.failures.append(str(exc))
                say(f"FAILED: {exc}")
            except KeyboardInterrupt:
                say("interrupted: every process stopped, no report")
                return 130
            finally:
                ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    procs.stop_all()
                finally:
                    for sig, handler in ignored.items():
                        signal.signal(sig, handler)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pin:
            os.sched_setaffinity(0, allowed)
    bench.finish()
    machine["loadavg_end"] = open("/proc/loadavg").read().split()[0]
    status = 1 if bench.failures else 0
    elapsed = time.monotonic() - started
    if args.json:
        print_report(bench, machine, sys.stderr)
        print(json.dumps({
            "paths": args.paths, "seconds": args.seconds, "rounds": args.rounds, "elapsed_s": round(elapsed, 1),
            "versions": bench.versions, "machine": machine,
            "pinning": {"gateway_cpu": GATEWAY_CPU if pin else None, "load_cpu": LOAD_CPU if pin else None,
                        "cpus_allowed": bench.pinning},
            "backend": "tests/router/standin.py (one process, uvloop); the router's local and cloud both point at it",
            "results": [r.as_json() for r in bench.rows], "targets": bench.targets(),
            "router_vs_nginx_added_p50": bench.router_vs_nginx(), "start_s": bench.start_s,
            "failures": bench.failures,
            "ok": not bench.failures}, indent=1))
    else:
        print_report(bench, machine, sys.stdout)
        print(f"\n{elapsed:.0f} s; {len(bench.failures)} failure(s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
