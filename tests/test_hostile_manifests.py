"""Manifests written by a careless or hostile hand: clean problems, bounded, nothing written.

Each case runs the real command line (`agentkit validate`, and for some `render`
and `install --root`) in a child process held to 1 GiB of address space and a
time bound, and compares every line it prints. Before these were fixed, an alias
bomb of a few hundred bytes hung the loader and ate memory, a self-referencing
alias or 990 levels of nesting ended in a RecursionError, a manifest file that is
a symlink to /dev/zero in a MemoryError, and values systemd 252 ignores passed.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentkit import parsers, values, yamlsrc

AGENTKIT = str(Path(sys.executable).with_name("agentkit"))
MEMORY = 1 << 30  # the loader stays far below; a bomb would pass it at once
BOUND = 120  # seconds: a hang, not a timing (a case takes well under one)

FLEET = "hosts:\n  alpha: {}\n"
SUMMARY_ONE = "agentkit: 1 problem in the manifest"


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def agentkit(cwd: Path, *args: str) -> tuple[int, list[str]]:
    """Run agentkit in cwd; its exit status and its output lines (stdout then stderr)."""
    result = subprocess.run([AGENTKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=BOUND,
                            preexec_fn=_limits, env={**os.environ, "NO_COLOR": "1"})
    return result.returncode, (result.stdout + result.stderr).splitlines()


def manifest(tmp_path: Path, files: dict[str, str | bytes], fleet: str | None = FLEET) -> Path:
    root = tmp_path / "agents"
    root.mkdir()
    if fleet is not None:
        (root / "fleet.yaml").write_text(fleet)
    for name, content in files.items():
        if isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            (root / name).write_text(textwrap.dedent(content) if "\n" in content[:200] else content)
    return root


def validate(tmp_path: Path) -> list[str]:
    """The problem lines of `agentkit validate -m agents` (which must fail)."""
    status, lines = agentkit(tmp_path, "validate", "-m", "agents")
    assert status == 1, lines
    return lines


def one_agent(**settings: str) -> str:
    """A group file of one agent A on alpha, with settings given as YAML flow text."""
    extra = "".join(f", {key}: {value}" for key, value in settings.items())
    return f"host: alpha\nagents:\n  A: {{command: [/bin/true], port: 7001{extra}}}\n"


# --- YAML that expands, refers to itself, or nests -------------------------------------------

BILLION_LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip([""] + list("abcdefgh"), "abcdefghi"))


def test_an_alias_bomb_is_refused_at_the_alias_that_expands_too_far(tmp_path):
    assert len(BILLION_LAUGHS) < 400  # a few hundred bytes, 9^9 values once expanded
    manifest(tmp_path, {"g.yaml": BILLION_LAUGHS})
    assert validate(tmp_path) == [
        "agents/g.yaml:6: f: aliases expand to more than 100,000 values (an alias bomb?): write the values "
        "out, or share them through defaults:",
        SUMMARY_ONE]


def test_the_alias_bomb_writes_nothing_with_render_or_install(tmp_path):
    manifest(tmp_path, {"g.yaml": BILLION_LAUGHS})
    status, lines = agentkit(tmp_path, "render", "-m", "agents", "--out", "build")
    assert status == 1 and lines[-1].startswith("agentkit: 1 problem in the manifest"), lines
    assert not (tmp_path / "build").exists()
    (tmp_path / "root").mkdir()
    status, lines = agentkit(tmp_path, "install", "-m", "agents", "--host", "alpha", "--root", "root")
    assert status == 1 and lines[-1].startswith("agentkit: 1 problem in the manifest"), lines
    assert list((tmp_path / "root").iterdir()) == []


def test_aliases_within_the_bound_are_values_like_any_other(tmp_path):
    manifest(tmp_path, {"g.yaml": """\
        host: alpha
        defaults:
          environment: &common {MODE: fast, LEVEL: 3}
        agents:
          A: {command: [/bin/true], port: 7001, environment: *common}
          B: {command: [/bin/true], port: 7002, environment: *common}
        """})
    status, lines = agentkit(tmp_path, "show", "-m", "agents", "--json")
    assert status == 0, lines


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    manifest(tmp_path, {"g.yaml": "host: alpha\nagents: &all\n  A: *all\n"})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: agents.A: this alias names a value that holds the alias itself: it would never end",
        SUMMARY_ONE]


def test_990_levels_of_flow_nesting(tmp_path):
    manifest(tmp_path, {"g.yaml": "agents: " + "[" * 990 + "]" * 990 + "\n"})
    assert validate(tmp_path) == ["agents/g.yaml:1: agents: nested more than 64 levels deep", SUMMARY_ONE]


def test_990_levels_of_block_nesting_show_the_path_by_its_ends(tmp_path):
    text = "agents:\n" + "".join("  " * (level + 1) + f"k{level}:\n" for level in range(990)) + "  " * 991 + "x\n"
    manifest(tmp_path, {"g.yaml": text})
    assert validate(tmp_path) == [
        "agents/g.yaml:65: agents.k0.k1.k2...k62.k63: nested more than 64 levels deep", SUMMARY_ONE]


def test_libyaml_own_depth_limit_is_a_clean_problem_too(tmp_path):
    manifest(tmp_path, {"g.yaml": "agents: " + "[" * 100_000 + "\n"})
    assert validate(tmp_path) == [
        "agents/g.yaml:1: invalid YAML: while increasing flow level, exceeded maximum nesting depth",
        SUMMARY_ONE]


# --- files that are not text files -------------------------------------------------------------

@pytest.mark.parametrize("target, kind", [("/dev/zero", "a character device"), ("/dev/null", "a character device")])
def test_a_manifest_file_that_links_to_a_device(tmp_path, target, kind):
    root = manifest(tmp_path, {})
    (root / "g.yaml").symlink_to(target)
    assert validate(tmp_path) == [f"agents/g.yaml: not a regular file ({kind}): a manifest file is YAML text",
                                  SUMMARY_ONE]


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    root = manifest(tmp_path, {})
    os.mkfifo(root / "g.yaml")
    assert validate(tmp_path) == ["agents/g.yaml: not a regular file (a FIFO): a manifest file is YAML text",
                                  SUMMARY_ONE]


def test_a_directory_and_a_symlink_loop_named_like_manifest_files(tmp_path):
    root = manifest(tmp_path, {})
    (root / "d.yaml").mkdir()
    (root / "loop.yaml").symlink_to("loop.yaml")
    assert validate(tmp_path) == [
        "agents/d.yaml: not a regular file (a directory): a manifest file is YAML text",
        "agents/loop.yaml: cannot read: Too many levels of symbolic links",
        "agentkit: 2 problems in the manifest"]


def test_a_file_over_the_size_bound_is_not_read_whole(tmp_path):
    line = "# " + "x" * 1021 + "\n"  # 1 KiB of comment, over and over
    manifest(tmp_path, {"g.yaml": "agents: {}\n" + line * (yamlsrc.MAX_FILE_BYTES // len(line) + 1)})
    assert validate(tmp_path) == [
        "agents/g.yaml: larger than 4 MiB: a manifest file is settings, not data (split the agents over "
        "several files)", SUMMARY_ONE]


def test_bytes_that_are_not_utf8_are_named_by_line_and_column(tmp_path):
    manifest(tmp_path, {"g.yaml": b"host: alpha\nagents:\n  A: {description: caf\xe9}\n"})
    assert validate(tmp_path) == ["agents/g.yaml:3: not UTF-8 text: byte 0xe9 at column 23", SUMMARY_ONE]


# --- characters and syntax ---------------------------------------------------------------------

def test_a_nul_byte_is_named_at_its_own_line_on_one_line(tmp_path):
    manifest(tmp_path, {"g.yaml": "host: alpha\nagents:\n  A:\n    description: \"a\0b\"\n"})
    assert validate(tmp_path) == [
        "agents/g.yaml:4: invalid YAML: a NUL byte at column 20 (YAML allows no control characters; write "
        "it as an escape, such as \\t, in a double-quoted string)", SUMMARY_ONE]


def test_an_unclosed_quote_is_named_where_it_opens(tmp_path):
    manifest(tmp_path, {"g.yaml": 'host: alpha\nagents:\n  A:\n    command: ["run]\n    port: 1\n'
                                  '  B:\n    port: 2\n    command: [x]\n'})
    assert validate(tmp_path) == [
        "agents/g.yaml:4: invalid YAML: while scanning a quoted scalar that starts here, found unexpected "
        "end of stream (it is never closed)", SUMMARY_ONE]


def test_an_unclosed_bracket_is_named_where_it_opens(tmp_path):
    manifest(tmp_path, {"g.yaml": "host: alpha\nagents:\n  A: {command: [x], port: 1\n\n\n"})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: invalid YAML: while parsing a flow mapping that starts here, did not find expected "
        "',' or '}' (it is never closed)", SUMMARY_ONE]


def test_two_documents_in_one_file(tmp_path):
    manifest(tmp_path, {"g.yaml": "host: alpha\nagents: {}\n---\nagents: {}\n"})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: invalid YAML: expected a single document in the stream that starts at line 1, "
        "but found another document", SUMMARY_ONE]


def test_a_python_tag_is_a_value_problem_not_code(tmp_path):
    manifest(tmp_path, {"g.yaml": one_agent(description="!!python/object/apply:os.system [touch pwned]")})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: agents.A.description: invalid value: could not determine a constructor for the "
        "tag 'tag:yaml.org,2002:python/object/apply:os.system'", SUMMARY_ONE]
    assert not (tmp_path / "pwned").exists()


# --- names that would forge or break the problem lines ---------------------------------------

def test_a_name_with_a_newline_cannot_forge_a_second_problem_line(tmp_path):
    manifest(tmp_path, {"g.yaml": 'host: alpha\nagents:\n  "A\\nagents/g.yaml:1: forged: error":\n'
                                  '    command: [/bin/true]\n    port: 7001\n'})
    assert validate(tmp_path) == [
        'agents/g.yaml:3: agents."A\\nagents/g.yaml:1: forged: error": an agent name becomes a unit name: '
        "letters, digits, '_', '.' and '-', at most 200", SUMMARY_ONE]


def test_names_with_spaces_escapes_and_line_separators_are_quoted(tmp_path):
    manifest(tmp_path, {"g.yaml": 'host: alpha\nagents:\n  "a b": {command: [/bin/true], port: 7001}\n'
                                  '  "\\e[31mRED": {command: [/bin/true], port: 7002}\n'
                                  '  "x\\u2028y": {command: [/bin/true], port: 7003}\n'})
    rule = "an agent name becomes a unit name: letters, digits, '_', '.' and '-', at most 200"
    assert validate(tmp_path) == [
        f'agents/g.yaml:3: agents."a b": {rule}',
        f'agents/g.yaml:4: agents."\\u001b[31mRED": {rule}',
        f'agents/g.yaml:5: agents."x\\u2028y": {rule}',
        "agentkit: 3 problems in the manifest"]


def test_a_name_of_a_megabyte_is_shown_by_its_start(tmp_path):
    # An explicit key ('? KEY'): a plain or quoted one is at most 1,024 characters in YAML.
    manifest(tmp_path, {"g.yaml": f"host: alpha\nagents:\n  ? {'N' * 1_000_000}\n  : {{command: [/bin/true], port: 1}}\n"})
    assert validate(tmp_path) == [
        f'agents/g.yaml:3: agents."{"N" * 60}... (1,000,000 characters)": an agent name becomes a unit name: '
        "letters, digits, '_', '.' and '-', at most 200", SUMMARY_ONE]


def test_a_file_name_that_reorders_the_line_is_escaped(tmp_path):
    manifest(tmp_path, {"evil\u202egnp.yaml": "agents: [\n"})  # right-to-left override
    assert validate(tmp_path)[1] == ("agents/evil\\u202egnp.yaml:2: invalid YAML: while parsing a flow node, "
                                     "did not find expected node content")


def test_a_file_name_with_a_newline_stays_on_its_line(tmp_path):
    manifest(tmp_path, {"bad\nname.yaml": "agents: [\n"})
    assert validate(tmp_path) == [
        "agents/bad\\nname.yaml:1: the file name 'bad\\nname' is not a group name (letters, digits, '.', '_' "
        "and '-'): rename the file or set group:",
        "agents/bad\\nname.yaml:2: invalid YAML: while parsing a flow node, did not find expected node content",
        "agentkit: 2 problems in the manifest"]


# --- values systemd 252 would ignore, or that break a unit ------------------------------------

def test_values_systemd_ignores_are_refused(tmp_path):
    manifest(tmp_path, {"g.yaml": one_agent(essential="true", memory_max="16384P",
                                            start_timeout="1000000000000d", restart="{burst: 4294967296}")})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: agents.A.memory_max: '16384P' is more than systemd can hold: at most 16383P, or "
        "infinity for no limit",
        "agents/g.yaml:3: agents.A.restart.burst: expected a whole number of starts from 1 to 4294967295, "
        "got 4294967296",
        "agents/g.yaml:3: agents.A.start_timeout: '1000000000000d' is too long: a time span is at most 24 days "
        "(24d)",
        "agentkit: 3 problems in the manifest"]


def test_a_description_too_long_for_a_unit_file(tmp_path):
    manifest(tmp_path, {"g.yaml": one_agent(description="x" * 2_000_000)})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: agents.A.description: 2,000,000 characters long: at most 65,536", SUMMARY_ONE]


def test_huge_numbers_are_named_without_printing_them(tmp_path):
    manifest(tmp_path, {"g.yaml": one_agent(cpu_weight="9" * 5000, memory_max=f'"{"9" * 5000}G"',
                                            idle_stop=f'"{"9" * 3000}s"')})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: agents.A.cpu_weight: invalid value: a number of 5,000 digits",
        "agents/g.yaml:3: agents.A.idle_stop: '9999999999999999999999999999999999999999' is too long: a time "
        "span is at most 24 days (24d)",
        "agents/g.yaml:3: agents.A.memory_max: 999999999999999999999999999999... (5,001 characters) is more "
        "than systemd can hold: at most 16383P, or infinity for no limit",
        "agentkit: 3 problems in the manifest"]


def test_an_environment_that_aliases_blow_up(tmp_path):
    text = ("host: alpha\ndefaults:\n  description: &big " + "x" * 60_000 + "\nagents:\n  A:\n"
            "    command: [/bin/true]\n    port: 7001\n    environment:\n"
            + "".join(f"      V{i}: *big\n" for i in range(50)))
    manifest(tmp_path, {"g.yaml": text})
    assert validate(tmp_path) == [
        "agents/g.yaml:8: agents.A.environment: the environment is 3,000,140 characters long: at most "
        "262,144 in all", SUMMARY_ONE]


@pytest.mark.systemd
def test_the_bounds_themselves_are_values_systemd_takes(tmp_path, systemd_analyze, bin_dir):
    """Every bound at its limit renders units that systemd-analyze verify accepts without a word:
    the bounds refuse only what systemd would have ignored or failed on."""
    longest = "x" * parsers.MAX_TEXT
    manifest(tmp_path, {"g.yaml": one_agent(
        essential="true", description=longest, memory_max="16383P", start_timeout="24d",
        restart="{burst: 1, delay: 12d, interval: 24d}", watchdog="24d",
        environment="{" + ", ".join(f"V{i}: {longest[:60_000]}" for i in range(4)) + "}")})
    status, lines = agentkit(tmp_path, "render", "-m", "agents", "--out", "build", "--bin-dir", str(bin_dir))
    assert status == 0, lines
    units = sorted(p.name for p in (tmp_path / "build" / "alpha").iterdir())
    result = subprocess.run([systemd_analyze, "verify", "--man=no", *units], cwd=tmp_path / "build" / "alpha",
                            capture_output=True, text=True, timeout=BOUND)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert values.parse_size("16383P") == values.MAX_BYTES - (1 << 50) + 2


def test_a_router_rule_that_backtracks_for_ever_is_refused(tmp_path):
    """Clients choose the task type a rule's pattern is matched against: '(a+)+$' against 30
    a's and a '!' would hold the router's event loop for hours."""
    manifest(tmp_path, {}, fleet=FLEET + textwrap.dedent("""\
        router:
          host: alpha
          local: {url: 'http://127.0.0.1:8080/v1', model: m}
          cloud: {url: 'https://cloud.test/v1', model: c}
          rules:
            summarize: 0.2
            '(a+)+$': cloud
            'training|fine_tuning': cloud
        """))
    assert validate(tmp_path) == [
        "agents/fleet.yaml:9: router.rules.(a+)+$: '(a+)+$' repeats a repetition, such as (a+)+: matching it "
        "against a task type could take exponential time; write it without the nested repeat", SUMMARY_ONE]


def test_a_long_value_in_defaults_repeated_in_every_agent(tmp_path):
    """Each value is within bounds, but 6,000 agents repeating three of 65,000 characters would
    render 1.5 GB of unit files (it ended in a MemoryError in render)."""
    long = "x" * 65_000
    text = (f"host: alpha\ndefaults:\n  command: [/bin/true]\n  description: &d {long}\n"
            "  environment: {A: *d, B: *d, C: *d}\nagents:\n"
            + "".join(f"  a{i}: {{port: {10000 + i}}}\n" for i in range(6000)))
    manifest(tmp_path, {"g.yaml": text})
    assert validate(tmp_path) == [
        "agents/fleet.yaml:2: hosts.alpha: the descriptions, commands and environments of its agents add up to "
        "1,487 MiB of unit files, at most 64 MiB (a long value in defaults: is repeated in every agent)",
        SUMMARY_ONE]


def test_thousands_of_problems_print_the_first_200_and_a_count(tmp_path):
    """3,000 dependencies with a typo each: a 'did you mean' for every one compared it with every
    agent (minutes); the first ones get a hint, and 200 lines are printed."""
    text = "host: alpha\nagents:\n" + "".join(
        f"  agent{i}: {{command: [/bin/true], port: {10000 + i}, depends_on: [agnet{i}]}}\n" for i in range(3000))
    manifest(tmp_path, {"g.yaml": text})
    lines = validate(tmp_path)
    assert len(lines) == 202 and lines[-2:] == ["agentkit: ... and 2,800 more (the first 200 are shown)",
                                                "agentkit: 3000 problems in the manifest"]
    assert lines[0] == "agents/g.yaml:3: agents.agent0.depends_on[0]: unknown agent 'agnet0' (did you mean 'agent0'?)"


def test_an_agent_may_not_take_the_name_of_agentkit_own_units(tmp_path):
    manifest(tmp_path, {"g.yaml": "host: alpha\nagents:\n  router: {command: [/bin/true], port: 7001}\n"
                                  "  status: {command: [/bin/true], port: 7002}\n"})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: agents.router: agentkit-router.service is agentkit's own unit: name the agent otherwise",
        "agents/g.yaml:4: agents.status: agentkit-status.service is agentkit's own unit: name the agent otherwise",
        "agentkit: 2 problems in the manifest"]


def test_a_scoped_address_for_the_router_is_refused(tmp_path):
    manifest(tmp_path, {}, fleet=FLEET + "router: {host: alpha, bind: 'fe80::1%lo', local: {url: "
                                         "'http://127.0.0.1:8080/v1', model: m}, cloud: {url: 'https://c.test/v1', "
                                         "model: c}}\n")
    assert validate(tmp_path) == [
        "agents/fleet.yaml:3: router.bind: a scoped address (fe80::1%lo) cannot be listened on by a systemd "
        "socket: use the address without its scope, or ::", SUMMARY_ONE]


def test_values_that_systemd_would_read_otherwise_are_refused(tmp_path):
    """A trailing backslash joins the next line (PartOf= vanished into the description); a quote or
    a backslash in a path is read by systemd, and ReadWritePaths= splits at a space."""
    manifest(tmp_path, {"g.yaml": "host: alpha\nagents:\n"
                                  "  A: {command: [/bin/true], port: 7001, description: 'ends in \\'}\n"
                                  "  B: {command: [/bin/true], port: 7002, working_directory: '/srv/\"q\"'}\n"
                                  "  C: {command: [/bin/true], port: 7003, writable_paths: ['/var/a b']}\n"
                                  "  D: {command: ['./rel\\ prog'], port: 7004}\n"})
    assert validate(tmp_path) == [
        "agents/g.yaml:3: agents.A.description: ends with a backslash, which in a unit file joins the next "
        "line to this one",
        "agents/g.yaml:4: agents.B.working_directory: expected an absolute path without spaces, quotes or "
        "backslashes, got '/srv/\"q\"'",
        "agents/g.yaml:5: agents.C.writable_paths[0]: expected an absolute path without spaces, quotes or "
        "backslashes, got '/var/a b'",
        "agents/g.yaml:6: agents.D.command: the program './rel\\\\ prog' has a backslash, which systemd "
        "refuses in an executable's name",
        "agentkit: 4 problems in the manifest"]


@pytest.mark.systemd
def test_specifier_characters_reach_systemd_as_written(tmp_path, systemd_analyze, bin_dir):
    manifest(tmp_path, {"g.yaml": one_agent(essential="true", description="'100% sure, %h'",
                                            working_directory="/srv/%b", writable_paths="[/var/lib/%n]",
                                            environment="{P: '50%'}")})
    status, lines = agentkit(tmp_path, "render", "-m", "agents", "--out", "build", "--bin-dir", str(bin_dir))
    assert status == 0, lines
    unit = (tmp_path / "build" / "alpha" / "agentkit-A.service").read_text()
    assert "Description=100%% sure, %%h\n" in unit and "WorkingDirectory=/srv/%%b\n" in unit
    assert "ReadWritePaths=/var/lib/%%n\n" in unit
    result = subprocess.run([systemd_analyze, "verify", "--man=no", "agentkit-A.service"],
                            cwd=tmp_path / "build" / "alpha", capture_output=True, text=True, timeout=BOUND)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- one broken file, and the problems that would follow from it ----------------------------

def test_a_syntax_error_in_a_file_others_depend_on_is_the_only_problem(tmp_path):
    files = {"a.yaml": "host: alpha\nagents:\n  Base: {command: [/bin/true], port: 7001\n"}
    for i in range(1, 4):
        files[f"b{i}.yaml"] = (f"host: alpha\nagents:\n  User{i}: {{command: [/bin/true], port: 710{i}, "
                               "depends_on: [Base]}\n")
    manifest(tmp_path, files, fleet=FLEET + "profiles:\n  p: {agents: [Base], groups: [a]}\n")
    assert validate(tmp_path) == [
        "agents/a.yaml:3: invalid YAML: while parsing a flow mapping that starts here, did not find expected "
        "',' or '}' (it is never closed)", SUMMARY_ONE]


def test_a_broken_fleet_file_is_the_only_problem(tmp_path):
    files = {f"g{i}.yaml": f"host: alpha\nagents:\n  A{i}: {{command: [/bin/true], port: 710{i}}}\n"
             for i in range(5)}
    manifest(tmp_path, files, fleet="hosts:\n  alpha: {address: '10.0.0.1}\n")
    assert validate(tmp_path) == [
        "agents/fleet.yaml:2: invalid YAML: while scanning a quoted scalar that starts here, found "
        "unexpected end of stream (it is never closed)", SUMMARY_ONE]


def test_hosts_written_as_a_list_is_one_problem_not_one_per_file(tmp_path):
    files = {f"g{i:02}.yaml": f"host: alpha\nagents:\n  A{i}: {{command: [/bin/true], port: {7100 + i}}}\n"
             for i in range(19)}
    manifest(tmp_path, files, fleet="hosts:\n  - alpha\nrouter: {host: alpha, local: {url: "
                                    "'http://127.0.0.1:8080/v1', model: m}, cloud: {url: 'https://x.test/v1', "
                                    "model: c}}\n")
    assert validate(tmp_path) == ["agents/fleet.yaml:1: hosts: expected the hosts (a mapping), got a list",
                                  SUMMARY_ONE]


def test_agents_with_a_bad_tag_leave_other_files_references_alone(tmp_path):
    manifest(tmp_path, {"a.yaml": "host: alpha\nagents: !!set {Base}\n",
                        "b.yaml": "host: alpha\nagents:\n  User: {command: [/bin/true], port: 7101, "
                                  "depends_on: [Base]}\n"})
    assert validate(tmp_path) == [
        "agents/a.yaml:2: agents: invalid value: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:set'", SUMMARY_ONE]


def test_agents_written_as_a_list_leave_other_files_references_alone(tmp_path):
    manifest(tmp_path, {"a.yaml": "host: alpha\nagents:\n  - Base\n",
                        "b.yaml": "host: alpha\nagents:\n  User: {command: [/bin/true], port: 7101, "
                                  "depends_on: [Base]}\n"})
    assert validate(tmp_path) == [
        "agents/a.yaml:2: agents: expected the agents, by name (a mapping), got a list", SUMMARY_ONE]
