"""Load the manifest (agents/*.yaml) into a Manifest, reporting every problem at once.

Layout of the manifest directory:
  fleet.yaml      name, hosts, defaults (agent settings), slices, profiles, router
  <group>.yaml    group, host, defaults, agents: {Name: {settings}}

An agent's setting comes from the agent itself, else its file's defaults:,
else fleet.yaml's defaults:, else agentkit's built-in default. Each setting is
declared once (settings.py); this module reads the files by those tables, and
checks.py makes the checks across agents and the backends' own.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import replace
from typing import Any, Callable, Iterable

from . import checks, parsers, units
from .errors import AgentkitError, ManifestError, Problem, close_match, did_you_mean, hint_budget, some
from .env import PORT_WORD
from .model import (Agent, Host, HostAddress, Location, Manifest, Profile, Readiness, Restart, RouterSpec,
                    Slice)
from .router import config as router_config
from .router.settings import MANIFEST_SETTINGS, REQUIRED
from .settings import (AGENT_SETTINGS, BUILTIN_SLICES, FLEET_SETTINGS, GROUP_SETTINGS, HOST_SETTINGS,
                       OPTIONAL_ONLY, PROFILE_SETTINGS, RESTART_SETTINGS, SLICE_SETTINGS, STATUS_SETTINGS)
from .yamlsrc import INVALID, Document, read as read_yaml

FLEET_FILE = "fleet.yaml"
FLEET_FILES = (FLEET_FILE, "fleet.yml")
# Every agent setting's default by its key in a merged layer ("restart.delay" for restart's).
_DEFAULTS = {**{key: s.default for key, s in AGENT_SETTINGS.items()},
             **{f"restart.{key}": s.default for key, s in RESTART_SETTINGS.items()}}


def _resolve_environment(check: "_Checker", doc: Document, path: tuple, env: dict,
                         hosts: dict[str, Host]) -> dict[str, str]:
    """Replace each {address_of: HOST} of `env` (read at doc/path) by that host's address."""
    resolved = {}
    for name, item in env.items():
        if isinstance(item, parsers.AddressOf):
            if not check.known_host(doc, path + (name, "address_of"), item.host, hosts):
                continue
            item = HostAddress(item.host, hosts[item.host].address)
        resolved[name] = item
    return resolved


def with_addresses(m: Manifest, addresses: dict[str, str], origin: str = "--address") -> Manifest:
    """The manifest with some hosts reached at other addresses (an inventory's, say).

    Every place an address is used follows: dependencies on other hosts
    (AGENTKIT_DEPENDS) and `{address_of: HOST}` environment values.
    """
    if not addresses:
        return m
    for host, address in addresses.items():
        if host not in m.hosts:
            raise AgentkitError(f"{origin} {host}={address}: unknown host {host!r} "
                                f"(hosts in {m.root}: {', '.join(m.hosts)})")
        if not parsers.is_address(address):
            raise AgentkitError(f"{origin} {host}={address}: expected a host name or an IP address")

    def env(pairs):
        return tuple((name, HostAddress(value.host, addresses.get(value.host, value))
                      if isinstance(value, HostAddress) else value) for name, value in pairs)

    hosts = {name: replace(h, address=addresses.get(name, h.address), environment=env(h.environment))
             for name, h in m.hosts.items()}
    agents = {name: replace(a, environment=env(a.environment)) for name, a in m.agents.items()}
    return replace(m, hosts=hosts, agents=agents)



