"""file:line:column of the field a finding or a validation error concerns, from YAML node positions.

Problems name their place in words (`Location(file, where, field)`: "step 'a': policies[1] p.yaml document 2
(AuthorizationPolicy shop/x)" and "spec.rules[0].from"), which a person can follow but an editor, a GitHub
annotation or SARIF cannot. This module turns those words back into a position: it composes the file with
`yaml.compose_all` (which keeps each node's start mark) and walks the node tree by the field path. It reads the
files itself, independently of the scenario loader, so a position can be given even for a file the loader refused.

A policy may be written inline in a scenario step or in a policy file the step references, so `where` decides
which file and which node the field is relative to. When a path cannot be followed to the end (the field is
missing, e.g. "spec.selector" of a policy without one), the deepest node found is given: the place to add it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from conformance.errors import Location, Problem

_STEP = re.compile(r"^step '(?P<step>.*?)'(?::\s*(?P<rest>.*))?$")
_INLINE = re.compile(r"^policies\[(?P<k>\d+)\](?:\s*\(.*\))?$")
_FILE_DOC = re.compile(r"^policies\[(?P<k>\d+)\] (?P<rel>.+?) document (?P<n>\d+)(?: items\[(?P<j>\d+)\])?"
                       r"(?:\s*\(.*\))?$")
_DOC = re.compile(r"^document (?P<n>\d+)(?: items\[(?P<j>\d+)\])?(?:\s*\(.*\))?$")
_PROBE = re.compile(r"^probe expect\[(?P<j>\d+)\]")
_WORKLOAD = re.compile(r"^workload '(?P<ns>[^/']*)/(?P<name>[^']*)'$")
_TOKEN = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


@dataclass(frozen=True)
class Position:
    """A place in a file: 1-based line and column, as editors, GitHub annotations and SARIF count them.

    `end_line` is the last line of the node found (for a policy, the whole document), so a suppression comment
    anywhere in a policy can be tied to it."""

    file: str
    line: int
    column: int
    end_line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@lru_cache(maxsize=256)
def _documents(path: str, mtime: float) -> tuple[Node, ...]:
    """The file's non-empty documents as YAML nodes, numbered as the loader numbers them (empty ones skipped)."""
    del mtime  # part of the cache key only: a file edited between two calls is read again
    try:
        nodes = list(yaml.compose_all(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ()
    return tuple(n for n in nodes if n is not None
                 and not (isinstance(n, ScalarNode) and n.tag == "tag:yaml.org,2002:null"))


def documents(path: str | Path) -> tuple[Node, ...]:
    p = Path(path)
    try:
        mtime = p.stat().st_mtime
    except OSError:
        return ()
    return _documents(str(p.resolve()), mtime)


def _key(node: Node, key: str) -> tuple[Node, Node] | None:
    if not isinstance(node, MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.value == key:
            return k, v
    return None


def walk(node: Node, path: str | Sequence[str | int]) -> tuple[Node, bool]:
    """The node `path` leads to (a mapping key's own node for the last step, so the position is the field's name),
    and whether the whole path was followed; else the deepest node reached.

    Keys that hold dots (label keys such as `app.kubernetes.io/name`) are matched by joining the next tokens."""
    tokens: list[str | int] = list(path) if not isinstance(path, str) else [
        int(m.group(1)) if m.group(1) is not None else m.group(2) for m in _TOKEN.finditer(path)]
    current, shown = node, node
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if isinstance(t, int):
            if not isinstance(current, SequenceNode) or t >= len(current.value):
                return shown, False
            current = shown = current.value[t]
            i += 1
            continue
        found = None
        for j in range(len(tokens), i, -1):  # the longest dotted key first
            parts = tokens[i:j]
            if all(isinstance(p, str) for p in parts):
                found = _key(current, ".".join(str(p) for p in parts))
                if found:
                    i = j
                    break
        if found is None:
            return shown, False
        shown, current = found
    return shown, True


def _scenario_step(root: Node, step: str) -> tuple[int, Node] | None:
    spec = _key(root, "spec")
    steps = _key(spec[1], "steps") if spec else None
    if steps is None or not isinstance(steps[1], SequenceNode):
        return None
    for i, item in enumerate(steps[1].value):
        name = _key(item, "name")
        if name and isinstance(name[1], ScalarNode) and name[1].value == step:
            return i, item
    return None


def _workload_node(root: Node, namespace: str, name: str) -> Node | None:
    """The `spec.workloads` entry of `namespace/name` (a workload without a namespace is in `default`)."""
    spec = _key(root, "spec")
    items = _key(spec[1], "workloads") if spec else None
    if items is None or not isinstance(items[1], SequenceNode):
        return None
    for item in items[1].value:
        got = {k: _key(item, k) for k in ("name", "namespace")}
        values = {k: v[1].value if v and isinstance(v[1], ScalarNode) else None for k, v in got.items()}
        if values["name"] == name and (values["namespace"] or "default") == namespace:
            return item
    return None


def resolve(location: Location) -> tuple[str, Node, str] | None:
    """(file, node, field relative to that node) for a problem's location: the file the field is written in (a
    referenced policy file, not the scenario), the node `where` names in it, and the rest of the path."""
    file, where, field = location.file, location.where, location.field
    docs = documents(file)
    if not docs:
        return None
    root = docs[0]
    m = _DOC.match(where)
    if m:  # a raw policy file's document
        n = int(m.group("n"))
        if n > len(docs):
            return None
        node: Node = docs[n - 1]
        if m.group("j") is not None:
            node = walk(node, ["items", int(m.group("j"))])[0]
        return file, node, field
    m = _STEP.match(where)
    workload = _WORKLOAD.match(where)
    if not m and workload and field and not field.startswith("spec."):  # a field of that workload's entry
        node = _workload_node(root, workload.group("ns"), workload.group("name"))
        return (file, node, field) if node is not None else (file, root, "")
    if not m:
        return file, root, field
    found = _scenario_step(root, m.group("step"))
    if found is None:
        return file, root, ""
    _, step_node = found
    rest = m.group("rest") or ""
    inline = _INLINE.match(rest)
    if inline:
        node, ok = walk(step_node, ["policies", int(inline.group("k"))])
        return (file, node, field) if ok else (file, step_node, "")
    ref = _FILE_DOC.match(rest)
    if ref:
        target = (Path(file).parent / ref.group("rel")).resolve()
        target_docs = documents(target)
        n = int(ref.group("n"))
        if n > len(target_docs):
            return file, walk(step_node, ["policies", int(ref.group("k"))])[0], ""
        shown = _shown(target)
        node = target_docs[n - 1]
        if ref.group("j") is not None:
            node = walk(node, ["items", int(ref.group("j"))])[0]
        return shown, node, field
    probe = _PROBE.match(rest)
    if probe:
        node, ok = walk(step_node, ["expect", int(probe.group("j"))])
        return (file, node, field) if ok else (file, step_node, "")
    return file, step_node, field


def _shown(path: Path) -> str:
    """A path as the user would write it: relative to the current directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def locate(location: Location) -> Position | None:
    """The position of a problem's field (or the deepest part of it that exists); None when the file cannot be
    read as YAML at all."""
    found = resolve(location)
    if found is None:
        return None
    file, node, field = found
    target, _ = walk(node, field) if field else (node, True)
    return Position(file, target.start_mark.line + 1, target.start_mark.column + 1, node.end_mark.line + 1)


def policy_node(location: Location) -> tuple[str, Node] | None:
    """The whole policy document a location is in (for its suppression annotation and comments), if any."""
    found = resolve(location)
    if found is None:
        return None
    file, node, _ = found
    if isinstance(node, MappingNode) and _key(node, "kind") and _key(node, "metadata"):
        return file, node
    return None


def lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def placed(problem: Problem) -> str:
    """A problem as one line that starts with the file:line:col of its field (compiler style, what editors, CI logs
    and JUnit readers link), then where, the field and the message; the problem as it is when no position is found."""
    pos = locate(problem.location)
    text = str(problem)
    if pos is None:
        return text
    prefix = f"{problem.location.file}: "
    return f"{pos}: {text.removeprefix(prefix) if text.startswith(prefix) else text}"
