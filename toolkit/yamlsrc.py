"""YAML files read into plain values, remembering the line of every key.

PyYAML's loaders forget where a value came from, and silently keep the last of
two equal keys. We compose the node tree instead (libyaml when present) and
build the values ourselves, so every problem can name its file and line.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import Problem

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_constructor = yaml.constructor.SafeConstructor()
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_COLLECTIONS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")

Path = tuple  # of str (mapping keys) and int (list indices)

# Bounds that keep a careless or hostile file from hanging or exhausting the loader.
# A manifest file is hand-written settings: the reference fleet's largest is 4 KiB,
# and a generated 10,000-agent manifest spreads over files of 20-50 agents each.
MAX_FILE_BYTES = 4 << 20
# Values an alias may add by repeating what its anchor holds: "billion laughs"
# (nine lists of nine aliases, a few hundred bytes) would expand to 10^9.
MAX_ALIASED_VALUES = 100_000
# Settings nest a few levels (router.peers.pc2.models[0].name is five); libyaml
# itself stops at 1,000, the pure-Python parser only at the interpreter's stack.
MAX_DEPTH = 64
# The characters YAML 1.1 allows in a stream (5.1); libyaml reports others by byte offset.
_UNPRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A mapping key shown bare in a path; any other is quoted, so that a name with a space
# or a newline can neither break the FILE:LINE: path: message form nor forge a line.
_BARE_KEY = re.compile(r"^[^\s\"'\[\]\\]+$")


class _Invalid:
    """Stands for a value that was already reported as a problem: no follow-on problems."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID = _Invalid()


def dotted(path: Path) -> str:
    """('agents', 'STT', 'depends_on', 1) -> 'agents.STT.depends_on[1]'.

    A path deeper than any setting (only a hostile file makes one) keeps its ends."""
    if len(path) > 12:
        return f"{dotted(path[:4])}...{dotted(path[-2:])}"
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = str(part)
        if len(part) > 80:  # a key of a megabyte stays a readable line
            part = json.dumps(f"{part[:60]}... ({len(part):,} characters)")
        elif not (_BARE_KEY.match(part) and part.isprintable()):
            part = json.dumps(part)  # agents."a b", agents."A\nB"
        out += f".{part}" if out else part
    return out


@dataclass
class Document:
    """One YAML file: its values, and the line where each path starts."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    whole: bool = True  # False: unreadable, or not YAML; its problem says why

    def line(self, path: Path) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def problem(self, path: Path, message: str) -> Problem:
        return Problem(self.file, self.line(path), dotted(path), message)


def read(file: str) -> tuple[Document, list[Problem]]:
    """Read and parse one manifest file: a regular file of at most MAX_FILE_BYTES, in UTF-8.

    Opened without blocking and checked before reading, so that a FIFO, a device
    (a symlink to /dev/zero) or a directory is refused instead of read forever."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        return _unreadable(file, f"cannot read: {exc.strerror}")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        return _unreadable(file, f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'a special file')}): "
                                 "a manifest file is YAML text")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        return _unreadable(file, f"larger than {MAX_FILE_BYTES >> 20} MiB: a manifest file is settings, "
                                 "not data (split the agents over several files)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        return _unreadable(file, f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column {column}", line)
    return load(text, file)


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _unreadable(file: str, message: str, line: int = 0) -> tuple[Document, list[Problem]]:
    return Document(file, None, whole=False), [Problem(file, line, "", message)]


def load(text: str, file: str) -> tuple[Document, list[Problem]]:
    """Parse one YAML document. Syntax errors and duplicate keys are problems.

    A document that is not whole (a syntax error, an alias bomb, nesting too deep)
    has whole=False: what the other files say about its agents would be guesses."""
    bad = _UNPRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - text.rfind("\n", 0, bad.start())
        char = bad.group()
        what = "a NUL byte" if char == "\0" else f"the control character U+{ord(char):04X}"
        return Document(file, None, whole=False), [Problem(
            file, line, "", f"invalid YAML: {what} at column {column} (YAML allows no control characters; "
                            "write it as an escape, such as \\t, in a double-quoted string)")]
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        line, what = _syntax_error(exc, text)
        return Document(file, None, whole=False), [Problem(file, line, "", f"invalid YAML: {what}")]
    except yaml.YAMLError as exc:  # pragma: no cover - libyaml reader errors without a mark
        return Document(file, None, whole=False), [Problem(file, 1, "", f"invalid YAML: {exc}")]
    except RecursionError:  # the pure-Python composer, without libyaml
        return Document(file, None, whole=False), [Problem(file, 1, "", "invalid YAML: nested too deeply")]
    doc = Document(file, None)
    problems: list[Problem] = []
    if root is not None:
        doc.lines[()] = root.start_mark.line + 1
        builder = _Builder(doc, problems)
        try:
            doc.data = builder.build(root, (), 0, False)
        except _Abandon:
            doc.data, doc.whole = None, False
    return doc, problems