class _Checker:
    """Collects problems while reading; never raises until the end."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # A section that is wrong as a whole (hosts: written as a list, a group file that is
        # not a mapping) is reported once; the names it would have declared are then not
        # known, and an "unknown host" or "unknown agent" for each use of one would be false.
        self.hosts_unknown = False
        self.agents_unknown = False

    def add(self, doc: Document, path: tuple, message: str) -> None:
        self.problems.append(doc.problem(path, message))

    def known_host(self, doc: Document, path: tuple, name: str, hosts: dict) -> bool:
        """Whether `name` is a host of the manifest; an unknown one is reported (unless hosts:
        itself is wrong, and says so)."""
        if name in hosts:
            return True
        if not self.hosts_unknown:
            self.add(doc, path, f"unknown host {name!r} (hosts: {some(hosts)})")
        return False

    def mapping(self, doc: Document, path: tuple, value: Any, what: str) -> dict:
        if value is None or value is INVALID:
            return {}
        if not isinstance(value, dict):
            self.add(doc, path, f"expected {what} (a mapping), got {parsers.show(value)}")
            return {}
        return value

    def known_keys(self, doc: Document, path: tuple, data: dict, known) -> None:
        for key in data:
            if key not in known:
                hint = close_match(key, known)
                suffix = f" (did you mean {hint!r}?)" if hint else f" (known: {', '.join(known)})"
                self.add(doc, path + (key,), f"unknown key{suffix}")

    def parse(self, doc: Document, path: tuple, value: Any, parser: Callable[[Any], Any]) -> Any:
        if value is INVALID:  # the YAML layer reported it already
            return INVALID
        try:
            return parser(value)
        except parsers.Many as exc:
            for sub, message in exc.problems:
                self.add(doc, path + sub, message)
        except ValueError as exc:
            self.add(doc, path, str(exc))
        return INVALID

    def settings(self, doc: Document, path: tuple, data: dict) -> dict[str, tuple[Any, Document, tuple]]:
        """Parse one layer of agent settings: {name: (value, doc, path)}; bad ones are reported and left out."""
        self.known_keys(doc, path, data, AGENT_SETTINGS)
        out: dict[str, tuple[Any, Document, tuple]] = {}
        for key, raw in data.items():
            setting = AGENT_SETTINGS.get(key)
            if setting is None:
                continue
            where = path + (key,)
            if key == "restart":
                sub = self.mapping(doc, where, raw, "the restart settings")
                self.known_keys(doc, where, sub, RESTART_SETTINGS)
                for subkey, subraw in sub.items():
                    if subkey in RESTART_SETTINGS:
                        value = self.parse(doc, where + (subkey,), subraw, RESTART_SETTINGS[subkey].parse)
                        if value is not INVALID:
                            out["restart." + subkey] = (value, doc, where + (subkey,))
                continue
            value = self.parse(doc, where, raw, setting.parse)
            out[key] = (value, doc, where)
        return out


def _manifest_files(root: str) -> list[str]:
    try:
        names = sorted(n for n in os.listdir(root) if n.endswith((".yaml", ".yml")) and not n.startswith("."))
    except FileNotFoundError:
        raise ManifestError([Problem(root, 0, "", "no such manifest directory")]) from None
    except NotADirectoryError:
        raise ManifestError([Problem(root, 0, "", "not a directory (the manifest is a directory of YAML files)")]) from None
    return names


def load(root: str = "agents") -> Manifest:
    """Read and check the manifest under `root`; raise ManifestError listing every problem."""
    # Loading allocates many long-lived, acyclic objects (a line number per YAML
    # node, the settings, the agents): the cyclic collector's full passes over them
    # made a 10k-agent load grow worse than linearly (bench/render.py).
    with _collector_paused(), hint_budget():
        return _load(root)


@contextlib.contextmanager
def _collector_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load(root: str) -> Manifest:
    check = _Checker()
    docs: dict[str, Document] = {}
    for name in _manifest_files(root):
        doc, problems = read_yaml(os.path.join(root, name))
        check.problems.extend(problems)
        docs[name] = doc
    fleet_docs = [docs.pop(name) for name in FLEET_FILES if name in docs]
    if len(fleet_docs) > 1:
        check.problems.append(Problem(fleet_docs[1].file, 0, "", f"two fleet files: keep {FLEET_FILE} only"))
    fleet_doc = fleet_docs[0] if fleet_docs else None
    if fleet_doc is None:
        check.problems.append(Problem(os.path.join(root, FLEET_FILE), 0, "",
                                      "missing: the fleet file declares the hosts, defaults and profiles"))
        raise ManifestError(check.problems)
    if not fleet_doc.whole:
        # Every other file names its hosts, and every other problem would be a guess.
        raise ManifestError(check.problems)
    if not all(doc.whole for doc in docs.values()):
        # The agents of a file that cannot be read are unknown: a dependency on one of
        # them, or a profile naming it, is not reported as an unknown agent.
        check.agents_unknown = True

    fleet = check.mapping(fleet_doc, (), fleet_doc.data, "the fleet settings")
    check.known_keys(fleet_doc, (), fleet, FLEET_SETTINGS)
    name = _fleet_setting(check, fleet_doc, fleet, "name")
    offset = _fleet_setting(check, fleet_doc, fleet, "private_port_offset")

    hosts = _read_hosts(check, fleet_doc, fleet)
    slices = _read_slices(check, fleet_doc, fleet)
    fleet_defaults = check.settings(fleet_doc, ("defaults",),
                                    check.mapping(fleet_doc, ("defaults",), fleet.get("defaults"), "agent defaults"))
    agents, declared = _read_agents(check, docs, fleet_defaults, hosts, slices, offset)
    profiles = _read_profiles(check, fleet_doc, fleet, agents, declared)
    if not profiles:
        profiles["full"] = Profile("full", True, frozenset())
    default_profile = check.parse(fleet_doc, ("default_profile",),
                                  fleet.get("default_profile", "full" if "full" in profiles else next(iter(profiles))),
                                  parsers.text)
    if default_profile is not INVALID and default_profile not in profiles:
        check.add(fleet_doc, ("default_profile",), f"unknown profile {default_profile!r} (profiles: {some(profiles)})")

    router = _read_router(check, fleet_doc, fleet, hosts)
    manifest = Manifest(root=root, name=name, hosts=hosts, agents=agents, slices=slices, profiles=profiles,
                        default_profile=default_profile, private_port_offset=offset, router=router)
    _check(check, manifest, declared, fleet_doc, docs)
    if check.problems:
        raise ManifestError(check.problems)
    return manifest


def _fleet_setting(check: _Checker, doc: Document, fleet: dict, key: str) -> Any:
    """A plain setting of the fleet file; its default when absent, or when wrong (reported)."""
    setting = FLEET_SETTINGS[key]
    value = check.parse(doc, (key,), fleet.get(key, setting.default), setting.parse)
    return setting.default if value is INVALID else value


def _check(check: _Checker, manifest: Manifest, declared: dict[str, Location], fleet_doc: Document,
           docs: dict[str, Document]) -> None:
    """The checks across agents, then every backend's own, located in the files."""
    from . import backends  # the backends import this module's model of the manifest
    by_file = {doc.file: doc for doc in docs.values()}
    issues = list(checks.fleet(manifest, declared))
    if not issues and not check.problems:
        # The backends' checks read the agents as render does: only of a manifest
        # that is whole, or their problems would follow from those already found.
        issues = backends.check(manifest)
    _locate(check, manifest, issues, fleet_doc, by_file)


