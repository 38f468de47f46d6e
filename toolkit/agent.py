"""agentkit-agent: the reference agent every agent of the reference fleet runs.

It speaks the original fleet's protocol (ZeroMQ REP with JSON on the agent port,
HTTP health on the health port), takes its name, ports, activation mode and
dependencies from the AGENTKIT_* variables the rendered unit sets, and talks to
systemd through sd_notify: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

Start-up time is the point of socket activation, so this module imports only
what the interpreter has mostly loaded already; zmq (~20 ms) is imported once
the configuration is known to be good, hashlib and json when first needed, and
the health port is a few lines over a raw socket (http.server costs ~30 ms).
"""

import logging
import os
import signal
import socket
import sys
import time

from . import __version__, env as contract, logs
from .agent_parts import CudaMemory, Health, burn_cpu, hold_memory
from .sdnotify import Notifier, listen_fds

STARTED = time.monotonic()
MiB = 1024 * 1024
PAGE = 4096
DEFAULT_CHAIN_TIMEOUT = 30.0
# On SIGTERM the agent stops accepting, finishes the request it is answering, then answers what
# its connected clients send until none has sent anything for DRAIN_QUIET seconds (a request
# accepted just before the signal is still on its way in). All within STOP_GRACE seconds of the
# signal (well under systemd's TimeoutStopSec=, 90 s): work still running then is cut short and
# answered with an error, so a client always gets an answer and a stop is bounded.
DRAIN_QUIET = 0.2
FLUSH = 0.1
STOP_GRACE = 5.0
ACTIVATIONS = ("none", "native", "proxy")


class ConfigError(Exception):
    """The environment systemd gave us is unusable: one line, exit status 2."""


class BadRequest(Exception):
    """A request we answer with ok: false."""


class StartError(Exception):
    """A port we cannot listen on, and the like: exit status 1, so systemd restarts us."""


class CutShort(Exception):
    """A request still running STOP_GRACE seconds after SIGTERM: answered with ok: false."""


class Stop(BaseException):
    """SIGTERM/SIGINT: unwinds whatever runs (start-up work, a request) to the exit path.

    Raised only where Signals.check() is called, never from inside a signal handler,
    so it cannot land in the middle of the clean-up. A BaseException, so no
    `except Exception` on the way swallows it.
    """


# --- configuration ---------------------------------------------------------------

def _port(env, key, required=True):
    value = env.get(key, "")
    if not value:
        if required:
            raise ConfigError(f"{key} is not set")
        return None
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}={value!r}: expected a TCP port from 1 to 65535")
    return port