def _syntax_error(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, str]:
    """The line to name and what went wrong. Where the file ends before something that
    was opened is closed (a quote, a bracket), the line is where it was opened."""
    problem, context = exc.problem_mark, exc.context_mark
    what = ", ".join(part for part in (exc.context, exc.problem) if part) or "cannot be parsed"
    if problem is None:
        return (context.line + 1 if context else 1), what
    if context is None or context.line >= problem.line or not exc.context:
        return problem.line + 1, what
    if not text[problem.index:].strip():
        return context.line + 1, f"{exc.context} that starts here, {exc.problem} (it is never closed)"
    return problem.line + 1, f"{exc.context} that starts at line {context.line + 1}, {exc.problem}"


class _Abandon(Exception):
    """The document is given up: its problem is reported, nothing of it is used."""


class _Builder:
    """Builds the values of one node tree, bounded: aliases expand to at most
    MAX_ALIASED_VALUES values, none refers to a value that holds it, and nothing nests
    deeper than MAX_DEPTH."""

    def __init__(self, doc: Document, problems: list[Problem]) -> None:
        self.doc, self.problems = doc, problems
        self.built: set[int] = set()  # nodes built once: meeting one again is an alias
        self.open: set[int] = set()  # nodes being built: meeting one of them is a cycle
        self.aliased = 0
        self.alias_at: Path = ()  # where the alias being expanded is used

    def fail(self, path: Path, message: str) -> None:
        # An alias's node carries its anchor's line: name the nearest key, whose line is its own.
        while path and isinstance(path[-1], int):
            path = path[:-1]
        self.problems.append(self.doc.problem(path, message))
        raise _Abandon

    def build(self, node: yaml.Node, path: Path, depth: int, aliased: bool) -> Any:
        key = id(node)
        if key in self.open:
            self.fail(path, "this alias names a value that holds the alias itself: it would never end")
        if depth > MAX_DEPTH:
            self.fail(path, f"nested more than {MAX_DEPTH} levels deep")
        if key in self.built and not aliased:
            aliased, self.alias_at = True, path
        self.built.add(key)
        if aliased:
            self.aliased += 1
            if self.aliased > MAX_ALIASED_VALUES:
                self.fail(self.alias_at, f"aliases expand to more than {MAX_ALIASED_VALUES:,} values (an alias "
                                         "bomb?): write the values out, or share them through defaults:")
        if not isinstance(node, yaml.CollectionNode):
            return self.scalar(node, path)
        if node.tag not in _COLLECTIONS:  # !!python/object/apply:..., !!set: no constructor runs
            self.problems.append(Problem(self.doc.file, node.start_mark.line + 1, dotted(path),
                                         f"invalid value: could not determine a constructor for the tag {node.tag!r}"))
            return INVALID
        self.open.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path, depth, aliased)
            return [self.item(item, path + (index,), depth, aliased) for index, item in enumerate(node.value)]
        finally:
            self.open.discard(key)

    def item(self, node: yaml.Node, path: Path, depth: int, aliased: bool) -> Any:
        self.doc.lines.setdefault(path, node.start_mark.line + 1)
        return self.build(node, path, depth + 1, aliased)

    def mapping(self, node: yaml.MappingNode, path: Path, depth: int, aliased: bool) -> dict[str, Any]:
        doc, out = self.doc, {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(Problem(doc.file, key_node.start_mark.line + 1, dotted(path),
                                             "a key must be a plain name, not a list or mapping"))
                continue
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(Problem(doc.file, key_node.start_mark.line + 1, dotted(path),
                                             "'<<' merge keys are not supported; use defaults:"))
                continue
            key = key_node.value
            child = path + (key,)
            line = key_node.start_mark.line + 1
            if key in out:
                self.problems.append(Problem(doc.file, line, dotted(child),
                                             f"duplicate key (first at line {doc.lines[child]})"))
                continue
            doc.lines.setdefault(child, line)
            out[key] = self.build(value_node, child, depth + 1, aliased)
        return out

    def scalar(self, node: yaml.Node, path: Path) -> Any:
        if node.tag == _STR:
            return node.value
        if node.tag == _INT and len(node.value) > 100:  # int() refuses past 4,300 digits, slowly
            self.problems.append(Problem(self.doc.file, node.start_mark.line + 1, dotted(path),
                                         f"invalid value: a number of {len(node.value):,} digits"))
            return INVALID
        try:
            return _constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            message = exc.problem or str(exc).splitlines()[0]
        except (yaml.YAMLError, ValueError, TypeError) as exc:  # e.g. '!!int abc'
            message = str(exc).splitlines()[0]
        self.problems.append(Problem(self.doc.file, node.start_mark.line + 1, dotted(path),
                                     f"invalid value: {message}"))
        return INVALID