def _locate(check: _Checker, manifest: Manifest, issues: Iterable[checks.Issue], fleet_doc: Document,
            by_file: dict[str, Document]) -> None:
    for issue in issues:
        if issue.agent is None:
            check.add(fleet_doc, issue.path, issue.message)
        else:
            agent = manifest.agents[issue.agent]
            check.add(by_file[agent.where.file], ("agents", agent.name) + issue.path, issue.message)


def problems(manifest: Manifest, issues: Iterable[checks.Issue]) -> ManifestError | None:
    """Issues found after loading (the programs, as this machine would run them), located in
    the manifest's files as the loader's own are; None when there are none."""
    issues = list(issues)
    if not issues:
        return None
    check = _Checker()
    docs = {}
    for name in _manifest_files(manifest.root):
        docs[name] = read_yaml(os.path.join(manifest.root, name))[0]
    fleet_doc = next(docs[name] for name in FLEET_FILES if name in docs)
    _locate(check, manifest, issues, fleet_doc, {doc.file: doc for doc in docs.values()})
    return ManifestError(check.problems)


def _read_router(check: _Checker, doc: Document, fleet: dict, hosts: dict[str, Host]) -> RouterSpec | None:
    if fleet.get("router") is None:
        return None
    raw = check.mapping(doc, ("router",), fleet.get("router"), "the router's settings")
    if not isinstance(fleet.get("router"), dict):
        return None  # reported by mapping()
    sections = {key.split(".")[0] for key in MANIFEST_SETTINGS if "." in key}
    check.known_keys(doc, ("router",), raw, [k for k in MANIFEST_SETTINGS if "." not in k] + sorted(sections))
    flat: dict[str, tuple[Any, tuple]] = {}
    for key, value in raw.items():
        if key in sections:
            sub = check.mapping(doc, ("router", key), value, f"the router's {key} settings")
            known = [k.split(".", 1)[1] for k in MANIFEST_SETTINGS if k.startswith(key + ".")]
            check.known_keys(doc, ("router", key), sub, known)
            for subkey, subvalue in sub.items():
                if subkey in known:
                    flat[f"{key}.{subkey}"] = (subvalue, ("router", key, subkey))
        elif key in MANIFEST_SETTINGS:
            flat[key] = (value, ("router", key))
    settings: dict[str, Any] = {}
    ok = True
    for key, setting in MANIFEST_SETTINGS.items():
        if key not in flat:
            if setting.default is REQUIRED:
                section, _, name = key.rpartition(".")
                check.add(doc, ("router",) + ((section,) if section else ()), f"missing {name}: {setting.help}")
                ok = False
            elif setting.default is not None:
                settings[key] = setting.default
            continue
        value, path = flat[key]
        parsed = check.parse(doc, path, value, setting.parse)
        if parsed is INVALID:
            ok = False
            continue
        settings[key] = parsed
    if "small.model" not in settings:
        for key in ("small.context_window", "small.kv_cache_per_token"):
            if key in flat:
                check.add(doc, flat[key][1], "set small.model too, or leave the small model out")
                ok = False
    elif "local.models" in settings:
        check.add(doc, flat["small.model"][1], "with local.models, list the small model as a tier there")
        ok = False
    for section in ("local", "cloud"):
        if (f"{section}.model" in flat) == (f"{section}.models" in flat):
            check.add(doc, ("router", section), f"give the {section} model (model: NAME) or its tiers "
                                                 "(models: [{name: ..., above: ...}]), one of the two")
            ok = False
    host = settings.get("host")
    if host is not None and not check.known_host(doc, ("router", "host"), host, hosts):
        ok = False
    ok = _router_backends(check, doc, settings, hosts) and ok
    if not ok:
        return None
    return RouterSpec(host=settings.pop("host"), port=settings.pop("port"), bind=settings.pop("bind"),
                      api_key_file=settings.pop("cloud.api_key_file", None), memory_max=settings.pop("memory_max"),
                      settings=tuple(settings.items()), where=Location(doc.file, doc.line(("router",))))


