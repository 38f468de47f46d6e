"""Every kind of problem the manifest loader reports, as the exact line the user sees.

Each test writes a small manifest into tmp_path/agents (the working directory is
tmp_path, so problems read "agents/<file>.yaml:LINE: key.path: message") and
compares str(problem) for every problem of the ManifestError.

The last section holds the loader bugs found while these tests were written;
they pin the fixed behaviour.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentkit import manifest
from agentkit.cli import cli, main
from agentkit.errors import ManifestError

REFERENCE = Path(__file__).resolve().parent.parent / "agents"

# Two hosts, nothing else: every agent setting takes its built-in default.
FLEET = "hosts:\n  alpha: {}\n  beta: {}\n"


def fleet(extra: str) -> str:
    """FLEET (3 lines) followed by `extra` (dedented): extra's first line is line 4."""
    return FLEET + textwrap.dedent(extra)

SUMMARY_ONE = "agentkit: 1 problem in the manifest"  # validate writes nothing: it does not say so


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path as the working directory, so problem lines start with 'agents/'."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_manifest(workdir: Path, files: dict[str, str] | None = None, fleet: str | None = FLEET) -> str:
    """Write agents/fleet.yaml (unless fleet is None) and agents/<name> for each of files
    (texts are dedented); return the manifest directory as the loader should see it."""
    root = workdir / "agents"
    root.mkdir()
    everything = dict(files or {})
    if fleet is not None:
        everything = {"fleet.yaml": fleet, **everything}
    for name, text in everything.items():
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return "agents"


def problems_in(root: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        manifest.load(root)
    return [str(problem) for problem in caught.value.problems]


@pytest.fixture
def problems(workdir):
    """problems(files, fleet=FLEET) -> the exact problem lines of that manifest."""
    def check(files: dict[str, str] | None = None, fleet: str | None = FLEET) -> list[str]:
        return problems_in(write_manifest(workdir, files, fleet))
    return check


def group(agents: str, head: str = "host: alpha\ndefaults:\n  command: [run]\n") -> str:
    """A group file: `head` (4 lines with 'agents:', so the first agent is on line 5)
    then the agents, indented under agents:."""
    return head + "agents:\n" + textwrap.indent(textwrap.dedent(agents), "  ")


# --- YAML itself ---------------------------------------------------------------------------------

def test_yaml_syntax_error_names_the_line_where_parsing_failed(problems):
    assert problems({"g.yaml": """\
        agents:
          A: {port: 1
          B: 2
        """}) == ["agents/g.yaml:3: invalid YAML: while parsing a flow mapping that starts at line 2, did not find expected ',' or '}'"]


def test_yaml_bad_indentation_names_its_line(problems):
    assert problems({"g.yaml": """\
        agents:
          A:
            port: 1
           bad: [
        """}) == ["agents/g.yaml:4: invalid YAML: while parsing a block mapping that starts at line 2, did not find expected key"]


def test_duplicate_key_in_one_mapping_names_both_lines(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          port: 2
        """)}) == ["agents/g.yaml:7: agents.A.port: duplicate key (first at line 6)"]


def test_duplicate_top_level_key_in_fleet_file(problems):
    assert problems(fleet="""\
        hosts:
          alpha: {}
        name: one
        name: two
        """) == ["agents/fleet.yaml:4: name: duplicate key (first at line 3)"]


def test_yaml_merge_key_is_refused(problems):
    assert problems({"g.yaml": group("""\
        A:
          <<: {port: 1}
          port: 2
        """)}) == ["agents/g.yaml:6: agents.A: '<<' merge keys are not supported; use defaults:"]


# --- unknown keys, with and without a suggestion ----------------------------------------------

def test_unknown_top_level_keys_in_fleet_file(problems):
    assert problems(fleet=fleet("""\
        profile: {}
        zzz: 1
        """)) == [
        "agents/fleet.yaml:4: profile: unknown key (did you mean 'profiles'?)",
        "agents/fleet.yaml:5: zzz: unknown key (known: name, hosts, defaults, slices, profiles, "
        "default_profile, private_port_offset, router)",
    ]


def test_unknown_top_level_keys_in_group_file(problems):
    assert problems({"g.yaml": """\
        hots: alpha
        zzz: 1
        """}) == [
        "agents/g.yaml:1: hots: unknown key (did you mean 'host'?)",
        "agents/g.yaml:2: zzz: unknown key (known: group, host, defaults, agents)",
    ]


def test_unknown_keys_in_an_agent(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          prot: 2
          colour: red
        """)}) == [
        "agents/g.yaml:7: agents.A.prot: unknown key (did you mean 'port'?)",
        "agents/g.yaml:8: agents.A.colour: unknown key (known: host, essential, group, description, command, "
        "port, health_port, depends_on, activation, private_port, idle_stop, service_type, ready, liveness, "
        "start_timeout, cold_start_slo, watchdog, restart, memory_max, cpu_weight, gpu_memory, gpu, gpu_evict, slice, environment, user, working_directory, "
        "writable_paths, sandbox)",
    ]


