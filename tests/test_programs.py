"""Where a command's program is found, and what check() says about one that cannot run.

The sandbox's own verdicts (hidden paths, DynamicUser=) are shown on a real systemd in
tests/e2e/test_byo.py; here the lookup order and the messages, on this machine's files.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from agentkit import manifest, programs

REPO = Path(__file__).resolve().parents[1]


def agent(**changes):
    base = manifest.load(str(REPO / "examples" / "byo")).agents["files"]
    return replace(base, **changes)


def test_a_bare_name_is_agentkits_own_then_the_bin_dirs_then_paths(tmp_path, monkeypatch):
    bin_dir, elsewhere = tmp_path / "bin", tmp_path / "elsewhere"
    bin_dir.mkdir()
    elsewhere.mkdir()
    for directory in (bin_dir, elsewhere):
        tool = directory / "tool"
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    (elsewhere / "other").write_text("#!/bin/sh\n")
    (elsewhere / "other").chmod(0o755)
    monkeypatch.setenv("PATH", str(elsewhere))
    assert programs.find("tool", str(bin_dir)) == str(bin_dir / "tool")
    assert programs.find("other", str(bin_dir)) == str(elsewhere / "other")
    # agentkit's own programs are the bin dir's even where it is not (a render for another machine).
    assert programs.find("agentkit-agent", "/nowhere/bin") == "/nowhere/bin/agentkit-agent"
    assert programs.find("no-such-tool", str(bin_dir)) is None
    assert programs.resolve(("no-such-tool", "-x"), str(bin_dir)) == (str(bin_dir / "no-such-tool"), "-x")


def test_check_names_a_missing_and_a_non_executable_program(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    plain = tmp_path / "plain"
    plain.write_text("data\n")
    issues = list(programs.check([agent(command=("no-such-tool",)), agent(name="other", command=(str(plain),))],
                                 str(tmp_path), sandboxed=False))
    assert [(i.agent, i.path) for i in issues] == [("files", ("command",)), ("other", ("command",))]
    assert "program 'no-such-tool' is neither in agentkit's bin directory" in issues[0].message
    assert issues[1].message == f"{plain} is not an executable file (chmod +x, or name the program that runs it)"


def test_under_the_sandbox_a_hidden_program_or_interpreter_is_named(tmp_path):
    script = tmp_path / "tool"
    script.write_text("#!/usr/bin/python3\n")
    script.chmod(0o755)
    (issue,) = programs.check([agent(command=(str(script),))], "/nowhere", sandboxed=True)
    assert issue.message.startswith(f"{script} is under /tmp (PrivateTmp=yes), which the sandbox hides")
    # sandbox: false lifts it; supervisord has no sandbox at all.
    assert list(programs.check([agent(command=(str(script),), sandbox=False)], "/nowhere", sandboxed=True)) == []
    assert list(programs.check([agent(command=(str(script),))], "/nowhere", sandboxed=False)) == []
    # A program the sandbox shows is fine, also when its interpreter is this Python.
    assert list(programs.check([agent(command=(os.path.realpath(sys.executable), "-V"))], "/nowhere",
                               sandboxed=True)) == []


def test_a_directory_others_may_not_enter_is_the_one_named():
    # Not under pytest's tmp_path: its own root is 0700, and would be the one named.
    base = Path(tempfile.mkdtemp(prefix="agentkit-test-", dir="/var/tmp"))
    base.chmod(0o755)
    closed = base / "closed"
    (closed / "inner").mkdir(parents=True)
    tool = closed / "inner" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    closed.chmod(0o700)
    try:
        assert programs._denied(str(tool), None, set(), script=True) == str(closed)
        assert programs._denied(str(tool), 0, {0}, script=True) is None  # root passes
        closed.chmod(0o755)
        tool.chmod(0o711)  # runnable, not readable: a script's interpreter could not read it
        assert programs._denied(str(tool), None, set(), script=True) == str(tool)
        assert programs._denied(str(tool), None, set(), script=False) is None
    finally:
        shutil.rmtree(base)


def test_a_venvs_own_interpreter_is_not_taken_for_the_hosts(tmp_path, monkeypatch):
    bin_dir, host_bin = tmp_path / "venv-bin", tmp_path / "usr-bin"
    for directory in (bin_dir, host_bin):
        directory.mkdir()
        for name in ("python3", "pip"):
            (directory / name).write_text("#!/bin/sh\n")
            (directory / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(host_bin))
    assert programs.find("python3", str(bin_dir)) == str(host_bin / "python3")
    assert programs.find("pip", str(bin_dir)) == str(host_bin / "pip")


def test_a_scripts_hidden_interpreter_is_named(tmp_path):
    interpreter = tmp_path / "python"  # under /tmp: hidden from the agent
    interpreter.write_text("#!/bin/sh\n")
    interpreter.chmod(0o755)
    place = Path(tempfile.mkdtemp(prefix="agentkit-test-", dir="/opt"))
    try:
        place.chmod(0o755)
        script = place / "tool"
        script.write_text(f"#!{interpreter}\n")
        script.chmod(0o755)
        (issue,) = programs.check([agent(command=(str(script),))], "/nowhere", sandboxed=True)
        assert issue.message.startswith(f"{interpreter}, the interpreter of {script}, is under /tmp "
                                        "(PrivateTmp=yes)"), issue.message
    finally:
        shutil.rmtree(place)
