"""The supervisord backend's renderer: supervisord.conf and activator.json.

Every rendered supervisord.conf is read back by supervisord's own parser
(supervisor.options.ServerOptions), so what is checked is what supervisord
would run: programs, priorities, argv (split with shlex like supervisord does
before exec), environment. The last tests start a real supervisord on a
rendered file and talk to it over its unix socket.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import signal
import socket as socketlib
import stat
import subprocess
import sys
import textwrap
import time
import xmlrpc.client
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentkit.programs import resolve as resolve_program
from agentkit import graph, manifest, units
from agentkit.errors import AgentkitError, ManifestError
from agentkit.router.command import router_command
from agentkit.backends.supervisord.render import (ACTIVATOR, command_value, environment_value, plan_supervisord,
                                  supervised_environment)

from conftest import REPO
from helpers import wait_for

BIN = "/opt/agentkit/bin"
STATE = "/var/lib/agentkit-test"
FLEETS = {"reference": REPO / "agents", "features": REPO / "tests" / "data" / "features"}
VENV_BIN = Path(sys.executable).parent


def _needed(what: str, reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: {reason}")
    pytest.skip(f"{what} is missing: {reason}")


# supervisord's own parser, run in a process of its own (python -I: the real
# supervisor package whatever the tests' sys.path holds). The state directory of
# the rendered files (/var/lib/agentkit-test) does not exist here: supervisord's
# checks that log directories exist are recorded instead of made.
PARSER = r"""
import json, socket, sys
try:
    from supervisor import datatypes, options
except ImportError as exc:
    print(json.dumps({"missing": str(exc)}))
    sys.exit(0)
checked = []
def recorded(kind):
    def check(value):
        checked.append([kind, value])
        return value
    return check
options.existing_dirpath = datatypes.existing_dirpath = recorded("parent of")
options.existing_directory = recorded("directory")
RESTART = {datatypes.RestartUnconditionally: "true", datatypes.RestartWhenExitUnexpected: "unexpected", False: "false"}
out = []
for path in sys.argv[1:]:
    del checked[:]
    opts = options.ServerOptions()
    opts.configfile = path
    try:
        opts.process_config(do_usage=False)
    except ValueError as exc:
        out.append({"error": str(exc)})
        continue
    section = opts.configroot.supervisord
    programs = {}
    for group in opts.process_group_configs:
        assert len(group.process_configs) == 1, group.name
        p = group.process_configs[0]
        programs[p.name] = dict(
            command=p.command, environment=p.environment, autostart=p.autostart, priority=p.priority,
            autorestart=RESTART[p.autorestart], exitcodes=p.exitcodes, startsecs=p.startsecs,
            startretries=p.startretries, stopsignal=p.stopsignal, stopwaitsecs=p.stopwaitsecs,
            stopasgroup=p.stopasgroup, killasgroup=p.killasgroup, stdout_logfile=p.stdout_logfile,
            redirect_stderr=p.redirect_stderr, directory=p.directory, uid=p.uid)
    out.append(dict(
        programs=programs, logfile=section.logfile, pidfile=section.pidfile, childlogdir=section.childlogdir,
        identifier=section.identifier, nodaemon=section.nodaemon, umask=section.umask,
        servers=[dict(unix=s["family"] == socket.AF_UNIX, file=s.get("file"), chmod=s.get("chmod"))
                 for s in section.server_configs],
        rpcinterfaces=[f[0] for f in section.rpcinterface_factories], checked=list(checked)))