def test_unknown_keys_in_restart(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          restart:
            brust: 3
            foo: 1
        """)}) == [
        "agents/g.yaml:8: agents.A.restart.brust: unknown key (did you mean 'burst'?)",
        "agents/g.yaml:9: agents.A.restart.foo: unknown key (known: policy, delay, burst, interval)",
    ]


def test_unknown_keys_in_defaults(problems):
    assert problems(fleet=fleet("""\
        defaults:
          comand: [run]
        """)) == ["agents/fleet.yaml:5: defaults.comand: unknown key (did you mean 'command'?)"]


def test_unknown_keys_in_a_host(problems):
    assert problems(fleet="""\
        hosts:
          alpha:
            adress: 10.0.0.1
            zzz: 1
        """) == [
        "agents/fleet.yaml:3: hosts.alpha.adress: unknown key (did you mean 'address'?)",
        "agents/fleet.yaml:4: hosts.alpha.zzz: unknown key (known: address, environment, ports, status, gpus)",
    ]


def test_unknown_keys_in_a_slice(problems):
    assert problems(fleet=fleet("""\
        slices:
          gpu:
            cpu_weigth: 3
            zzz: 1
        """)) == [
        "agents/fleet.yaml:6: slices.gpu.cpu_weigth: unknown key (did you mean 'cpu_weight'?)",
        "agents/fleet.yaml:7: slices.gpu.zzz: unknown key (known: description, memory_max, cpu_weight)",
    ]


def test_unknown_keys_in_a_profile(problems):
    assert problems(fleet=fleet("""\
        profiles:
          p:
            group: [x]
            zzz: 1
        """)) == [
        "agents/fleet.yaml:6: profiles.p.group: unknown key (did you mean 'groups'?)",
        "agents/fleet.yaml:7: profiles.p.zzz: unknown key (known: all, agents, groups)",
    ]


# --- one agent setting of each kind, wrong ---------------------------------------------------------

def test_port_out_of_range_zero_string_and_bool(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 70000
        B:
          port: '8080'
        C:
          port: 0
        D:
          port: true
        E:
          port: 10
          health_port: -1
        """)}) == [
        "agents/g.yaml:6: agents.A.port: expected a port number from 1 to 65535, got 70000",
        "agents/g.yaml:8: agents.B.port: expected a port number from 1 to 65535, got '8080'",
        "agents/g.yaml:10: agents.C.port: expected a port number from 1 to 65535, got 0",
        "agents/g.yaml:12: agents.D.port: expected a port number from 1 to 65535, got True",
        "agents/g.yaml:15: agents.E.health_port: expected a port number from 1 to 65535, got -1",
    ]


def test_bool_settings_refuse_text_and_numbers(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          essential: 'true'
        B:
          port: 2
          sandbox: 1
        """)}) == [
        "agents/g.yaml:7: agents.A.essential: expected true or false, got 'true'",
        "agents/g.yaml:10: agents.B.sandbox: expected true or false, got 1",
    ]


def test_time_spans_unknown_unit_zero_negative_nonsense_and_bool(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          start_timeout: 5 parsecs
        B:
          port: 2
          start_timeout: 0
        C:
          port: 3
          idle_stop: -5
        D:
          port: 4
          watchdog: soon
        E:
          port: 5
          restart:
            delay: true
        """)}) == [
        "agents/g.yaml:7: agents.A.start_timeout: '5 parsecs': unknown time unit 'parsecs' "
        "(use us, ms, s, min, h, d or w)",
        "agents/g.yaml:10: agents.B.start_timeout: a time span must be above zero, got 0",
        "agents/g.yaml:13: agents.C.idle_stop: a time span cannot be negative, got -5",
        "agents/g.yaml:16: agents.D.watchdog: 'soon' is not a time span systemd understands (try '30s' or '5min')",
        "agents/g.yaml:20: agents.E.restart.delay: expected a time span like '30s' or '5min', got True",
    ]


def test_sizes_nonsense_percentages_and_zero(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          memory_max: 4 gigs
        B:
          port: 2
          memory_max: 150%
        C:
          port: 3
          gpu_memory: 80%
        D:
          port: 4
          memory_max: 0
        """)}) == [
        "agents/g.yaml:7: agents.A.memory_max: '4 gigs' is not a size systemd understands "
        "(try '512M' or '4G', a percentage like '80%' or 'infinity')",
        "agents/g.yaml:10: agents.B.memory_max: '150%': a percentage must be above 0 and at most 100",
        "agents/g.yaml:13: agents.C.gpu_memory: '80%' is not a size systemd understands (try '512M' or '4G')",
        "agents/g.yaml:16: agents.D.memory_max: a size must be positive, got 0",
    ]


def test_cpu_weight_idle_needs_systemd_253_and_range_is_checked(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          cpu_weight: idle
        B:
          port: 2
          cpu_weight: 0
        C:
          port: 3
          cpu_weight: '100'
        """)}) == [
        "agents/g.yaml:7: agents.A.cpu_weight: CPUWeight=idle needs systemd 253; "
        "agentkit targets systemd 252 (Debian 12)",
        "agents/g.yaml:10: agents.B.cpu_weight: expected a CPU weight from 1 to 10000 "
        "(100 is the default share), got 0",
        "agents/g.yaml:13: agents.C.cpu_weight: expected a CPU weight from 1 to 10000 "
        "(100 is the default share), got '100'",
    ]


def test_slice_cpu_weight_idle_is_refused_too(problems):
    assert problems(fleet=fleet("""\
        slices:
          gpu:
            cpu_weight: idle
        """)) == ["agents/fleet.yaml:6: slices.gpu.cpu_weight: CPUWeight=idle needs systemd 253; "
                 "agentkit targets systemd 252 (Debian 12)"]


def test_service_type_notify_reload_needs_systemd_253_and_unknown_type(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          service_type: notify-reload
        B:
          port: 2
          service_type: forking
        """)}) == [
        "agents/g.yaml:7: agents.A.service_type: 'notify-reload' needs systemd 253; "
        "agentkit targets systemd 252 (Debian 12)",
        "agents/g.yaml:10: agents.B.service_type: expected one of simple, exec, notify, got 'forking'",
    ]


def test_restart_policy_burst_and_restart_not_a_mapping(problems):
    policies = "no, on-success, on-failure, on-abnormal, on-watchdog, on-abort, always"
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          restart:
            policy: sometimes
        B:
          port: 2
          restart:
            policy: false
        C:
          port: 3
          restart:
            burst: 0
        D:
          port: 4
          restart: always
        """)}) == [
        f"agents/g.yaml:8: agents.A.restart.policy: expected one of {policies}, got 'sometimes'",
        f"agents/g.yaml:12: agents.B.restart.policy: expected one of {policies}, got False",
        "agents/g.yaml:16: agents.C.restart.burst: expected a whole number of starts from 1 to 4294967295, got 0",
        "agents/g.yaml:19: agents.D.restart: expected the restart settings (a mapping), got 'always'",
    ]


def test_command_not_a_list_relative_path_empty_prefix_and_bad_words(problems):
    assert problems({"g.yaml": group(r"""
        A:
          port: 1
          command: run --fast
        B:
          port: 2
          command: [bin/run]
        C:
          port: 3
          command: []
        D:
          port: 4
          command: ['-run']
        E:
          port: 5
          command: [run, [x]]
        F:
          port: 6
          command: [run, "a\nb"]
        """.lstrip("\n"))}) == [
        "agents/g.yaml:7: agents.A.command: expected the command as a list of words (argv), got 'run --fast'",
        "agents/g.yaml:10: agents.B.command: the program must be an absolute path, a path relative to the "
        "manifest directory (./prog), or a bare name found in --bin-dir or on PATH, got 'bin/run'",
        "agents/g.yaml:13: agents.C.command: the command is empty: give at least the program",
        "agents/g.yaml:16: agents.D.command: the program '-run' starts with a character systemd reads as a prefix",
        "agents/g.yaml:19: agents.E.command[1]: every word of a command must be text, got a list",
        "agents/g.yaml:22: agents.F.command[1]: contains a control character (such as a newline), "
        "which a unit file cannot hold",
    ]