def _router_backends(check: _Checker, doc: Document, settings: dict, hosts: dict[str, Host]) -> bool:
    """The peers' hosts (NVML is read for a peer on the router's own host), and the backends rules name."""
    ok = True
    peers = []
    for peer, where in settings.get("peers") or ():
        path = ("router", "peers", peer.name)
        if peer.name == router_config.LOCAL:
            check.add(doc, path, "'local' is the router's own backend (router.local): name the peer otherwise")
            ok = False
        if where is not None and not check.known_host(doc, path + ("host",), where, hosts):
            ok = False
        on_router_host = where is None or where == settings.get("host")
        peers.append(replace(peer, gpu=(peer.gpu or 0) if on_router_host else None))
    if "peers" in settings:
        settings["peers"] = tuple(peers)
    names = (router_config.LOCAL, router_config.CLOUD) + tuple(p.name for p in peers)
    for rule in settings.get("rules", ()):
        if rule.backend is not None and rule.backend not in names:
            check.add(doc, ("router", "rules", rule.pattern), f"no backend {rule.backend!r} (backends: {', '.join(names)})")
            ok = False
    unknown = settings.get("unknown")
    if isinstance(unknown, str) and unknown not in names + (router_config.ESTIMATE,):
        check.add(doc, ("router", "unknown"), f"no backend {unknown!r} (backends: {', '.join(names)})")
        ok = False
    return ok