print(json.dumps(out, default=lambda value: getattr(value, "__name__", repr(value))))  # Automatic and such
"""


@pytest.fixture
def parse(tmp_path):
    """Each config text as supervisord reads it; a ValueError for what supervisord refuses."""
    counter = iter(range(1_000_000))

    def parse_texts(*texts: str) -> list[dict]:
        paths = []
        for text in texts:
            path = tmp_path / f"supervisord-{next(counter)}.conf"
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        run = subprocess.run([sys.executable, "-I", "-c", PARSER, *paths], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        if isinstance(result, dict):
            _needed("supervisor", f"pip install supervisor (its parser checks every rendered file): {result}")
        for parsed in result:
            if "error" in parsed:
                raise ValueError(parsed["error"])
        return result

    def parse_text(text: str) -> dict:
        return parse_texts(text)[0]

    parse_text.many = parse_texts
    return parse_text


def programs_of(parsed: dict) -> dict:
    """program name -> its settings as supervisord read them (one process per program)."""
    return {name: SimpleNamespace(**settings) for name, settings in parsed["programs"].items()}


def one_program(text: str) -> str:
    return textwrap.dedent("""\
        [supervisord]
        logfile=/tmp/ignored.log
        [program:p]
        """) + text + "\n"


def write_manifest(root: Path, files: dict[str, str]) -> str:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return str(root)


def plan_files(m, host, profile=None, **kwargs) -> dict[str, str]:
    kwargs.setdefault("bin_dir", BIN)
    kwargs.setdefault("state_dir", STATE)
    return {f.path: f.text for f in plan_supervisord(m, host, profile, **kwargs)}


# --- escaping, each format on its own, read back by supervisord's parser --------

TRICKY_ARGV = ["/usr/bin/python3", "-u", "two words", "$HOME", "50%", "%(program_name)s", ";", "a ;b", "#x",
               "c #d", "it's", 'say "hi"', "back\\slash", "", "tab\there", "comma,=colon:", "ünïcode"]


def test_commands_survive_supervisords_expansion_comments_and_shlex(parse):
    argv = [word for word in TRICKY_ARGV if "\t" not in word]
    opts = parse(one_program(f"command={command_value(argv)}"))
    assert shlex.split(programs_of(opts)["p"].command) == argv


def test_a_command_word_with_a_control_character_is_refused():
    with pytest.raises(AgentkitError, match="control character"):
        command_value(["/bin/echo", "tab\there"])


ENV_VALUES = {"SPACES": "two words here", "PERCENT": "100% of %(ENV_HOME)s", "DOUBLE": 'say "hi" \\ bye',
              "SINGLE": "it's", "COMMA": "a=1,b=2", "EMPTY": "", "DOLLAR": "$HOME", "HASH": "a#b;c",
              "MIXED": '50% of "the" cap', "UNICODE": "ünïcode"}


def test_environment_survives_supervisords_expansion_comments_and_shlex(parse):
    text = environment_value(list(ENV_VALUES.items()))
    assert programs_of(parse(one_program(f"command=/bin/true\nenvironment={text}")))["p"].environment == ENV_VALUES


@pytest.mark.parametrize("value, why", [
    ("a ;b", "comment"), ("a #b", "comment"), ('"quoted"', "both ends"), ("'x", "both ends"),
    ('it\'s "x" ok', "not both"), ("new\nline", "control character"),
])
def test_environment_values_supervisord_would_mangle_are_refused(value, why):
    with pytest.raises(AgentkitError, match=why):
        environment_value([("NAME", value)])


# --- the reference fleet and the features fleet, read back by supervisord -------

def _check_against_manifest(m, host, opts, profile=None):
    """What every rendered supervisord.conf must say about the manifest's agents."""
    agents = [a for a in graph.selected(m, profile) if a.host == host]
    programs = programs_of(opts)
    router = m.router if m.router is not None and m.router.host == host else None
    assert set(programs) == {a.name for a in agents} | {ACTIVATOR, units.STATUS_PROGRAM} | (
        {units.ROUTER_PROGRAM} if router else set())
    if router is not None:
        # The router's argv is router_command()'s, its key file passed by name (no LoadCredential= here).
        program = programs[units.ROUTER_PROGRAM]
        assert program.autostart and program.autorestart == "true" and program.priority == 3
        assert (program.startsecs, program.startretries) == (3, 3)
        assert shlex.split(program.command) == [
            word for group in router_command(router, BIN, key_file=router.api_key_file) for word in group]
        assert program.stdout_logfile == f"{STATE}/logs/{units.ROUTER_PROGRAM}.log" and program.redirect_stderr
        assert program.stopasgroup and program.killasgroup and not program.environment  # the key is in no environment
    status = programs[units.STATUS_PROGRAM]
    assert status.autostart and status.autorestart
    words = shlex.split(status.command)
    assert words[:6] == [f"{BIN}/agentkit-status", "--backend", "supervisord", "--state-dir", STATE, "--host"]
    listens = [words[i + 1] for i, word in enumerate(words) if word == "--listen"]
    assert words[6] == host and listens and all(w.endswith(f":{m.hosts[host].status_port}") for w in listens)
    activator = programs[ACTIVATOR]
    assert activator.autostart and activator.priority == 1
    assert shlex.split(activator.command) == [f"{BIN}/agentkit-activator", "--config", f"{STATE}/activator.json"]
    assert activator.stdout_logfile == f"{STATE}/logs/{ACTIVATOR}.log"
    for agent in agents:
        program = programs[agent.name]
        assert program.autostart is agent.essential, agent.name
        assert shlex.split(program.command) == list(resolve_program(agent.command, BIN)), agent.name
        assert program.priority > activator.priority
        for dep in agent.depends_on:
            if dep in programs:
                assert programs[dep].priority < program.priority, f"{dep} must start before {agent.name}"
        env = program.environment
        assert env == dict(supervised_environment(m, agent, env.get("AGENTKIT_BIND") and
                                                  int(env["AGENTKIT_BIND"].rsplit(":", 1)[1])))
        assert dict(agent.environment).items() <= env.items()
        assert env["AGENTKIT_AGENT"] == agent.name and env["AGENTKIT_PORT"] == str(agent.port)
        if agent.essential:
            assert env["AGENTKIT_ACTIVATION"] == "none" and "AGENTKIT_BIND" not in env
        else:
            assert env["AGENTKIT_ACTIVATION"] == "proxy"
            assert env["AGENTKIT_BIND"].startswith("127.0.0.1:")
            assert "AGENTKIT_IDLE_STOP" not in env
        assert program.startsecs == 1 and program.startretries == agent.restart.burst
        assert program.stopasgroup and program.killasgroup and program.stopsignal == signal.SIGTERM
        assert program.stopwaitsecs == -(-agent.start_timeout // 1_000_000)
        assert program.stdout_logfile == f"{STATE}/logs/{agent.name}.log" and program.redirect_stderr
        assert program.directory == agent.working_directory
        assert program.uid is None  # user= is never rendered: a per-user supervisord cannot switch users
    (server,) = opts["servers"]
    assert server["unix"] and server["file"] == f"{STATE}/supervisor.sock"
    assert server["chmod"] == 0o700
    section = SimpleNamespace(**opts)
    assert section.logfile == f"{STATE}/logs/supervisord.log" and section.pidfile == f"{STATE}/supervisord.pid"
    assert section.childlogdir == f"{STATE}/logs" and section.nodaemon is False
    assert section.identifier == f"agentkit-{m.name}-{host}"
    assert section.umask == 0o077
    assert section.rpcinterfaces == ["supervisor"]


@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_every_host_renders_a_config_supervisord_accepts(fleet, parse):
    m = manifest.load(str(FLEETS[fleet]))
    for host in m.hosts:
        files = plan_files(m, host)
        assert sorted(files) == ["activator.json", "supervisord.conf"]
        assert files["supervisord.conf"].startswith("# Generated by agentkit")
        opts = parse(files["supervisord.conf"])
        _check_against_manifest(m, host, opts)
        assert ["directory", f"{STATE}/logs"] in opts["checked"]


def test_the_reference_fleet_has_77_programs_and_the_activators_53_agents(parse):
    m = manifest.load(str(FLEETS["reference"]))
    counts = {}
    for host in m.hosts:
        files = plan_files(m, host)
        programs = programs_of(parse(files["supervisord.conf"]))
        activator = json.loads(files["activator.json"])
        # Less the activator, the status service and (on mainpc) the router: the agents.
        ours = 3 if host == m.router.host else 2
        assert (units.ROUTER_PROGRAM in programs) is (host == m.router.host)
        counts[host] = (len(programs) - ours, sum(p.autostart for p in programs.values()) - ours,
                        len(activator["agents"]))
    assert counts == {"mainpc": (55, 16, 39), "pc2": (22, 8, 14)}
    assert sum(c[0] for c in counts.values()) == 77 and sum(c[2] for c in counts.values()) == 53


def test_a_profile_keeps_the_essentials_and_the_chosen_agents_with_their_dependencies(parse):
    m = manifest.load(str(FLEETS["reference"]))
    optional = {}
    for host in m.hosts:
        files = plan_files(m, host, "vision")
        opts = parse(files["supervisord.conf"])
        _check_against_manifest(m, host, opts, "vision")
        optional[host] = sorted(name for name, p in programs_of(opts).items() if not p.autostart)
        assert [a["name"] for a in json.loads(files["activator.json"])["agents"]] == optional[host]
    # VisionProcessingAgent needs CacheManager, an optional agent outside the profile's group.
    assert sorted(sum(optional.values(), [])) == ["CacheManager", "FaceRecognitionAgent", "VisionProcessingAgent"]


def test_the_features_fleet_keeps_quotes_percents_and_odd_argv(parse):
    m = manifest.load(str(FLEETS["features"]))
    text = plan_files(m, "alpha")["supervisord.conf"]
    programs = programs_of(parse(text))
    native = programs["Native"].environment
    assert native["QUOTED"] == 'say "hi" \\ bye' and native["PERCENT"] == "100%" and native["MODEL"] == "llama 13b"
    assert native["DOLLAR"] == "$HOME" and native["SHARED"] == "from the host"
    assert native["AGENTKIT_BIND"] == "127.0.0.1:25002"  # native: port + the default offset
    assert programs["Proxied"].environment["AGENTKIT_BIND"] == "127.0.0.1:25001"
    assert programs["Proxied"].environment["AGENTKIT_DEPENDS"] == "Base=127.0.0.1:5000,Native=127.0.0.1:5002"
    assert shlex.split(programs["Legacy"].command) == [
        "/usr/bin/python3", "-u", "/opt/legacy/agent.py", "--name", "two words", "$HOME", "50%", ";"]
    assert programs["Legacy"].directory == "/opt/legacy"
    assert "# user=legacy is not applied" in text.split("[program:Legacy]")[1].split("[program:")[0]
    # on-abnormal: only a death by a signal restarts
    assert programs["Legacy"].exitcodes == list(range(256))
    assert programs["Base"].exitcodes == [0]
    beta = programs_of(parse(plan_files(m, "beta")["supervisord.conf"]))
    assert beta["Remote"].environment["AGENTKIT_BIND"] == "127.0.0.1:27000"  # its own private_port
    assert beta["Remote"].environment["AGENTKIT_DEPENDS"] == "Native=10.0.0.1:5002"


def test_activator_json_lists_each_optional_agent_with_its_addresses_and_times():
    m = manifest.load(str(FLEETS["features"]))
    text = plan_files(m, "alpha")["activator.json"]
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert json.loads(text) == {
        "fleet": "features", "host": "alpha", "supervisor": f"unix://{STATE}/supervisor.sock",
        "control": f"{STATE}/activator.sock",
        "agents": [
            {"name": "Legacy", "program": "Legacy", "listen": ["0.0.0.0", 5003], "target": ["127.0.0.1", 25003],
             "depends_on": [], "idle_stop": 300.0, "start_timeout": 30.0,
             "ready": ["command", "/usr/bin/test", "-e", "/opt/legacy/ready"]},
            {"name": "Native", "program": "Native", "listen": ["0.0.0.0", 5002], "target": ["127.0.0.1", 25002],
             "depends_on": [], "idle_stop": 90.0, "start_timeout": 30.0, "ready": ["port"]},
            {"name": "Proxied", "program": "Proxied", "listen": ["0.0.0.0", 5001],
             "target": ["127.0.0.1", 25001], "depends_on": ["Native"], "idle_stop": 45.0, "start_timeout": 30.0,
             "ready": ["http", "/health"]},
        ],
        "gpu": ["--gpu", "0=auto", "--tenant", "Native=0:6442450944:normal"]}
    for entry in json.loads(text)["agents"]:
        assert isinstance(entry["idle_stop"], float) and isinstance(entry["start_timeout"], float)


def test_activator_json_of_the_reference_fleet_matches_the_programs(parse):
    m = manifest.load(str(FLEETS["reference"]))
    for host in m.hosts:
        files = plan_files(m, host)
        programs = programs_of(parse(files["supervisord.conf"]))
        entries = json.loads(files["activator.json"])["agents"]
        assert [e["name"] for e in entries] == sorted(n for n, p in programs.items() if not p.autostart)
        for entry in entries:
            agent = m.agents[entry["name"]]
            assert entry["listen"] == ["0.0.0.0", agent.port]
            assert programs[entry["program"]].environment["AGENTKIT_BIND"] == "%s:%d" % tuple(entry["target"])
            assert entry["idle_stop"] == agent.idle_stop / 1e6
            priorities = [programs[name].priority for name in entry["depends_on"]]
            assert priorities == sorted(priorities) and all(p < programs[agent.name].priority for p in priorities)
            assert set(entry["depends_on"]) >= {d for d in agent.depends_on
                                                if m.agents[d].host == host and m.agents[d].optional}


SMALL_FLEET = """\
name: small
private_port_offset: 1000
hosts:
  here: {address: here.example}
  there: {address: there.example}
defaults:
  command: [agentkit-agent]
  service_type: notify
"""


def test_activator_depends_on_is_transitive_on_the_host_only_in_start_order(tmp_path):
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET, "here.yaml": """\
        host: here
        agents:
          Core: {essential: true, port: 5000}
          A: {port: 5001, depends_on: [B, Far, Core]}
          B: {port: 5002, depends_on: [C, Core]}
          C: {port: 5003}
          D: {port: 5004}
          Alone: {port: 5005}
        """, "there.yaml": """\
        host: there
        agents:
          Far: {port: 6000, depends_on: [D]}
        """})
    m = manifest.load(root)
    entries = {e["name"]: e for e in json.loads(plan_files(m, "here")["activator.json"])["agents"]}
    assert list(entries) == ["A", "Alone", "B", "C", "D"]
    # D is needed by Far, on the other host, which reaches it through the activator by address
    assert entries["A"]["depends_on"] == ["C", "B"]
    assert entries["B"]["depends_on"] == ["C"] and entries["C"]["depends_on"] == []
    # the fleet's private_port_offset, read from fleet.yaml
    assert entries["A"]["target"] == ["127.0.0.1", 6001]