def test_environment_bad_name_reserved_name_null_newline_and_not_a_mapping(problems):
    assert problems({"g.yaml": group(r"""
        A:
          port: 1
          environment:
            1BAD: x
        B:
          port: 2
          environment:
            AGENTKIT_PORT: '1'
        C:
          port: 3
          environment:
            EMPTY:
        D:
          port: 4
          environment:
            NL: "a\nb"
        E:
          port: 5
          environment: [A=1]
        """.lstrip("\n"))}) == [
        "agents/g.yaml:8: agents.A.environment.1BAD: not a valid environment variable name (letters, digits "
        "and '_', not first a digit)",
        "agents/g.yaml:12: agents.B.environment.AGENTKIT_PORT: names starting with AGENTKIT_ are set "
        "by agentkit itself",
        "agents/g.yaml:16: agents.C.environment.EMPTY: expected text or a number, got nothing (null) "
        "(write '' for empty)",
        "agents/g.yaml:20: agents.D.environment.NL: contains a control character (such as a newline), "
        "which a unit file cannot hold",
        "agents/g.yaml:23: agents.E.environment: expected a mapping of NAME: value, got a list",
    ]


def test_environment_address_of_names_a_known_host(problems):
    assert problems({"g.yaml": group("""
        A:
          port: 1
          environment:
            PEER: {address_of: gamma}
        B:
          port: 2
          environment:
            PEER: {address: beta}
        C:
          port: 3
          environment:
            PEER: {address_of: [beta]}
        """.lstrip("\n"))}, fleet="hosts:\n  alpha: {}\n  beta:\n    environment:\n      UP: {address_of: zeta}\n") == [
        "agents/fleet.yaml:5: hosts.beta.environment.UP.address_of: unknown host 'zeta' (hosts: alpha, beta)",
        "agents/g.yaml:8: agents.A.environment.PEER.address_of: unknown host 'gamma' (hosts: alpha, beta)",
        "agents/g.yaml:12: agents.B.environment.PEER: expected text, a number, or {address_of: HOST} "
        "(another host's address)",
        "agents/g.yaml:16: agents.C.environment.PEER: expected text, a number, or {address_of: HOST} "
        "(another host's address)",
    ]


def test_host_environment_is_checked_like_an_agents(problems):
    assert problems(fleet="""\
        hosts:
          alpha:
            environment:
              AGENTKIT_HOST: x
        """) == ["agents/fleet.yaml:4: hosts.alpha.environment.AGENTKIT_HOST: names starting with AGENTKIT_ "
                 "are set by agentkit itself"]


def test_text_with_a_newline_from_a_block_scalar_and_text_that_is_a_number(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          description: |
            two
            lines
        B:
          port: 2
          description: 5
        """)}) == [
        "agents/g.yaml:7: agents.A.description: contains a control character (such as a newline), "
        "which a unit file cannot hold",
        "agents/g.yaml:12: agents.B.description: expected text, got 5",
    ]


def test_bad_setting_in_fleet_defaults_is_reported_once_at_the_defaults(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
        B:
          port: 2
        """)}, fleet=fleet("""\
        defaults:
          start_timeout: forever
        """)) == ["agents/fleet.yaml:5: defaults.start_timeout: 'forever' is not a time span systemd "
                 "understands (try '30s' or '5min')"]


# --- missing and unknown things ---------------------------------------------------------------------

def test_missing_fleet_file(problems):
    assert problems({"g.yaml": group("A: {port: 1}\n")}, fleet=None) == [
        "agents/fleet.yaml: missing: the fleet file declares the hosts, defaults and profiles",
    ]


def test_missing_fleet_file_is_reported_with_the_other_files_yaml_errors(problems):
    assert problems({"g.yaml": "agents: [\n"}, fleet=None) == [
        "agents/fleet.yaml: missing: the fleet file declares the hosts, defaults and profiles",
        "agents/g.yaml:2: invalid YAML: while parsing a flow node, did not find expected node content",
    ]


def test_missing_manifest_directory(workdir):
    assert problems_in("agents") == ["agents: no such manifest directory"]


def test_fleet_without_hosts(problems):
    assert problems(fleet="name: x\n") == [
        "agents/fleet.yaml:1: hosts: declare at least one host, e.g. hosts: {myhost: {address: 127.0.0.1}}",
    ]


def test_missing_host_command_and_port(problems):
    assert problems({"g.yaml": """\
        agents:
          A: {}
          B:
        """}) == [
        "agents/g.yaml:2: agents.A: missing command: argv; a bare program name is looked up in --bin-dir, then PATH",
        "agents/g.yaml:2: agents.A: missing host: the host the agent runs on (a key of hosts:)",
        "agents/g.yaml:2: agents.A: missing port: the agent port (ZeroMQ/TCP); optional agents' socket listens here",
        "agents/g.yaml:3: agents.B: missing command: argv; a bare program name is looked up in --bin-dir, then PATH",
        "agents/g.yaml:3: agents.B: missing host: the host the agent runs on (a key of hosts:)",
        "agents/g.yaml:3: agents.B: missing port: the agent port (ZeroMQ/TCP); optional agents' socket listens here",
    ]


def test_unknown_host_from_the_group_file_is_reported_once_where_it_is_set(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
        B:
          port: 2
        """, head="host: gamma\ndefaults:\n  command: [run]\n")}) == [
        "agents/g.yaml:1: host: unknown host 'gamma' (hosts: alpha, beta)",
    ]


def test_unknown_host_set_on_the_agent(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          host: gama
        """)}) == ["agents/g.yaml:7: agents.A.host: unknown host 'gama' (hosts: alpha, beta)"]