def _read_hosts(check: _Checker, doc: Document, fleet: dict) -> dict[str, Host]:
    hosts: dict[str, Host] = {}
    raw_hosts = check.mapping(doc, ("hosts",), fleet.get("hosts"), "the hosts")
    if not raw_hosts:
        check.hosts_unknown = True
        if fleet.get("hosts") is None or isinstance(fleet.get("hosts"), dict):
            check.add(doc, ("hosts",), "declare at least one host, e.g. hosts: {myhost: {address: 127.0.0.1}}")
    for host_name, raw in raw_hosts.items():
        path = ("hosts", host_name)
        if not parsers.HOST_NAME.match(host_name):
            check.add(doc, path, "a host name is letters, digits, '.', '_' and '-' (at most 63)")
        data = check.mapping(doc, path, raw, "the host's settings")
        check.known_keys(doc, path, data, HOST_SETTINGS)
        address = data.get("address", host_name)
        if check.parse(doc, path + ("address",), address, parsers.text) is INVALID:
            address = host_name
        env = check.parse(doc, path + ("environment",), data.get("environment", {}), parsers.environment)
        ports = check.mapping(doc, path + ("ports",), data.get("ports"), "the fleet services' ports")
        fleet_ports: dict[int, str] = {}
        for service, port in ports.items():
            if check.parse(doc, path + ("ports", service), port, parsers.port) is INVALID:
                continue
            if port in fleet_ports:
                check.add(doc, path + ("ports", service), f"{port} is also used on {host_name} by the fleet "
                          f"service {fleet_ports[port]} (hosts.{host_name}.ports.{fleet_ports[port]})")
                continue
            fleet_ports[port] = service
        status = check.mapping(doc, path + ("status",), data.get("status"), "the status service's settings")
        check.known_keys(doc, path + ("status",), status, STATUS_SETTINGS)
        listen = {}
        for key, setting in STATUS_SETTINGS.items():
            value = check.parse(doc, path + ("status", key), status.get(key, setting.default), setting.parse)
            listen[key] = setting.default if value is INVALID else value
        if listen["port"] in fleet_ports:
            check.add(doc, path + ("status", "port"), f"{listen['port']} is also used on {host_name} by the fleet "
                      f"service {fleet_ports[listen['port']]} (hosts.{host_name}.ports.{fleet_ports[listen['port']]})")
        gpus = check.parse(doc, path + ("gpus",), data.get("gpus", {}), HOST_SETTINGS["gpus"].parse)
        hosts[host_name] = Host(host_name, address, tuple((env if env is not INVALID else {}).items()),
                                tuple((service, port) for port, service in fleet_ports.items()),
                                Location(doc.file, doc.line(path)), listen["port"], listen["bind"],
                                tuple(sorted((gpus if gpus is not INVALID else {}).items())))
    # {address_of: HOST} may name a host declared further down: resolve once all are known.
    return {name: replace(h, environment=tuple(_resolve_environment(
                check, doc, ("hosts", name, "environment"), dict(h.environment), hosts).items()))
            for name, h in hosts.items()}


def _read_slices(check: _Checker, doc: Document, fleet: dict) -> dict[str, Slice]:
    raw_slices = check.mapping(doc, ("slices",), fleet.get("slices"), "the slices")
    described = SLICE_SETTINGS["description"].default
    slices = {name: Slice(name, described.format(name=name), None, None) for name in BUILTIN_SLICES}
    for slice_name, raw in raw_slices.items():
        path = ("slices", slice_name)
        if not parsers.SLICE_NAME.match(slice_name):
            check.add(doc, path, "a slice name is letters, digits and '_' ('-' would nest it in another slice)")
        data = check.mapping(doc, path, raw, "the slice's settings")
        check.known_keys(doc, path, data, SLICE_SETTINGS)
        description = data.get("description", described.format(name=slice_name))
        if check.parse(doc, path + ("description",), description, parsers.text) is INVALID:
            description = slice_name
        memory = check.parse(doc, path + ("memory_max",), data.get("memory_max"), parsers.optional(parsers.memory))
        weight = check.parse(doc, path + ("cpu_weight",), data.get("cpu_weight"), parsers.optional(parsers.cpu_weight))
        slices[slice_name] = Slice(slice_name, description,
                                   None if memory is INVALID else memory, None if weight is INVALID else weight)
    return slices