def test_restart_policies_map_to_autorestart_and_exit_codes(tmp_path, parse):
    policies = ["always", "no", "on-failure", "on-abnormal", "on-abort", "on-watchdog", "on-success"]
    agents = "".join(f"  E{i}: {{essential: true, port: {5000 + i}, restart: {{policy: '{p}'}}}}\n"
                     for i, p in enumerate(policies))
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET,
                                                "here.yaml": "host: here\nagents:\n" + agents})
    programs = programs_of(parse(plan_files(manifest.load(root), "here")["supervisord.conf"]))
    got = {p: (programs[f"E{i}"].autorestart, programs[f"E{i}"].exitcodes) for i, p in enumerate(policies)}
    assert got == {
        "always": ("true", [0]),
        "no": ("false", [0]),
        "on-watchdog": ("false", [0]),
        "on-failure": ("unexpected", [0]),
        "on-abnormal": ("unexpected", list(range(256))),
        "on-abort": ("unexpected", list(range(256))),
        "on-success": ("unexpected", list(range(1, 256))),
    }


def test_a_value_with_percent_quotes_and_spaces_round_trips(tmp_path, parse):
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET, "here.yaml": """\
        host: here
        agents:
          Odd:
            essential: true
            port: 5000
            working_directory: /srv/odd100%
            command: [/usr/bin/env, "50% of \\"the\\" cap", "x ;y"]
            environment: {ODD: '50% of "the" cap, maybe = more', ALSO: "it's 100%"}
        """})
    programs = programs_of(parse(plan_files(manifest.load(root), "here")["supervisord.conf"]))
    odd = programs["Odd"]
    assert odd.environment["ODD"] == '50% of "the" cap, maybe = more'
    assert odd.environment["ALSO"] == "it's 100%"
    assert shlex.split(odd.command) == ["/usr/bin/env", '50% of "the" cap', "x ;y"]
    assert odd.directory == "/srv/odd100%"