def test_unknown_slice_lists_the_builtin_and_declared_slices(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          slice: gpu
        """)}, fleet=fleet("""\
        slices:
          gpus: {}
        """)) == ["agents/g.yaml:7: agents.A.slice: unknown slice 'gpu' (slices: essential, optional, gpus)"]


def test_profile_unknown_agent_and_group_essential_agent_and_unknown_default_profile(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          essential: true
        Beta:
          port: 2
        """)}, fleet=fleet("""\
        profiles:
          p:
            agents: [A, Betta, Zed]
            groups: [gg, zzz]
        default_profile: q
        """)) == [
        "agents/fleet.yaml:6: profiles.p.agents[0]: A is essential: every profile has it",
        "agents/fleet.yaml:6: profiles.p.agents[1]: unknown agent 'Betta' (did you mean 'Beta'?)",
        "agents/fleet.yaml:6: profiles.p.agents[2]: unknown agent 'Zed'",
        "agents/fleet.yaml:7: profiles.p.groups[0]: unknown group 'gg' (did you mean 'g'?)",
        "agents/fleet.yaml:7: profiles.p.groups[1]: unknown group 'zzz'",
        "agents/fleet.yaml:8: default_profile: unknown profile 'q' (profiles: p)",
    ]


def test_default_profile_unknown_when_no_profiles_are_declared(problems):
    assert problems(fleet=FLEET + "default_profile: fast\n") == [
        "agents/fleet.yaml:4: default_profile: unknown profile 'fast' (profiles: full)",
    ]


def test_without_profiles_there_is_an_implicit_full_one(workdir):
    from agentkit import manifest

    loaded = manifest.load(write_manifest(workdir, {"g.yaml": group("A:\n  port: 1\n")}, FLEET + "default_profile: full\n"))
    assert loaded.default_profile == "full" and loaded.profiles["full"].all


# --- duplicates and clashes across agents ------------------------------------------------------------

def test_duplicate_agent_name_across_two_files_names_the_first_place(problems):
    assert problems({
        "a.yaml": group("""\
            Other:
              port: 4
            A:
              port: 5
            """),
        "b.yaml": group("""\
            A:
              port: 6
            """),
    }) == ["agents/b.yaml:5: agents.A: duplicate agent name, first defined at agents/a.yaml:7"]


def test_port_clash_agent_port_with_agent_port(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 7000
        B:
          port: 7000
        """)}) == ["agents/g.yaml:8: agents.B.port: 7000 is also used on alpha by A.port"]


def test_port_clash_health_port_with_agent_port_both_ways(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 7000
          health_port: 7001
        B:
          port: 7001
        C:
          port: 7002
          health_port: 7000
        """)}) == [
        "agents/g.yaml:9: agents.B.port: 7001 is also used on alpha by A.health_port",
        "agents/g.yaml:12: agents.C.health_port: 7000 is also used on alpha by A.port",
    ]


def test_port_clash_an_agents_own_port_and_health_port(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 7000
          health_port: 7000
        """)}) == ["agents/g.yaml:7: agents.A.health_port: 7000 is also used on alpha by A.port"]


def test_port_clash_with_a_fleet_port_of_the_host(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 7500
        """)}, fleet="""\
        hosts:
          alpha:
            ports:
              bus: 7500
        """) == ["agents/g.yaml:6: agents.A.port: 7500 is also used on alpha by the fleet service bus "
                 "(hosts.alpha.ports.bus)"]