def _address(text, what):
    """'host:port' -> (host, port); an IPv6 host may come bracketed or bare."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected host:port, got {text!r}")
    return host, int(port)


def tcp_endpoint(host, port):
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class Config:
    __slots__ = ("name", "host", "port", "health_port", "activation", "bind", "idle_stop", "depends")

    def __init__(self, env):
        self.name = env.get(contract.AGENT, "")
        if not self.name:
            raise ConfigError(f"{contract.AGENT} is not set (the agent's name)")
        self.host = env.get(contract.HOST) or socket.gethostname()
        self.activation = env.get(contract.ACTIVATION) or "none"
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{contract.ACTIVATION}={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        self.port = _port(env, contract.PORT)
        self.health_port = _port(env, contract.HEALTH_PORT, required=False)
        self.bind = None
        if self.activation == "proxy":
            if not env.get(contract.BIND):
                raise ConfigError(f"{contract.BIND} is not set (proxy mode: the private host:port to listen on)")
            self.bind = _address(env[contract.BIND], contract.BIND)
        self.idle_stop = None
        if self.activation == "native" and env.get(contract.IDLE_STOP):
            raw = env[contract.IDLE_STOP]
            try:
                self.idle_stop = float(raw)
            except ValueError:
                self.idle_stop = -1.0
            if not 0 < self.idle_stop < float("inf"):
                raise ConfigError(f"{contract.IDLE_STOP}={raw!r}: expected seconds above zero")
        self.depends = []
        for item in env.get(contract.DEPENDS, "").split(","):
            if not item.strip():
                continue
            name, sep, address = item.strip().partition("=")
            if not sep or not name:
                raise ConfigError(f"{contract.DEPENDS}: expected Name=host:port, got {item!r}")
            self.depends.append((name, *_address(address, f"{contract.DEPENDS} ({name})")))


def parse_args(argv):
    if not argv:  # how most agents run: skip argparse's import
        return _no_options()
    import argparse
    parser = argparse.ArgumentParser(
        prog="agentkit-agent",
        description="agentkit's reference agent: configured by the AGENTKIT_* variables of its unit")
    parser.add_argument("--version", action="version", version=f"agentkit-agent {__version__}")
    parser.add_argument("--start-seconds", type=_non_negative, default=0.0, metavar="S",
                        help="spend S seconds of CPU work before READY (stands in for loading a model)")
    parser.add_argument("--start-memory-mb", type=_non_negative, default=0.0, metavar="M",
                        help="allocate and touch M MB before READY and keep it")
    parser.add_argument("--gpu-allocate", action="store_true",
                        help=f"allocate the unit's {contract.GPU_MEMORY} bytes of GPU memory through the CUDA runtime "
                        "(libcudart) before READY and keep it: a model's weights, for GPU admission")
    parser.add_argument("--crash-at-start", action="store_true",
                        help="exit 1 at once, before binding anything (for crash-loop tests)")
    return parser.parse_args(argv)


def _no_options():
    from types import SimpleNamespace
    return SimpleNamespace(start_seconds=0.0, start_memory_mb=0.0, gpu_allocate=False, crash_at_start=False)


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        import argparse
        raise argparse.ArgumentTypeError(f"expected a number, zero or more, got {text!r}")
    return value


class Signals:
    """SIGTERM and SIGINT as a flag plus a wakeup fd that every blocking poll also watches.

    A handler that raises cannot stop a zmq_poll() that had not yet started when the
    signal came (seen: 1 SIGTERM in 15 sent right after READY=1 was lost that way). The
    C-level handler writes the signal number to the wakeup fd, so the poll returns.
    """

    def __init__(self):
        self.received = None
        self.reader, writer = socket.socketpair()
        self.reader.setblocking(False)
        writer.setblocking(False)
        self._writer = writer  # kept open for the process's life
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handler)

    def _handler(self, signum, frame):
        self.received = signal.Signals(signum).name

    def check(self):
        """Raise Stop if a stop signal came, whether or not its Python handler has run yet."""
        if self.poll() is not None:
            raise Stop(self.received)

    def poll(self):
        """The stop signal's name if one came, else None."""
        if self.received is None:
            try:
                data = self.reader.recv(64)
            except BlockingIOError:
                data = b""
            if data:
                self.received = signal.Signals(data[0]).name
        return self.received

    def ignore(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)


def pick_agent_fd(fds):
    for fd, name in fds:
        if name == "agent":
            return fd
    return fds[0][0] if fds else None  # fd 3, unless it was missing