def test_an_environment_value_supervisord_cannot_hold_is_named(tmp_path):
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET, "here.yaml": """\
        host: here
        agents:
          Odd: {essential: true, port: 5000, environment: {NOTE: "call me ;later"}}
        """})
    # validate says so, at the variable's line, before any backend is chosen
    with pytest.raises(ManifestError) as caught:
        manifest.load(root)
    assert [str(p) for p in caught.value.problems] == [
        f"{root}/here.yaml:3: agents.Odd.environment.NOTE: NOTE='call me ;later' cannot be written to "
        "supervisord.conf: its parser takes ';' or '#' after white space as the start of a comment"]


def test_a_native_agents_private_port_that_clashes_is_reported(tmp_path):
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET, "here.yaml": """\
        host: here
        agents:
          Lazy: {port: 5000}
          Busy: {essential: true, port: 6000}
        """})
    with pytest.raises(ManifestError) as caught:
        manifest.load(root)
    assert [str(p) for p in caught.value.problems] == [
        f"{root}/here.yaml:3: agents.Lazy.port: under supervisord it listens on 127.0.0.1:6000 (port 5000 + "
        "private_port_offset 1000), which is also used on here by Busy.port (change private_port_offset, or use "
        "activation: proxy with a private_port)"]


def test_an_agent_named_like_the_activator_is_refused(tmp_path):
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET, "here.yaml": """\
        host: here
        agents:
          agentkit-activator: {essential: true, port: 5000}
        """})
    with pytest.raises(ManifestError, match=r"here.yaml:3: agents.agentkit-activator: under supervisord the "
                                            "program name agentkit-activator is agentkit's own activator"):
        manifest.load(root)