def test_port_clash_with_a_proxy_private_port_explicit_and_from_the_offset(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 7002
        P:
          port: 7600
          activation: proxy
          service_type: notify
          private_port: 7002
        Q:
          port: 5000
          activation: proxy
          service_type: notify
        R:
          port: 25000
        """)}) == [
        "agents/g.yaml:11: agents.P.private_port: 7002 is also used on alpha by A.port",
        "agents/g.yaml:17: agents.R.port: 25000 is also used on alpha by Q.private_port",
    ]


def test_same_port_on_two_different_hosts_is_no_clash(workdir):
    root = write_manifest(workdir, {"g.yaml": group("""\
        A:
          port: 7000
          health_port: 7500
        B:
          host: beta
          port: 7000
          health_port: 7500
        """)}, fleet="""\
        hosts:
          alpha: {}
          beta:
            ports:
              bus: 7001
        """)
    m = manifest.load(root)
    assert [(a.name, a.host, a.port) for a in m.agents.values()] == [("A", "alpha", 7000), ("B", "beta", 7000)]


def test_proxy_private_port_above_65535(problems):
    assert problems({"g.yaml": group("""\
        P:
          port: 50000
          activation: proxy
          service_type: notify
        """)}) == ["agents/g.yaml:6: agents.P.port: proxy mode needs a private port: 50000 + "
                   "private_port_offset 20000 is above 65535; set private_port"]


# --- dependencies and unit names ----------------------------------------------------------------------

def test_unknown_dependency_with_suggestion_self_dependency_and_listed_twice(problems):
    assert problems({"g.yaml": group("""\
        Alpha:
          port: 1
          depends_on: [Betaa, Alpha, Gamma, Gamma, Zzz]
        Beta:
          port: 2
        Gamma:
          port: 3
        """)}) == [
        "agents/g.yaml:7: agents.Alpha.depends_on[0]: unknown agent 'Betaa' (did you mean 'Beta'?)",
        "agents/g.yaml:7: agents.Alpha.depends_on[1]: an agent cannot depend on itself",
        "agents/g.yaml:7: agents.Alpha.depends_on[3]: Gamma is listed twice",
        "agents/g.yaml:7: agents.Alpha.depends_on[4]: unknown agent 'Zzz'",
    ]


def test_dependency_cycle_of_three_starts_at_the_smallest_name(problems):
    assert problems({"g.yaml": group("""\
        C:
          port: 3
          depends_on: [A]
        B:
          port: 2
          depends_on: [C]
        A:
          port: 1
          depends_on: [B]
        """)}) == ["agents/g.yaml:13: agents.A.depends_on: dependency cycle: A -> B -> C -> A"]


def test_essential_agent_depending_on_optional_agent(problems):
    assert problems({"g.yaml": group("""\
        E:
          port: 1
          essential: true
          depends_on: [O]
        O:
          port: 2
        """)}) == [
        "agents/g.yaml:8: agents.E.depends_on[0]: essential agent E depends on optional agent O: an essential "
        "agent starts at boot and cannot wait for an on-demand one (make O essential, or E optional)",
    ]


def test_agent_name_that_cannot_become_a_unit_name(problems):
    assert problems({"g.yaml": group("""\
        'Bad Name':
          port: 1
        ok.name-2:
          port: 2
        """)}) == ["agents/g.yaml:5: agents.\"Bad Name\": an agent name becomes a unit name: letters, digits, "
                   "'_', '.' and '-', at most 200"]


def test_agent_named_x_proxy_clashes_with_proxy_unit_of_x(problems):
    assert problems({"g.yaml": group("""\
        X:
          port: 2
          activation: proxy
          service_type: notify
        X-proxy:
          port: 3
        """)}) == ["agents/g.yaml:9: agents.X-proxy: its unit name agentkit-X-proxy clashes with a unit of agent X"]


def test_proxy_unit_of_x_clashes_with_earlier_agent_named_x_proxy(problems):
    assert problems({"g.yaml": group("""\
        X-proxy:
          port: 3
        X:
          port: 2
          activation: proxy
          service_type: notify
        """)}) == ["agents/g.yaml:7: agents.X: its unit name agentkit-X-proxy clashes with a unit of agent X-proxy"]


def test_x_proxy_agent_is_fine_when_x_is_native(workdir):
    root = write_manifest(workdir, {"g.yaml": group("""\
        X:
          port: 2
        X-proxy:
          port: 3
        """)})
    assert list(manifest.load(root).agents) == ["X", "X-proxy"]


# --- activation and start limits ----------------------------------------------------------------------

def test_optional_only_settings_on_an_essential_agent(problems):
    assert problems({"g.yaml": group("""\
        E:
          port: 1
          essential: true
          activation: proxy
          private_port: 9
          idle_stop: 1min
        """)}) == [
        "agents/g.yaml:8: agents.E.activation: an essential agent binds its own port, or adopts systemd's socket "
        "(activation: native): proxy is for optional agents",
        "agents/g.yaml:9: agents.E.private_port: only optional agents have private_port (this agent is essential)",
        "agents/g.yaml:10: agents.E.idle_stop: only optional agents have idle_stop (this agent is essential)",
    ]


def test_readiness_problems_name_the_setting_and_the_fix(problems):
    assert problems({"g.yaml": group("""\
        P:
          port: 2
          activation: proxy
        N:
          port: 3
          ready: port
        S:
          port: 4
          essential: true
          service_type: notify
          ready: {http: /health}
        H:
          port: 5
          ready: {http: health}
        C:
          port: 6
          ready: {command: "test -e /x"}
        W:
          port: 7
          ready: soon
        T:
          port: 8
          command: [python3, -m, http.server, "{port}"]
        U:
          port: 9
          activation: proxy
          ready: started
        V:
          port: 10
          service_type: exec
          ready: notify
        """)}) == [
        "agents/g.yaml:10: agents.N.ready: a native agent's port is its socket's, which accepts before the agent "
        "runs: ready: port would say nothing (use notify, started, {http: /path} or {command: [argv]}, or "
        "activation: proxy)",
        "agents/g.yaml:14: agents.S.service_type: service_type: notify waits for READY=1, but ready is http: leave "
        "service_type out (or say ready: notify)",
        "agents/g.yaml:18: agents.H.ready: http: expected a path that starts with '/', in ASCII without spaces "
        "(percent-encode the rest), got 'health'",
        "agents/g.yaml:21: agents.C.ready: expected the command as a list of words (argv), got 'test -e /x'",
        "agents/g.yaml:24: agents.W.ready: expected notify, started, port, {http: /path} or {command: [argv]}, "
        "got 'soon'",
        "agents/g.yaml:27: agents.T.command: a native agent adopts the socket's fd and binds no port, so {port} in "
        "its command would name the port the socket holds: use activation: proxy for a program that listens on a "
        "port of its own",
        "agents/g.yaml:31: agents.U.ready: behind the proxy, started would let it connect before the program "
        "listens, and clients would get an empty reply: use port (the default), {http: /path}, {command: [argv]} "
        "or notify",
        "agents/g.yaml:34: agents.V.service_type: ready: notify needs Type=notify, but service_type is exec: leave "
        "service_type out",
    ]


def test_readiness_defaults_follow_the_service_type_and_the_activation(workdir):
    """A proxy agent no longer needs service_type: notify; each default is said once."""
    root = write_manifest(workdir, {"g.yaml": group("""\
        P: {port: 2, activation: proxy}
        N: {port: 3}
        E: {port: 4, essential: true}
        Y: {port: 5, service_type: notify}
        R: {port: 6, ready: notify}
        H: {port: 7, activation: proxy, ready: {http: /healthz}}
        """)})
    m = manifest.load(root)
    seen = {n: (a.service_type, a.ready.kind, a.ready.path) for n, a in m.agents.items()}
    assert seen == {"P": ("exec", "port", None), "N": ("exec", "started", None), "E": ("exec", "port", None),
                    "Y": ("notify", "notify", None), "R": ("notify", "notify", None),
                    "H": ("exec", "http", "/healthz")}


def test_crash_loop_that_never_reaches_burst(problems):
    assert problems({"g.yaml": group("""\
        C:
          port: 1
          essential: true
          restart:
            delay: 10s
            burst: 3
            interval: 30s
        N:
          port: 2
          essential: true
          restart: {policy: 'no', delay: 1min}
        """)}) == [
        "agents/g.yaml:8: agents.C.restart: a crash loop restarting every 10s never reaches burst 3 within "
        "interval 30s: systemd would restart it forever (lower delay or burst, or raise interval)",
    ]


def test_idle_wakeups_that_reach_burst(problems):
    assert problems({"g.yaml": group("""\
        I:
          port: 2
          idle_stop: 10s
          restart:
            burst: 3
            interval: 1min
        """)}) == [
        "agents/g.yaml:8: agents.I.restart: 7 wake-ups after idle stops of 10s fit in interval 1min, "
        "reaching burst 3: on-demand starts would hit the start limit (raise burst or idle_stop)",
    ]


# --- several problems at once -------------------------------------------------------------------------

def test_problems_in_several_files_are_reported_together_sorted_by_file_and_line(problems):
    assert problems({
        "b.yaml": group("""\
            B:
              port: 7000
              depends_on: [Nope]
            C:
              port: x
            """),
        "a.yaml": group("""\
            A:
              port: 7000
            Z:
              port: 1
              cpu_weight: idle
            """),
        # c.yaml cannot be read: it may declare Nope, so B's dependency on it is not reported.
        "c.yaml": "agents: {\n",
    }, fleet=fleet("""\
        zzz: 1
        default_profile: nope
        """)) == [
        "agents/a.yaml:9: agents.Z.cpu_weight: CPUWeight=idle needs systemd 253; agentkit targets systemd 252 "
        "(Debian 12)",
        "agents/b.yaml:6: agents.B.port: 7000 is also used on alpha by A.port",
        "agents/b.yaml:9: agents.C.port: expected a port number from 1 to 65535, got 'x'",
        "agents/c.yaml:2: invalid YAML: while parsing a flow node, did not find expected node content",
        "agents/fleet.yaml:4: zzz: unknown key (known: name, hosts, defaults, slices, profiles, "
        "default_profile, private_port_offset, router)",
        "agents/fleet.yaml:5: default_profile: unknown profile 'nope' (profiles: full)",
    ]


# --- the command line -------------------------------------------------------------------------------

BROKEN = {"g.yaml": group("""\
    A:
      port: 7000
    B:
      port: 7000
    C:
      port: 7001
      service_type: notify-reload
    """)}
BROKEN_LINES = [
    "agents/g.yaml:8: agents.B.port: 7000 is also used on alpha by A.port",
    "agents/g.yaml:11: agents.C.service_type: 'notify-reload' needs systemd 253; agentkit targets systemd 252 "
    "(Debian 12)",
]


def test_broken_manifest_problem_lines(problems):
    assert problems(BROKEN) == BROKEN_LINES


def test_cli_validate_broken_manifest_prints_each_problem_and_a_summary_and_exits_1(workdir, capsys):
    root = write_manifest(workdir, BROKEN)
    assert main(["-m", root, "validate"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == BROKEN_LINES + ["agentkit: 2 problems in the manifest"]
    assert "Traceback" not in err


def test_cli_validate_singular_summary(workdir, capsys):
    root = write_manifest(workdir, {"g.yaml": group("A: {port: 0}\n")})
    assert main(["-m", root, "validate"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "agents/g.yaml:5: agents.A.port: expected a port number from 1 to 65535, got 0", SUMMARY_ONE]


def test_cli_render_broken_manifest_exits_1_and_writes_nothing(workdir, capsys):
    root = write_manifest(workdir, BROKEN)
    out_dir = workdir / "out"
    assert main(["-m", root, "render", "--out", str(out_dir), "--bin-dir", "/usr/local/bin"]) == 1
    out, err = capsys.readouterr()
    assert not out_dir.exists()
    assert out == ""
    assert err.splitlines() == BROKEN_LINES + ["agentkit: 2 problems in the manifest; nothing was written"]
    assert "Traceback" not in err


def test_cli_runner_render_broken_manifest_raises_manifest_error_and_writes_nothing(workdir):
    root = write_manifest(workdir, BROKEN)
    result = CliRunner().invoke(cli, ["-m", root, "render", "--out", "out", "--bin-dir", "/usr/local/bin"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ManifestError)
    assert [str(p) for p in result.exception.problems] == BROKEN_LINES
    assert not (workdir / "out").exists()


def test_cli_validate_missing_manifest_directory(workdir, capsys):
    assert main(["-m", "nowhere", "validate"]) == 1
    assert capsys.readouterr().err.splitlines() == ["nowhere: no such manifest directory", SUMMARY_ONE]


# --- the reference manifest --------------------------------------------------------------------------

def test_reference_manifest_validates_with_77_agents():
    m = manifest.load(str(REFERENCE))
    assert len(m.agents) == 77
    assert sum(a.essential for a in m.agents.values()) == 24
    assert len(m.on_host("mainpc")) == 55
    assert len(m.on_host("pc2")) == 22
    assert list(m.hosts) == ["mainpc", "pc2"]


def test_cli_validate_reference_manifest_exits_0(capsys):
    assert main(["-m", str(REFERENCE), "validate"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0] == (f"{REFERENCE}: 77 agents on 2 hosts (24 essential, 53 optional), "
                                   "profiles: core, vision, learning, full: ok")


def test_reference_error_bus_on_7150_clashes_with_vision_processing_agent(workdir):
    shutil.copytree(REFERENCE, workdir / "agents")
    fleet = workdir / "agents" / "fleet.yaml"
    text = fleet.read_text(encoding="utf-8")
    assert text.count("error_bus: 7160") == 1
    fleet.write_text(text.replace("error_bus: 7160", "error_bus: 7150"), encoding="utf-8")
    assert problems_in("agents") == [
        "agents/vision_services.yaml:11: agents.VisionProcessingAgent.port: 7150 is also used on pc2 by "
        "the fleet service error_bus (hosts.pc2.ports.error_bus)",
    ]


# --- loader bugs found while writing these tests, fixed since ---------------------------------------

def test_default_profile_that_is_a_list_is_a_problem_not_a_crash(problems):
    lines = problems(fleet=FLEET + "profiles: {p: {}}\ndefault_profile: [p]\n")
    assert len(lines) == 1
    assert lines[0].startswith("agents/fleet.yaml:5: default_profile: ")


def test_explicit_int_tag_on_non_number_is_a_problem_not_a_crash(problems):
    lines = problems({"g.yaml": group("A:\n  port: !!int abc\n")})
    assert len(lines) == 1
    assert lines[0].startswith("agents/g.yaml:6: agents.A.port: invalid value: ")


def test_unknown_yaml_tag_is_one_single_line_problem(problems):
    lines = problems({"g.yaml": group("A:\n  port: !custom 5\n")})
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert lines[0].startswith("agents/g.yaml:6: agents.A.port: invalid value: could not determine a "
                               "constructor for the tag '!custom'")


def test_slice_that_is_not_text_is_reported_once(problems):
    assert problems({"g.yaml": group("A:\n  port: 1\n  slice: 5\n")}) == [
        "agents/g.yaml:7: agents.A.slice: expected text, got 5",
    ]


def test_invalid_essential_value_does_not_make_the_agent_essential(problems):
    assert problems({"g.yaml": group("A:\n  port: 1\n  essential: 'yes'\n  idle_stop: 5min\n")}) == [
        "agents/g.yaml:7: agents.A.essential: expected true or false, got 'yes'",
    ]


def test_dependency_on_a_defined_but_invalid_agent_is_not_unknown(problems):
    assert problems({"g.yaml": group("""\
        A:
          port: 1
          depends_on: [B]
        B:
          port: '8080'
        """)}) == ["agents/g.yaml:9: agents.B.port: expected a port number from 1 to 65535, got '8080'"]


def test_duplicate_agent_name_is_reported_even_if_the_first_definition_is_invalid(problems):
    assert problems({
        "a.yaml": group("A:\n  port: x\n"),
        "b.yaml": group("A:\n  port: 5\n"),
    }) == [
        "agents/a.yaml:6: agents.A.port: expected a port number from 1 to 65535, got 'x'",
        "agents/b.yaml:5: agents.A: duplicate agent name, first defined at agents/a.yaml:5",
    ]


def test_two_fleet_ports_on_one_host_clash(problems):
    assert problems(fleet="""\
        hosts:
          alpha:
            ports:
              bus: 7000
              log: 7000
        """) == ["agents/fleet.yaml:5: hosts.alpha.ports.log: 7000 is also used on alpha by the fleet "
                 "service bus (hosts.alpha.ports.bus)"]


# --- the router section ---------------------------------------------------------------------

ROUTER = """\
router:
  host: alpha
  local: {url: "http://127.0.0.1:8080/v1", model: small-8b}
  cloud: {url: "https://api.example.com/v1", model: big}
"""


def test_a_router_section_loads_with_its_defaults(workdir):
    m = manifest.load(write_manifest(workdir, fleet=fleet(ROUTER)))
    assert (m.router.host, m.router.port, m.router.bind, m.router.api_key_file) == ("alpha", 8090, "0.0.0.0", None)
    settings = dict(m.router.settings)
    assert settings["local.url"] == "http://127.0.0.1:8080/v1" and settings["threshold"] == 0.7
    assert settings["gpu.interval"] == 250_000 and "small.model" not in settings


@pytest.mark.parametrize("section, expected", [
    ("router: {host: gamma}\n", [
        "agents/fleet.yaml:4: router.cloud: give the cloud model (model: NAME) or its tiers (models: [{name: ..., "
        "above: ...}]), one of the two",
        "agents/fleet.yaml:4: router.cloud: missing url: the cloud backend's OpenAI base URL",
        "agents/fleet.yaml:4: router.host: unknown host 'gamma' (hosts: alpha, beta)",
        "agents/fleet.yaml:4: router.local: give the local model (model: NAME) or its tiers (models: [{name: ..., "
        "above: ...}]), one of the two",
        "agents/fleet.yaml:4: router.local: missing url: the local backend's OpenAI base URL"]),
    (ROUTER + "  treshold: 0.5\n", ["agents/fleet.yaml:8: router.treshold: unknown key (did you mean 'threshold'?)"]),
    (ROUTER + "  threshold: 2\n", ["agents/fleet.yaml:8: router.threshold: expected a number from 0 to 1, got 2"]),
    (ROUTER + "  gpu: {reserve: lots}\n",
     ["agents/fleet.yaml:8: router.gpu.reserve: 'lots' is not a size systemd understands (try '512M' or '4G')"]),
    (ROUTER + "  gpu: {vram: 1G}\n",
     ["agents/fleet.yaml:8: router.gpu.vram: unknown key (known: device, reserve, capacity, interval, stale_after)"]),
    (ROUTER.replace('"http://127.0.0.1:8080/v1"', "localhost:8080"),
     ["agents/fleet.yaml:6: router.local.url: expected an http:// or https:// URL such as http://127.0.0.1:8080/v1, "
      "got 'localhost:8080'"]),
    (ROUTER + "  bind: everywhere\n",
     ["agents/fleet.yaml:8: router.bind: expected an IP address to listen on, such as 0.0.0.0 or 127.0.0.1, "
      "got 'everywhere'"]),
    (ROUTER + "  small: {kv_cache_per_token: 64K}\n",
     ["agents/fleet.yaml:8: router.small.kv_cache_per_token: set small.model too, or leave the small model out"]),
    (ROUTER.replace("big}", "big, api_key_file: key.txt}"),
     ["agents/fleet.yaml:7: router.cloud.api_key_file: expected an absolute path without spaces, quotes or backslashes, got 'key.txt'"]),
    (ROUTER + "  local_url: x\n", ["agents/fleet.yaml:8: router.local_url: unknown key (did you mean 'local'?)"]),
    ("router: [1]\n", ["agents/fleet.yaml:4: router: expected the router's settings (a mapping), got a list"]),
    (ROUTER + "  rules: {'code(': 0.9}\n",
     ["agents/fleet.yaml:8: router.rules.code(: 'code(' is not a regular expression: missing ), unterminated "
      "subpattern at position 4"]),
    (ROUTER + "  rules: {chat: 1.5}\n",
     ["agents/fleet.yaml:8: router.rules.chat: expected a complexity score from 0 to 1, or a backend (local, cloud "
      "or a peer's name), got 1.5"]),
    (ROUTER + "  rules: {translation: gpu}\n",
     ["agents/fleet.yaml:8: router.rules.translation: no backend 'gpu' (backends: local, cloud)"]),
    (ROUTER + "  unknown: lots\n",
     ["agents/fleet.yaml:8: router.unknown: no backend 'lots' (backends: local, cloud)"]),
    (ROUTER.replace("model: small-8b}", "models: [{name: a, above: 2}, {name: b, kv_cache_per_token: x}]}"),
     ["agents/fleet.yaml:6: router.local.models[0].above: expected a number from 0 to 1, got 2",
      "agents/fleet.yaml:6: router.local.models[1].kv_cache_per_token: 'x' is not a size systemd understands "
      "(try '512M' or '4G')"]),
    (ROUTER.replace("model: small-8b}", "models: [a, {name: b}, a]}"),
     ["agents/fleet.yaml:6: router.local.models[2]: model 'a' is listed already"]),
    (ROUTER + "  rules: {}\n",
     ["agents/fleet.yaml:8: router.rules: the rule table is empty: give at least one rule, or leave rules out for "
      "the default table"]),
    (ROUTER.replace("model: small-8b}", "models: [{name: a, kv_cache_per_tokn: 1K}]}"),
     ["agents/fleet.yaml:6: router.local.models[0].kv_cache_per_tokn: unknown key (did you mean "
      "'kv_cache_per_token'?)"]),
    (ROUTER + "  peers:\n    pc2: {url: 'http://127.0.0.1:9/v1', host: delta, model: m, speed: 3}\n    local: {url: x}\n",
     ["agents/fleet.yaml:9: router.peers.pc2.speed: unknown key (known: url, max_inflight, load, gpu, capacity, host, "
      "model, models)",
      "agents/fleet.yaml:10: router.peers.local: give its model (model: NAME) or its tiers (models: [{name: ..., "
      "above: ...}]), one of the two",
      "agents/fleet.yaml:10: router.peers.local.url: expected an http:// or https:// URL such as "
      "http://127.0.0.1:8080/v1, got 'x'"]),
    (ROUTER + "  peers:\n    local: {url: 'http://127.0.0.1:9/v1', model: m}\n",
     ["agents/fleet.yaml:9: router.peers.local: 'local' is the router's own backend (router.local): name the peer "
      "otherwise"]),
    (ROUTER + "  peers:\n    pc2: {url: 'http://127.0.0.1:9/v1', host: delta, model: m}\n",
     ["agents/fleet.yaml:9: router.peers.pc2.host: unknown host 'delta' (hosts: alpha, beta)"]),
    (ROUTER.replace("model: small-8b}", "models: [a]}") + "  small: {model: s}\n",
     ["agents/fleet.yaml:8: router.small.model: with local.models, list the small model as a tier there"]),
])
def test_router_section_problems(workdir, section, expected):
    assert problems_in(write_manifest(workdir, fleet=fleet(section))) == expected


def test_the_router_port_clashes_with_an_agent_port(workdir):
    root = write_manifest(workdir, {"a.yaml": "agents:\n  A: {host: alpha, port: 8090, command: [/bin/true]}\n"},
                          fleet=fleet(ROUTER))
    assert problems_in(root) == ["agents/a.yaml:2: agents.A.port: 8090 is also used on alpha by the router (router.port)"]


# --- what only a backend would refuse, reported by validate (one validation) ---

def test_a_private_port_under_supervisord_that_is_another_agents_health_port(workdir):
    # Systemd never uses a native agent's port + private_port_offset; supervisord does,
    # so validate reports the clash where `render --backend supervisord` used to fail.
    root = write_manifest(workdir, {"g.yaml": group("""\
        Lazy:
          port: 5000
        Busy:
          essential: true
          port: 6000
          health_port: 25000
        """)})
    assert problems_in(root) == [
        "agents/g.yaml:6: agents.Lazy.port: under supervisord it listens on 127.0.0.1:25000 (port 5000 + "
        "private_port_offset 20000), which is also used on alpha by Busy.health_port (change "
        "private_port_offset, or use activation: proxy with a private_port)"]


def test_a_private_port_under_supervisord_above_65535(workdir):
    root = write_manifest(workdir, {"g.yaml": group("""\
        High:
          port: 50000
        """)})
    assert problems_in(root) == [
        "agents/g.yaml:6: agents.High.port: under supervisord it listens on a private port, and port 50000 + "
        "private_port_offset 20000 is above 65535 (lower private_port_offset, or use activation: proxy with a "
        "private_port)"]


def test_a_host_variable_supervisord_cannot_hold_is_reported_at_the_host_once(workdir):
    root = write_manifest(workdir, {"g.yaml": group("""\
        One: {essential: true, port: 5000}
        Two: {essential: true, port: 5001}
        """)},
        fleet="hosts:\n  alpha:\n    environment: {NOTE: \"a ;b\"}\n")
    assert problems_in(root) == [
        "agents/fleet.yaml:3: hosts.alpha.environment.NOTE: 'a ;b' cannot be written to supervisord.conf: its "
        "parser takes ';' or '#' after white space as the start of a comment"]


@pytest.mark.parametrize("argv", [["-m", "lab", "validate"], ["validate", "-m", "lab"],
                                  ["validate", "--manifest", "lab"], ["--debug", "validate", "-m", "lab", "--debug"]])
def test_common_options_go_before_or_after_the_subcommand(workdir, argv):
    shutil.copytree(REFERENCE, workdir / "lab")
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("lab: 77 agents on 2 hosts")


def test_address_after_the_subcommand_reaches_the_model(workdir):
    shutil.copytree(REFERENCE, workdir / "lab")
    result = CliRunner().invoke(cli, ["show", "--json", "-m", "lab", "--address", "mainpc=10.1.2.3"])
    assert result.exit_code == 0, result.output
    assert '"address": "10.1.2.3"' in result.output


@pytest.mark.parametrize("value, message", [
    ("often", "expected {http: /path} or {tcp: true}, with interval and failures, got 'often'"),
    ("{interval: 5s}", "say one probe: http: /path (answers 2xx) or tcp: true (the port accepts)"),
    ("{http: /h, tcp: true}", "say one probe: http: /path (answers 2xx) or tcp: true (the port accepts)"),
    ("{http: health}", "http: expected a path that starts with '/'"),
    ("{tcp: 8080}", "tcp: expected true, got 8080"),
    ("{http: /h, interval: 10ms}", "interval: at least 100ms, got '10ms'"),
    ("{http: /h, failures: 0}", "failures: expected a whole number from 1 to 100, got 0"),
    ("{http: /h, every: 5s}", "unknown key 'every' (known: http, tcp, interval, failures)"),
])
def test_liveness_problems_name_the_setting(problems, value, message):
    found = problems({"g.yaml": f"""\
        host: alpha
        agents:
          A:
            command: [agentkit-agent]
            port: 7001
            liveness: {value}
        """})
    assert len(found) == 1 and found[0].startswith("agents/g.yaml:6: agents.A.liveness: " + message), found


def test_a_tcp_liveness_probe_of_a_native_agent_without_a_health_port_is_refused(problems):
    found = problems({"g.yaml": """\
        host: alpha
        agents:
          A:
            command: [agentkit-agent]
            port: 7001
            liveness: {tcp: true}
        """})
    assert found == ["agents/g.yaml:6: agents.A.liveness: a native agent's port is its socket's, which accepts even "
                     "when the program hangs: tcp: true would say nothing (use {http: /path}, or give it a "
                     "health_port)"]