def _read_agents(check: _Checker, docs: dict[str, Document], fleet_defaults: dict,
                 hosts: dict[str, Host], slices: dict[str, Slice], offset: int
                 ) -> tuple[dict[str, Agent], dict[str, Location]]:
    """The agents that are fine, and where every agent was declared (fine or not)."""
    agents: dict[str, Agent] = {}
    declared: dict[str, Location] = {}
    for file_name, doc in docs.items():
        if doc.data is not None and not isinstance(doc.data, dict) or (
                isinstance(doc.data, dict) and doc.data.get("agents") is not None
                and not isinstance(doc.data["agents"], dict)):  # a list, or INVALID (a bad tag)
            check.agents_unknown = True
        data = check.mapping(doc, (), doc.data, "a group of agents")
        check.known_keys(doc, (), data, GROUP_SETTINGS)
        group = data.get("group", os.path.splitext(file_name)[0])
        if "group" not in data and not parsers.LABEL.match(group):
            check.add(doc, (), f"the file name {group!r} is not a group name (letters, digits, '.', '_' "
                      "and '-'): rename the file or set group:")
        elif check.parse(doc, ("group",), group, parsers.text) is not INVALID and not parsers.LABEL.match(group):
            check.add(doc, ("group",), f"a group name is letters, digits, '.', '_' and '-', got {parsers.show(group)}")
        layer0 = dict(fleet_defaults)
        if "host" in data:
            if check.parse(doc, ("host",), data["host"], parsers.text) is not INVALID:
                layer0["host"] = (data["host"], doc, ("host",))
        file_defaults = check.settings(doc, ("defaults",), check.mapping(doc, ("defaults",), data.get("defaults"), "agent defaults"))
        base = {**layer0, **file_defaults}
        raw_agents = check.mapping(doc, ("agents",), data.get("agents"), "the agents, by name")
        for agent_name, raw in raw_agents.items():
            path = ("agents", agent_name)
            if agent_name in declared:
                check.add(doc, path, f"duplicate agent name, first defined at {declared[agent_name]}")
                continue
            declared[agent_name] = Location(doc.file, doc.line(path))
            own = check.settings(doc, path, check.mapping(doc, path, raw, "the agent's settings"))
            agent = _build_agent(check, doc, path, agent_name, group, base, own, hosts, slices, offset)
            if agent is not None:
                agents[agent_name] = agent
    return agents, (_AnyName(declared) if check.agents_unknown else declared)


class _AnyName(dict):
    """The agents declared, when a file's agents could not be read: any name may be one of
    those, so no reference to an agent is reported unknown."""

    def __contains__(self, name: object) -> bool:
        return True