def test_an_agent_named_like_the_router_is_refused_on_the_routers_host_only(tmp_path):
    router = """\
        router:
          host: here
          local: {url: "http://127.0.0.1:8080/v1", model: small}
          cloud: {url: "https://cloud.example/v1", model: large}
        """
    agents = """\
        host: HOST
        agents:
          agentkit-router: {essential: true, port: 5000}
        """
    root = write_manifest(tmp_path / "here", {"fleet.yaml": SMALL_FLEET + textwrap.dedent(router),
                                               "here.yaml": agents.replace("HOST", "here")})
    with pytest.raises(ManifestError, match=r"here.yaml:3: agents.agentkit-router: under supervisord the "
                                            r"program name agentkit-router is the router's \(router.host: here\)"):
        manifest.load(root)
    root = write_manifest(tmp_path / "there", {"fleet.yaml": SMALL_FLEET + textwrap.dedent(router),
                                                "there.yaml": agents.replace("HOST", "there")})
    assert "agentkit-router" in manifest.load(root).agents


def test_a_private_port_on_the_routers_port_is_refused(tmp_path):
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET + textwrap.dedent("""\
        router:
          host: here
          port: 6000
          local: {url: "http://127.0.0.1:8080/v1", model: small}
          cloud: {url: "https://cloud.example/v1", model: large}
        """), "here.yaml": """\
        host: here
        agents:
          Lazy: {port: 5000}
        """})
    with pytest.raises(ManifestError) as caught:
        manifest.load(root)
    assert [str(p) for p in caught.value.problems] == [
        f"{root}/here.yaml:3: agents.Lazy.port: under supervisord it listens on 127.0.0.1:6000 (port 5000 + "
        "private_port_offset 1000), which is also used on here by the router (router.port) (change "
        "private_port_offset, or use activation: proxy with a private_port)"]


