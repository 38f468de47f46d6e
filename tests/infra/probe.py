"""What tests/infra runs ON a deployed host, once per host: one round-trip.

Sent as the program of `python3 -c` (hex-encoded, with its zlib-compressed,
hex-encoded JSON request as its last argument, so no shell, ssh, sudo or Ansible quoting
layer can touch it); prints one JSON object. It only reads: unit states
(`systemctl show`, `systemctl list-units --failed`), listening TCP sockets
(`ss`), the digests of agentkit's unit files, and GET /health on the health
ports it is given. It never connects to an agent port: an optional agent's
port is held by its socket unit, and a connection would wake the agent.

Kept to what Python 3.6 and a stock Debian/Ubuntu have (the interpreter
Ansible uses); runs unprivileged (everything it reads is world-readable).
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
import zlib

try:
    from urllib.error import HTTPError
    from urllib.request import Request, build_opener, ProxyHandler
except ImportError:  # pragma: no cover - Python 2 is not supported
    raise SystemExit("tests/infra: the probe needs Python 3 on the host")

ENV = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL="C", PAGER="cat")


def run(argv):
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    except OSError as exc:
        return 127, "", "%s: %s" % (argv[0], exc)
    out, err = proc.communicate()
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def show(units, props):
    """{unit: {property: value}} from one `systemctl show` of every unit."""
    found = {}
    if not units:
        return found, None
    rc, out, err = run(["systemctl", "show", "--no-pager", "-p", ",".join(props)] + list(units))
    if rc != 0 and not out:
        return found, "systemctl show: exit %d: %s" % (rc, err.strip())
    for block in out.split("\n\n"):
        values = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        if values.get("Id"):
            found[values["Id"]] = values
    return found, None


def failed_units(props):
    rc, out, err = run(["systemctl", "list-units", "--failed", "--all", "--plain", "--no-legend", "--no-pager",
                        "--full", "agentkit*"])
    if rc != 0:
        return [], "systemctl list-units --failed: exit %d: %s" % (rc, err.strip())
    names = []
    for line in out.splitlines():
        words = line.replace("\u25cf", " ").split()  # a bullet, in case this systemctl prints one
        if words:
            names.append(words[0])
    states, error = show(names, props)
    return [states.get(name, {"Id": name, "ActiveState": "failed"}) for name in names], error


def listening():
    """[[address, port], ...] of every listening TCP socket, as ss prints them."""
    rc, out, err = run(["ss", "--numeric", "--listening", "--tcp"])
    if rc != 0:
        return [], "ss: exit %d: %s" % (rc, err.strip())
    sockets = []
    for line in out.splitlines():
        words = line.split()
        if len(words) < 4 or words[0] != "LISTEN":
            continue
        address, _, port = words[3].rpartition(":")
        if port.isdigit():
            sockets.append([address.strip("[]").split("%")[0], int(port)])
    return sockets, None


def digests(unit_dir):
    """sha256 of every file of unit_dir whose name starts with agentkit."""
    out = {}
    try:
        names = os.listdir(unit_dir)
    except OSError as exc:
        return out, "%s: %s" % (unit_dir, exc)
    for name in names:
        path = os.path.join(unit_dir, name)
        if not name.startswith("agentkit") or not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as handle:
                out[name] = hashlib.sha256(handle.read()).hexdigest()
        except OSError as exc:
            out[name] = "unreadable: %s" % exc
    return out, None


def exec_path(units):
    """The program of the first of units' ExecStart= that systemd loaded (its path=...)."""
    for unit in units:
        rc, out, _ = run(["systemctl", "show", "--no-pager", "-p", "ExecStart", "--value", unit])
        for part in out.replace("{", " ").split(" ; "):
            part = part.strip()
            if part.startswith("path=") and rc == 0:
                return part[len("path="):]
    return None


def health(checks, timeout):
    """GET each URL at once, in threads: {key: {code, body, error}}."""
    opener = build_opener(ProxyHandler({}))  # the host's own ports: never through an http_proxy
    results = {}

    def probe(key, url):
        result = {"url": url, "code": None, "body": "", "error": None}
        try:
            response = opener.open(Request(url, headers={"User-Agent": "agentkit-infra-check"}), timeout=timeout)
            try:
                result["code"] = response.getcode()
                result["body"] = response.read(65536).decode("utf-8", "replace")
            finally:
                response.close()
        except HTTPError as exc:
            result["code"] = exc.code
            try:
                result["body"] = exc.read(65536).decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the status says enough
                pass
        except Exception as exc:  # noqa: BLE001 - refused, reset, timeout...: reported, not raised
            reason = getattr(exc, "reason", None)
            result["error"] = "%s: %s" % (type(exc).__name__, reason if reason is not None else exc)
        results[key] = result

    threads = [threading.Thread(target=probe, args=(key, url)) for key, url in checks]
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    for key, url in checks:
        results.setdefault(key, {"url": url, "code": None, "body": "", "error": "no answer within %ss" % timeout})
    return results


def main():
    request = json.loads(zlib.decompress(bytes.fromhex(sys.argv[-1])).decode("utf-8"))
    props = request["props"]
    errors = {}
    units, errors["show"] = show(request["units"], props)
    failed, errors["failed"] = failed_units(props)
    sockets, errors["listening"] = listening()
    files, errors["files"] = digests(request["unit_dir"])
    json.dump({
        "units": units,
        "failed": failed,
        "listening": sockets,
        "files": files,
        "exec_path": exec_path(request.get("exec_units", [])),
        "health": health(request["health"], request.get("timeout", 5)),
        "errors": dict((k, v) for k, v in errors.items() if v),
    }, sys.stdout)


if __name__ == "__main__":
    main()