def _build_agent(check: _Checker, doc: Document, path: tuple, name: str, group: str, base: dict, own: dict,
                 hosts: dict[str, Host], slices: dict[str, Slice], offset: int) -> Agent | None:
    merged = {**base, **own}
    ok = True
    if not parsers.AGENT_NAME.match(name):
        check.add(doc, path, "an agent name becomes a unit name: letters, digits, '_', '.' and '-', at most 200")
        ok = False
    elif units.service(name) in units.OWN_UNITS:
        check.add(doc, path, f"{units.service(name)} is agentkit's own unit: name the agent otherwise")
        ok = False

    def get(key: str) -> Any:
        entry = merged.get(key)
        if entry is None or entry[0] is INVALID:  # reported already; the default avoids follow-on problems
            return _DEFAULTS[key]
        return entry[0]

    for key in ("host", "command", "port"):
        if key not in merged:
            check.add(doc, path, f"missing {key}: {AGENT_SETTINGS[key].help}")
            ok = False
        elif merged[key][0] is INVALID:
            ok = False
    if any(entry[0] is INVALID for entry in merged.values()):
        ok = False
    host = get("host")
    if ok and not check.known_host(merged["host"][1], merged["host"][2], host, hosts):
        ok = False
    essential = get("essential")
    if essential:
        for key in OPTIONAL_ONLY:
            if key in own:
                check.add(doc, own[key][2], f"only optional agents have {key} (this agent is essential)")
    elif "private_port" in own and get("activation") != "proxy":
        check.add(doc, own["private_port"][2], "private_port is only for activation: proxy")
    slice_name = get("slice") or ("essential" if essential else "optional")
    if get("slice") is not None and slice_name not in slices:
        check.add(merged["slice"][1], merged["slice"][2], f"unknown slice {slice_name!r} (slices: {some(slices)})")
        ok = False
    if not ok:
        return None

    port = get("port")
    activation = get("activation")
    if essential:
        # An essential agent binds its own port, unless it says native itself (a defaults: layer
        # speaks for the optional agents): then systemd holds the port, and the program adopts it.
        said = own.get("activation")
        activation = "native" if said is not None and said[0] == "native" else "none"
        if said is not None and said[0] == "proxy":
            check.add(doc, said[2], "an essential agent binds its own port, or adopts systemd's socket "
                      "(activation: native): proxy is for optional agents")
    private_port = None
    if activation == "proxy":
        private_port = get("private_port")
        if private_port is None:
            private_port = port + offset
            if private_port > 65535:
                check.add(doc, path + ("port",), f"proxy mode needs a private port: {port} + private_port_offset "
                          f"{offset} is above 65535; set private_port")
    service_type, ready = _readiness(check, doc, path, merged, own, get, activation)
    if activation == "native" and any(PORT_WORD in word for word in get("command")):
        check.add(doc, path + ("command",), f"a native agent adopts the socket's fd and binds no port, so "
                  f"{PORT_WORD} in its command would name the port the socket holds: use activation: proxy for a "
                  "program that listens on a port of its own")
    live = get("liveness")
    if live is not None and live.kind == "tcp" and activation == "native" and get("health_port") is None:
        check.add(doc, path + ("liveness",), "a native agent's port is its socket's, which accepts even when the "
                  "program hangs: tcp: true would say nothing (use {http: /path}, or give it a health_port)")
    if get("gpu_memory") is None:
        for key in ("gpu", "gpu_evict"):
            if key in own:
                check.add(doc, own[key][2], f"{key} goes with gpu_memory, which this agent does not set")
    restart = Restart(get("restart.policy"), get("restart.delay"), get("restart.burst"), get("restart.interval"))
    here = os.path.dirname(os.path.abspath(doc.file))  # ./prog is the manifest directory's
    command = _beside(get("command"), here)
    if ready.kind == "command":
        ready = replace(ready, command=_beside(ready.command, here))
    env = dict(hosts[host].environment)
    for layer in (base, own):
        if "environment" in layer:
            value, layer_doc, layer_path = layer["environment"]
            env.update(_resolve_environment(check, layer_doc, layer_path, value, hosts))
    return Agent(
        name=name, host=host, group=get("group") or group, essential=essential,
        description=get("description") or f"agentkit agent {name}",
        command=command, port=port, health_port=get("health_port"),
        depends_on=get("depends_on"), activation=activation, private_port=private_port,
        idle_stop=get("idle_stop"), service_type=service_type, ready=ready, start_timeout=get("start_timeout"),
        cold_start_slo=get("cold_start_slo"), liveness=get("liveness"), watchdog=get("watchdog"), restart=restart, memory_max=get("memory_max"), cpu_weight=get("cpu_weight"),
        gpu_memory=get("gpu_memory"), gpu=get("gpu"), gpu_evict="never" if essential else get("gpu_evict"),
        slice=slice_name, environment=tuple(env.items()), user=get("user"),
        working_directory=get("working_directory"), writable_paths=get("writable_paths"),
        sandbox=get("sandbox"), where=Location(doc.file, doc.line(path)),
    )


