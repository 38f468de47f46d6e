"""YAML files read into plain values, remembering the line of every key.

PyYAML's loaders forget where a value came from, and silently keep the last of
two equal keys. We compose the node tree instead (libyaml when present) and
build the values ourselves, so every problem can name its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import Problem

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_constructor = yaml.constructor.SafeConstructor()
_STR = "tag:yaml.org,2002:str"

Path = tuple  # of str (mapping keys) and int (list indices)


class _Invalid:
    """Stands for a value that was already reported as a problem: no follow-on problems."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID = _Invalid()


def dotted(path: Path) -> str:
    """('agents', 'STT', 'depends_on', 1) -> 'agents.STT.depends_on[1]'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Document:
    """One YAML file: its values, and the line where each path starts."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

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


def load(text: str, file: str) -> tuple[Document, list[Problem]]:
    """Parse one YAML document. Syntax errors and duplicate keys are problems."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = ", ".join(part for part in (exc.context, exc.problem) if part) or "cannot be parsed"
        return Document(file, None), [Problem(file, line, "", f"invalid YAML: {what}")]
    except yaml.YAMLError as exc:  # pragma: no cover - libyaml reader errors without a mark
        return Document(file, None), [Problem(file, 1, "", f"invalid YAML: {exc}")]
    doc = Document(file, None)
    problems: list[Problem] = []
    if root is not None:
        doc.lines[()] = root.start_mark.line + 1
        doc.data = _build(root, (), doc, problems)
    return doc, problems


def _build(node: yaml.Node, path: Path, doc: Document, problems: list[Problem]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(doc.file, key_node.start_mark.line + 1, dotted(path),
                                        "a key must be a plain name, not a list or mapping"))
                continue
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(Problem(doc.file, key_node.start_mark.line + 1, dotted(path),
                                        "'<<' merge keys are not supported; use defaults:"))
                continue
            key = key_node.value
            child = path + (key,)
            line = key_node.start_mark.line + 1
            if key in out:
                problems.append(Problem(doc.file, line, dotted(child),
                                        f"duplicate key (first at line {doc.lines[child]})"))
                continue
            doc.lines[child] = line
            out[key] = _build(value_node, child, doc, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = path + (index,)
            doc.lines[child] = item.start_mark.line + 1
            items.append(_build(item, child, doc, problems))
        return items
    if node.tag == _STR:
        return node.value
    try:
        return _constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        message = exc.problem or str(exc).splitlines()[0]
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # e.g. '!!int abc'
        message = str(exc).splitlines()[0]
    problems.append(Problem(doc.file, node.start_mark.line + 1, dotted(path),
                            f"invalid value: {message}"))
    return INVALID