@pytest.mark.parametrize("state_dir, message", [
    ("var/lib/agentkit", "must be an absolute path"), ("", "must be an absolute path"),
    ("/srv/100%", "may not hold '%'"), ("/srv/a ;b", "start of a comment"),
])
def test_a_bad_state_dir_is_refused(state_dir, message):
    m = manifest.load(str(FLEETS["features"]))
    with pytest.raises(AgentkitError, match=message):
        plan_supervisord(m, "alpha", bin_dir=BIN, state_dir=state_dir)


def test_unknown_host_and_profile_are_refused():
    m = manifest.load(str(FLEETS["features"]))
    with pytest.raises(AgentkitError, match="unknown host 'gamma'"):
        plan_supervisord(m, "gamma", bin_dir=BIN, state_dir=STATE)
    with pytest.raises(AgentkitError, match="unknown profile 'huge'"):
        plan_supervisord(m, "alpha", "huge", bin_dir=BIN, state_dir=STATE)


def test_rendering_is_deterministic_and_sorted():
    m = manifest.load(str(FLEETS["reference"]))
    first = plan_supervisord(m, "mainpc", bin_dir=BIN, state_dir=STATE)
    again = plan_supervisord(manifest.load(str(FLEETS["reference"])), "mainpc", bin_dir=BIN, state_dir=STATE + "/")
    assert first == again
    assert [f.path for f in first] == sorted(f.path for f in first)


def test_a_user_template_directory_replaces_the_packaged_template(tmp_path):
    (tmp_path / "supervisord.conf.j2").write_text("# mine: {{ host }} {{ programs | length }}\n")
    m = manifest.load(str(FLEETS["features"]))
    files = plan_files(m, "alpha", templates=str(tmp_path))
    assert files["supervisord.conf"] == "# mine: alpha 4\n"