def _beside(command: tuple[str, ...], base: str) -> tuple[str, ...]:
    """A program written ./prog or ../prog, as an absolute path from the manifest directory."""
    if command[0].startswith(("./", "../")):
        return (os.path.normpath(os.path.join(base, command[0])),) + command[1:]
    return command


def _readiness(check: _Checker, doc: Document, path: tuple, merged: dict, own: dict, get: Callable[[str], Any],
               activation: str) -> tuple[str, Readiness]:
    """systemd's Type= and the agent's readiness, each said by one setting when the other is left out.

    Without `ready`, service_type: notify means ready: notify, and any other type means the port
    probe (the process running, for a native agent: its socket accepts before the agent runs).
    With `ready`, notify sets Type=notify, and any other probe an exec service, unless the agent
    itself insists on service_type: notify, which would wait for a READY=1 nobody sends."""
    service_type, ready = get("service_type"), get("ready")
    if ready is None:
        if service_type == "notify":
            return service_type, Readiness("notify")
        return service_type, Readiness("started" if activation == "native" else "port")
    if ready.kind == "notify":
        if "service_type" in own and service_type != "notify":
            check.add(doc, own["service_type"][2], f"ready: notify needs Type=notify, but service_type is "
                      f"{service_type}: leave service_type out")
        return "notify", ready
    if activation == "proxy" and ready.kind == "started":
        check.add(doc, path + ("ready",), "behind the proxy, started would let it connect before the program "
                  "listens, and clients would get an empty reply: use port (the default), {http: /path}, "
                  "{command: [argv]} or notify")
    if activation == "native" and ready.kind == "port":
        check.add(doc, path + ("ready",), "a native agent's port is its socket's, which accepts before "
                  "the agent runs: ready: port would say nothing (use notify, started, {http: /path} or "
                  "{command: [argv]}, or activation: proxy)")
    if service_type == "notify":
        if "service_type" in own:
            check.add(doc, own["service_type"][2], f"service_type: notify waits for READY=1, but ready is "
                      f"{ready.kind}: leave service_type out (or say ready: notify)")
        return ("exec" if service_type == "notify" else service_type), ready
    return service_type, ready


def _read_profiles(check: _Checker, doc: Document, fleet: dict, agents: dict[str, Agent],
                   declared: dict[str, Location]) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    groups: dict[str, list[str]] = {}
    for agent in agents.values():
        groups.setdefault(agent.group, []).append(agent.name)
    for profile_name, raw in check.mapping(doc, ("profiles",), fleet.get("profiles"), "the profiles").items():
        path = ("profiles", profile_name)
        if not parsers.LABEL.match(profile_name):
            check.add(doc, path, "a profile name is letters, digits, '.', '_' and '-'")
        data = check.mapping(doc, path, raw, "the profile (all:, agents:, groups:)")
        check.known_keys(doc, path, data, PROFILE_SETTINGS)
        everything = check.parse(doc, path + ("all",), data.get("all", False), parsers.boolean)
        chosen: set[str] = set()
        raw_agents = check.parse(doc, path + ("agents",), data.get("agents", []), parsers.names)
        for index, agent_name in enumerate(raw_agents if raw_agents is not INVALID else ()):
            where = path + ("agents", index)
            if agent_name not in declared:
                check.add(doc, where, f"unknown agent {agent_name!r}{did_you_mean(agent_name, declared)}")
            elif agent_name not in agents:
                continue  # declared, with problems of its own
            elif agents[agent_name].essential:
                check.add(doc, where, f"{agent_name} is essential: every profile has it")
            else:
                chosen.add(agent_name)
        raw_groups = check.parse(doc, path + ("groups",), data.get("groups", []), parsers.names)
        for index, group in enumerate(raw_groups if raw_groups is not INVALID else ()):
            if group not in groups:
                if not check.agents_unknown:
                    check.add(doc, path + ("groups", index), f"unknown group {group!r}{did_you_mean(group, groups)}")
            else:
                chosen.update(n for n in groups[group] if agents[n].optional)
        profiles[profile_name] = Profile(profile_name, everything is True, frozenset(chosen))
    return profiles