def listen_private(host, port):
    """A listening TCP socket on the proxy's private address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def check_listening(fd):
    probe = socket.socket(fileno=os.dup(fd))
    try:
        if probe.type != socket.SOCK_STREAM or not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise StartError(f"fd {fd} from systemd is not a listening stream socket "
                              "(the socket unit needs ListenStream= and Accept=no)")
    finally:
        probe.close()


# --- the agent ----------------------------------------------------------------------

class Agent:
    def __init__(self, config, args, notifier, signals):
        self.config = config
        self.args = args
        self.notify = notifier
        self.signals = signals
        self.pid = os.getpid()
        self.requests = 0
        self.busy = False  # answering a request: a SIGTERM waits until it is answered
        self.stop_by = None  # STOP_GRACE after the SIGTERM
        self.ballast = None
        self.gpu = None  # CudaMemory, with --gpu-allocate: released when the process exits
        self.zmq = self.ctx = self.rep = self.health = None
        self.endpoint = ""
        self.listen_fd = None  # the listening fd handed to libzmq (systemd's, or our private one)
        self.swapped = False  # stop_accepting() put another socket under listen_fd

    # -- life cycle

    def start(self):
        args = self.args
        if args.start_seconds or args.start_memory_mb:
            self.notify.send(f"STATUS=starting: {args.start_seconds:g} s of work, {args.start_memory_mb:g} MB")
            if args.start_memory_mb:
                self.ballast = hold_memory(args.start_memory_mb)
            burn_cpu(args.start_seconds, self.tick)
        if args.gpu_allocate:
            amount = int(os.environ.get(contract.GPU_MEMORY) or 0)
            try:
                self.gpu = CudaMemory(amount)
            except OSError as exc:
                raise StartError(str(exc)) from None
            log(f"{self.config.name}: holds {amount} bytes of GPU memory")
        import zmq
        self.zmq = zmq
        self.ctx = zmq.Context(io_threads=1)
        self.rep = self.ctx.socket(zmq.REP)
        config = self.config
        how = "its own port"
        bind_to = None
        if config.activation == "proxy":
            self.endpoint = tcp_endpoint(*config.bind)
            how = "the proxy's private address"
            # Bound here and handed over like systemd's fd: libzmq binding a specific
            # address itself asks getifaddrs(), i.e. a netlink socket, which the
            # unit's RestrictAddressFamilies= forbids (the agent aborts).
            # The endpoint only has to parse then; a wildcard one needs no lookup.
            self.private = listen_private(*config.bind)
            self.rep.setsockopt(zmq.USE_FD, self.private.fileno())
            self.listen_fd = self.private.fileno()
            bind_to = f"tcp://*:{config.bind[1]}"
        else:
            self.endpoint = f"tcp://*:{config.port}"
            fd = pick_agent_fd(listen_fds(os.environ)) if config.activation == "native" else None
            if fd is None and config.activation == "none":
                # Our own listening socket, handed over like systemd's: stop_accepting() can then
                # close it without closing the connections accepted already.
                self.private = listen_private("0.0.0.0", config.port)
                self.rep.setsockopt(zmq.USE_FD, self.private.fileno())
                self.listen_fd = self.private.fileno()
            elif fd is not None:
                check_listening(fd)
                # libzmq takes the fd systemd listens on as it is; the endpoint must still parse.
                self.rep.setsockopt(zmq.USE_FD, fd)
                self.listen_fd = fd
                how = f"fd {fd} from systemd"
        try:
            self.rep.bind(bind_to or self.endpoint)
        except zmq.ZMQError as exc:
            raise StartError(f"cannot listen on {self.endpoint}: {exc.strerror}") from None
        if config.health_port is not None:
            try:
                self.health = Health(config.health_port, self.health_status)
            except OSError as exc:
                raise StartError(f"cannot listen on health port {config.health_port}: {exc}") from None
        health = f", health on :{config.health_port}" if config.health_port is not None else ""
        status = f"serving {self.endpoint} ({config.activation}, {how}){health}"
        self.notify.send("READY=1", f"STATUS={status}")
        log(f"{config.name}: ready in {(time.monotonic() - STARTED) * 1000:.0f} ms since import: {status}")

    def serve(self):
        """Answer requests until SIGTERM or, in native mode, until idle for AGENTKIT_IDLE_STOP.

        On SIGTERM (a restart, an upgrade, a stop) no request is dropped: the agent stops
        accepting (natively the listening socket stays with systemd, whose queue holds new
        clients for the next instance), finishes the request it is answering, answers what its
        connected clients have sent, and only then exits (Stop goes on to main())."""
        try:
            self._serve()
        except Stop as stop:
            log(f"{self.config.name}: {stop}, finishing the requests in flight")
            self.notify.send("STOPPING=1", f"STATUS={stop}: finishing the requests in flight")
            answered = self.drain(DRAIN_QUIET)
            log(f"{self.config.name}: answered {answered} request(s) in flight")
            raise

    def _serve(self):
        rep, idle = self.rep, self.config.idle_stop
        poller = self.poller(rep)
        last = time.monotonic()
        while True:
            now = time.monotonic()
            self.tick(now)
            waits = [self.notify.until_watchdog(now)]
            if idle is not None:
                if now - last >= idle:
                    self.stop_when_idle()
                    return
                waits.append(last + idle - now)
            waits = [w for w in waits if w is not None]
            timeout = int(min(waits) * 1000) + 1 if waits else None
            if rep in dict(poller.poll(timeout)):
                self.signals.check()
                self.answer_one()
                last = time.monotonic()

    def poller(self, sock):
        poller = self.zmq.Poller()
        poller.register(sock, self.zmq.POLLIN)
        poller.register(self.signals.reader, self.zmq.POLLIN)
        return poller

    def tick(self, now=None):
        """Between slices of any work: the watchdog, and SIGTERM. A request being answered is
        finished first (the serve loop stops after it), unless STOP_GRACE is over: CutShort."""
        self.notify.tick(now)
        received = self.signals.poll()
        if received is None:
            return
        now = time.monotonic() if now is None else now
        if self.stop_by is None:
            self.stop_by = now + STOP_GRACE
        if not self.busy:
            raise Stop(received)
        if now >= self.stop_by:
            raise CutShort(f"{self.config.name} is stopping ({received}): the request was cut short "
                           f"{STOP_GRACE:g} s after it")

    def answer_one(self):
        frames = self.rep.recv_multipart()
        self.requests += 1
        self.busy = True
        try:
            reply = self.handle(frames)
        finally:
            self.busy = False
        self.rep.send(reply)

    def stop_accepting(self):
        """Accept no more connections; those accepted already stay, and what their clients send
        still arrives. zmq_unbind() would also close those (what a client sent and we had not
        read yet would be lost, and it would wait for an answer forever): so the listening fd
        libzmq accepts on is replaced, under the same number, by a listening socket nobody
        connects to. Natively the socket itself stays with systemd, whose queue holds new
        clients for the next instance; our private one (proxy mode) closes."""
        if self.listen_fd is not None:
            dummy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                dummy.bind(("127.0.0.1", 0))
                dummy.listen(1)
                dummy.setblocking(False)
                os.dup2(dummy.fileno(), self.listen_fd, inheritable=False)
                self.swapped = True
                return
            except OSError:
                pass  # then unbind, as without a handed-over fd
            finally:
                dummy.close()
        try:
            self.rep.unbind(self.rep.getsockopt_string(self.zmq.LAST_ENDPOINT))
        except self.zmq.ZMQError:
            pass

    def drain(self, quiet):
        """Answer the requests of connected clients until none came for `quiet` seconds, and
        (after a SIGTERM) until STOP_GRACE is over at most: the number answered."""
        self.busy = True  # no second Stop from tick(): we are on our way out already
        self.stop_accepting()
        answered = 0
        end = self.stop_by if self.stop_by is not None else time.monotonic() + STOP_GRACE
        while True:
            now = time.monotonic()
            self.notify.tick(now)
            if now >= end or not self.rep.poll(int(min(quiet, end - now) * 1000) + 1, self.zmq.POLLIN):
                return answered
            frames = self.rep.recv_multipart()
            self.requests += 1
            self.rep.send(self.handle(frames))
            answered += 1

    def stop_when_idle(self):
        log(f"{self.config.name}: no request for {self.config.idle_stop:g} s, stopping")
        self.notify.send(f"STATUS=idle for {self.config.idle_stop:g} s, stopping")
        # Stop accepting first: from here on new connections wait in systemd's socket
        # and start the next instance. Then answer what connected peers already sent.
        self.drain(DRAIN_QUIET)

    def close(self):
        if self.health is not None:
            self.health.close()
        if self.swapped:
            # libzmq must not tear its listener down now (its poller's entry is for the socket
            # that was under the fd: it would abort); main() exits without it, once the last
            # replies had FLUSH seconds to leave (loopback or LAN: far less is needed).
            time.sleep(FLUSH)
            return
        if self.rep is not None:
            self.rep.close(linger=500)  # let the last reply leave
        if self.ctx is not None:
            self.ctx.term()

    def health_status(self):
        return {"status": "ok", "agent": self.config.name, "pid": self.pid,
                "uptime_s": round(time.monotonic() - STARTED, 3), "requests": self.requests,
                "activation": self.config.activation}

    # -- requests

    def handle(self, frames):
        """One reply for every request, whatever it holds: a REP socket must always answer."""
        import json  # already loaded by zmq: a dictionary look-up
        try:
            reply = self.dispatch(frames)
        except (BadRequest, CutShort) as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bad request must never take the agent down
            reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        return json.dumps(reply).encode()

    def dispatch(self, frames):
        import json
        if len(frames) != 1:
            raise BadRequest(f"expected a message of one frame, got {len(frames)}")
        try:
            request = json.loads(frames[0])
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        if not isinstance(request, dict):
            raise BadRequest(f"expected a JSON object, got {type(request).__name__}")
        action = request.get("action")
        handler = {"ping": self.ping, "chain": self.chain, "work": self.work}.get(action) \
            if isinstance(action, str) else None
        if handler is None:
            raise BadRequest(f"unknown action {action!r} (expected ping, chain or work)")
        return handler(request)

    def ping(self, request):
        return {"ok": True, "agent": self.config.name, "host": self.config.host, "pid": self.pid}

    def work(self, request):
        seconds = _number(request, "seconds", 0.0)
        memory_mb = _number(request, "memory_mb", 0.0)
        held = hold_memory(memory_mb) if memory_mb else None
        spent = burn_cpu(seconds, self.tick)
        del held
        return {"ok": True, "agent": self.config.name, "pid": self.pid, "cpu_s": round(spent, 3),
                "memory_mb": memory_mb}

    def chain(self, request):
        import json
        timeout = _number(request, "timeout", DEFAULT_CHAIN_TIMEOUT)
        deadline = time.monotonic() + timeout
        replies = []

        def failed(error):
            return {"ok": False, "agent": self.config.name, "pid": self.pid, "error": error, "deps": replies}

        for name, host, port in self.config.depends:
            remaining = deadline - time.monotonic()
            where = f"dependency {name} ({host}:{port})"
            if remaining <= 0:
                return failed(f"{where}: not called, the chain's {timeout:g} s were used up")
            # A little less for the dependency, so a hang deeper down is reported by the
            # agent next to it, naming the one that hung, before our own time is up.
            ask = json.dumps({"action": "chain", "timeout": round(remaining * 0.9, 3)}).encode()
            try:
                answer = self.call(tcp_endpoint(host, port), ask, remaining)
            except TimeoutError:
                return failed(f"{where} did not answer within {remaining:.3g} s")
            try:
                reply = json.loads(answer)
            except ValueError:
                return failed(f"{where} answered something that is not JSON: {answer[:80]!r}")
            replies.append(reply)
            if not isinstance(reply, dict) or reply.get("ok") is not True:
                error = reply.get("error") if isinstance(reply, dict) else reply
                return failed(f"{where} failed: {error}")
        return {"ok": True, "agent": self.config.name, "pid": self.pid, "deps": replies}

    def call(self, endpoint, message, timeout):
        """One request on a fresh REQ socket; TimeoutError if no answer in time."""
        zmq = self.zmq
        req = self.ctx.socket(zmq.REQ)
        try:
            req.setsockopt(zmq.LINGER, 0)
            req.connect(endpoint)
            req.send(message, zmq.NOBLOCK)
            poller = self.poller(req)
            end = time.monotonic() + timeout
            while True:
                now = time.monotonic()
                self.tick(now)
                if now >= end:
                    raise TimeoutError
                wait = min(w for w in (end - now, self.notify.until_watchdog(now)) if w is not None)
                if req in dict(poller.poll(int(wait * 1000) + 1)):
                    return req.recv()
        except zmq.Again:
            raise TimeoutError from None
        finally:
            req.close()


def _number(request, key, default):
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise BadRequest(f"{key}: expected a number, zero or more, got {value!r}")
    return float(value)


PROG = "agentkit-agent"


def log(message):
    logging.getLogger(PROG).info(message)


def main(argv=None):
    logs.setup(PROG)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.crash_at_start:
        log("exiting with status 1 at start, as asked (--crash-at-start)")
        return 1
    try:
        config = Config(os.environ)
    except ConfigError as exc:
        log(str(exc))
        return 2
    signals = Signals()
    notifier = Notifier(os.environ)
    agent = Agent(config, args, notifier, signals)
    status = 0
    try:
        agent.start()
        agent.serve()
    except Stop as stop:
        log(f"{config.name}: {stop}, stopping")
    except (ConfigError, StartError) as exc:
        log(f"{config.name}: {exc}")
        notifier.send(f"STATUS=failed: {exc}")
        status = 1
    finally:
        signals.ignore()  # we are on our way out; systemd may still SIGKILL after TimeoutStopSec=
        notifier.send("STOPPING=1")
        agent.close()
        notifier.close()
    if agent.swapped:
        logging.shutdown()
        os._exit(status)  # see Agent.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