# --- a real supervisord ---------------------------------------------------------

def _program(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            _needed(name, "pip install supervisor (the supervisord backend's tests run a real one)")
        path = Path(found)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"  # a zombie is gone, only not reaped yet by whoever adopted it


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket (what supervisorctl and the activator use)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def make_connection(self, host):
        path = self.path

        class Connection(http.client.HTTPConnection):
            def connect(self):
                self.sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
                self.sock.settimeout(10)
                self.sock.connect(path)

        return Connection("localhost")


class Supervisord:
    """A real supervisord on a rendered config; everything it started is killed in stop()."""

    def __init__(self, tmp_path: Path, root: str, host: str, state_dir: Path, bin_dir: Path):
        self.supervisord, self.supervisorctl = _program("supervisord"), _program("supervisorctl")
        self.state_dir = state_dir
        (state_dir / "logs").mkdir(parents=True)
        self.m = manifest.load(root)
        for item in plan_supervisord(self.m, host, bin_dir=str(bin_dir), state_dir=str(state_dir)):
            (state_dir / item.path).write_text(item.text)
        self.conf = str(state_dir / "supervisord.conf")
        self.socket = state_dir / "supervisor.sock"
        self.pid = None
        self.pidfile = state_dir / "supervisord.pid"
        self.children: set[int] = set()
        self.out = open(tmp_path / "supervisord.out", "w")

    def start(self):
        # nodaemon=false: the command returns once the daemon has forked off
        run = subprocess.run([self.supervisord, "-c", self.conf], timeout=30, cwd=self.state_dir,
                             stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)
        self.out.flush()
        assert run.returncode == 0, f"supervisord refused to start: {Path(self.out.name).read_text()}{self.log()}"
        pidfile = self.pidfile
        self.pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "supervisord wrote no pid file", timeout=10))
        self.rpc = xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=UnixTransport(str(self.socket)))

    def states(self) -> dict[str, str]:
        try:
            infos = self.rpc.supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Fault):
            return {}
        self.children |= {info["pid"] for info in infos if info["pid"]}
        return {info["name"]: info["statename"] for info in infos}

    def wait_for(self, wanted: dict[str, str], timeout: float = 20):
        def reached():
            states = self.states()
            return all(states.get(name) == state for name, state in wanted.items()) and states
        try:
            return wait_for(reached, "supervisord's programs did not reach " + repr(wanted), timeout=timeout)
        except pytest.fail.Exception:
            raise AssertionError(f"states: {self.states()}; log:\n{self.log()}") from None

    def ctl(self, *args):
        return subprocess.run([self.supervisorctl, "-c", self.conf, *args], capture_output=True, text=True,
                              timeout=30)

    def log(self) -> str:
        path = self.state_dir / "logs" / "supervisord.log"
        return path.read_text() if path.exists() else "(no log)"

    def stop(self):
        """Kill whatever is still running (the test's own shutdown came first)."""
        try:
            if self.pid is None and self.pidfile.exists():  # started, but the test failed before it knew
                self.pid = int(self.pidfile.read_text().strip() or 0) or None
            if self.pid is not None and _alive(self.pid):
                os.kill(self.pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while _alive(self.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive(self.pid):
                    os.kill(self.pid, signal.SIGKILL)
            for pid in self.children:
                if _alive(pid):
                    os.killpg(pid, signal.SIGKILL)  # supervisord gives every program its own group
        finally:
            self.out.close()


@pytest.fixture
def real_supervisord(tmp_path):
    started = []

    def make(root: str, host: str) -> Supervisord:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        # A stand-in for agentkit-activator: a program that stays up, as the real one does.
        activator = bin_dir / ACTIVATOR
        activator.write_text("#!/bin/sh\nexec /bin/sleep 60\n")
        activator.chmod(0o755)
        sup = Supervisord(tmp_path, root, host, tmp_path / "state", bin_dir)
        started.append(sup)
        return sup

    yield make
    for sup in started:
        sup.stop()


def _shutdown(sup: Supervisord):
    result = sup.ctl("shutdown")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: not _alive(sup.pid), "supervisord still runs after supervisorctl shutdown", timeout=15)
    left = [pid for pid in sup.children if _alive(pid)]
    assert not left, f"programs left behind: {left}"
    assert not sup.socket.exists()


def test_a_real_supervisord_starts_essentials_and_leaves_optional_agents_to_the_activator(tmp_path,
                                                                                        real_supervisord):
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET, "here.yaml": """\
        host: here
        agents:
          Sleeper: {essential: true, port: 5000, command: [/bin/sleep, "60"]}
          Printer:
            essential: true
            port: 5001
            depends_on: [Sleeper]
            command: [/bin/sh, -c, 'env > "$0.env"; printf "%s\\n" "$@" > "$0.argv"; exec /bin/sleep 60',
                      ARGV_FILE, "two words", "50%", "x ;y", "it's", '"q"']
            environment: {ODD: '50% of "the" cap, maybe = more'}
          Lazy: {port: 5002, command: [/bin/sleep, "60"]}
        """})
    argv_file = tmp_path / "printer"
    (Path(root) / "here.yaml").write_text((Path(root) / "here.yaml").read_text().replace("ARGV_FILE", str(argv_file)))
    sup = real_supervisord(root, "here")
    sup.start()
    states = sup.wait_for({"Sleeper": "RUNNING", "Printer": "RUNNING", ACTIVATOR: "RUNNING"})
    assert states["Lazy"] == "STOPPED"
    assert stat.S_IMODE(os.stat(sup.socket).st_mode) == 0o700
    # umask=077 holds from daemonizing on: the agents' logs (supervisord's own log is opened before)
    assert stat.S_IMODE(os.stat(sup.state_dir / "logs" / "Printer.log").st_mode) == 0o600
    # what the program really got: its argv and its environment
    wait_for(lambda: Path(f"{argv_file}.env").exists(), "the printer wrote no environment", timeout=10)
    assert Path(f"{argv_file}.argv").read_text().splitlines() == ["two words", "50%", "x ;y", "it's", '"q"']
    env = dict(line.split("=", 1) for line in Path(f"{argv_file}.env").read_text().splitlines() if "=" in line)
    assert env["ODD"] == '50% of "the" cap, maybe = more'
    assert env["AGENTKIT_AGENT"] == "Printer" and env["AGENTKIT_ACTIVATION"] == "none"
    assert env["AGENTKIT_DEPENDS"] == "Sleeper=127.0.0.1:5000"
    # the activator's way to wake an optional agent
    assert sup.rpc.supervisor.startProcess("Lazy", True)
    assert sup.wait_for({"Lazy": "RUNNING"})
    _shutdown(sup)


def test_the_reference_agent_runs_under_supervisord_in_both_modes(tmp_path, real_supervisord):
    zmq = pytest.importorskip("zmq")
    agent = VENV_BIN / "agentkit-agent"
    if not agent.exists():
        _needed(str(agent), "pip install -e . (the reference agent's console script)")
    def free_port():
        with socketlib.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    core, lazy, private = free_port(), free_port(), free_port()
    root = write_manifest(tmp_path / "agents", {"fleet.yaml": SMALL_FLEET, "here.yaml": f"""\
        host: here
        defaults:
          command: [{agent}]
        agents:
          Core: {{essential: true, port: {core}}}
          Lazy: {{port: {lazy}, activation: proxy, private_port: {private}, depends_on: [Core]}}
        """})
    sup = real_supervisord(root, "here")
    sup.start()
    ctx = zmq.Context()
    try:
        def ask(port, message):
            req = ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            try:
                req.connect(f"tcp://127.0.0.1:{port}")
                req.send(json.dumps(message).encode())
                assert req.poll(15_000, zmq.POLLIN), f"no answer on port {port}"
                return json.loads(req.recv())
            finally:
                req.close()

        states = sup.wait_for({"Core": "RUNNING"})
        assert states["Lazy"] == "STOPPED"
        assert ask(core, {"action": "ping"})["agent"] == "Core"  # activation none, on its own port
        assert sup.rpc.supervisor.startProcess("Lazy", True)
        reply = ask(private, {"action": "chain"})  # proxy mode on the private port, then its dependency
        assert reply["ok"] and reply["agent"] == "Lazy", reply
        assert [dep["agent"] for dep in reply["deps"]] == ["Core"], reply
    finally:
        ctx.destroy(linger=0)
    _shutdown(sup)
