"""Which lint findings a team wants: `--select` / `--ignore`, the config section, and per-policy suppression.

In the manner of ruff: a config is the nearest `.authz-conformance.yaml` (its `lint:` section) or `pyproject.toml`
with a `[tool.authz-conformance.lint]` table, looked for from each linted file's directory upwards, so a policy
repository sets its rules once and every path under it follows them; `--select` replaces the config's selection and
`--ignore` adds to its ignores. One policy can silence codes for itself only, where the reason is visible beside
it: the annotation `authz-conformance.io/ignore: AC201,AC202` or a comment `# authz-conformance: ignore[AC201]`
inside the policy (or on the line just above it).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode

from conformance.errors import Location, UsageError
from conformance.lint_rules import BY_CODE, RULES, matches
from conformance.positions import lines, policy_node

ANNOTATION = "authz-conformance.io/ignore"
_COMMENT = re.compile(r"#\s*authz-conformance:\s*ignore\[([^\]]*)\]")
FAIL_ON = ("error", "warning", "never")


@dataclass(frozen=True)
class LintConfig:
    """What to report and when to fail. `fail_on`: "error" (default: contradictions and invalid policies fail),
    "warning" (any warning fails too) or "never"."""

    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    fail_on: str = "error"
    source: str = ""  # the file it was read from ("" = defaults)

    def enabled(self, code: str) -> bool:
        return matches(code, self.select) and not matches(code, self.ignore)

    def fails(self, severity: str) -> bool:
        if severity == "error":
            return self.fail_on != "never"
        return severity == "warning" and self.fail_on == "warning"

    def with_cli(self, select: Sequence[str] | None, ignore: Sequence[str] | None,
                 fail_on: str | None) -> LintConfig:
        """The command line over the config: --select replaces the selection, --ignore extends the ignores."""
        out = self
        if select:
            out = replace(out, select=codes(select, "--select"))
        if ignore:
            out = replace(out, ignore=out.ignore + codes(ignore, "--ignore"))
        if fail_on:
            out = replace(out, fail_on=fail_on)
        return out


def codes(values: Sequence[str] | str, where: str) -> tuple[str, ...]:
    """Codes, prefixes or rule names, comma-separated or listed; one that names no rule is an error (a typo would
    otherwise select or silence nothing without a word)."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise UsageError(f"{where}: rule codes must be strings, not {item!r}")
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            if not any(matches(r.code, [part]) for r in RULES):
                raise UsageError(f"{where}: {part!r} names no lint rule (see authz-conformance lint --rules)")
            out.append(part)
    return tuple(out)


def _from_mapping(section: Mapping[str, Any], source: str) -> LintConfig:
    unknown = sorted(set(section) - {"select", "ignore", "fail-on"})
    if unknown:
        raise UsageError(f"{source}: unknown lint setting(s) {', '.join(unknown)} (select, ignore, fail-on)")
    fail_on = section.get("fail-on", "error")
    if fail_on not in FAIL_ON:
        raise UsageError(f"{source}: fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
    return LintConfig(codes(section.get("select", "ALL"), f"{source}: select"),
                      codes(section.get("ignore", ()), f"{source}: ignore"), fail_on, source)


@lru_cache(maxsize=64)
def _config_in(directory: str) -> LintConfig | None:
    d = Path(directory)
    own = d / ".authz-conformance.yaml"
    if own.is_file():
        try:
            doc = yaml.safe_load(own.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"{own}: cannot read: {exc}") from exc
        section = doc.get("lint", {}) if isinstance(doc, Mapping) else None
        if not isinstance(section, Mapping):
            raise UsageError(f"{own}: the lint section must be a mapping")
        return _from_mapping(section, str(own))
    pyproject = d / "pyproject.toml"
    if pyproject.is_file():
        try:
            doc = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{pyproject}: cannot read: {exc}") from exc
        section = doc.get("tool", {}).get("authz-conformance", {}).get("lint")
        if isinstance(section, Mapping):
            return _from_mapping(section, f"{pyproject} [tool.authz-conformance.lint]")
    return None


def config_for(path: str | Path) -> LintConfig:
    """The nearest config above a linted file (its own directory first), or the defaults."""
    start = Path(path).resolve()
    for d in [start if start.is_dir() else start.parent, *(start if start.is_dir() else start.parent).parents]:
        found = _config_in(str(d))
        if found is not None:
            return found
    return LintConfig()


def suppressed_codes(location: Location) -> tuple[str, ...]:
    """The codes the policy a finding is about silences for itself: its `authz-conformance.io/ignore` annotation
    and `# authz-conformance: ignore[...]` comments inside it or on the line above it."""
    found = policy_node(location)
    if found is None:
        return ()
    file, node = found
    out: list[str] = []
    meta = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == "metadata"), None)
    ann = next((v for k, v in meta.value if isinstance(k, ScalarNode) and k.value == "annotations"), None) \
        if isinstance(meta, MappingNode) else None
    if isinstance(ann, MappingNode):
        for k, v in ann.value:
            if isinstance(k, ScalarNode) and k.value == ANNOTATION and isinstance(v, ScalarNode):
                out += [c.strip() for c in v.value.split(",") if c.strip()]
    text = lines(file)
    first = max(node.start_mark.line - 1, 0)
    last = min(node.end_mark.line if node.end_mark.column > 0 else node.end_mark.line - 1, len(text) - 1)
    while last > node.start_mark.line and (not text[last].strip() or text[last].lstrip().startswith("#")):
        last -= 1  # comments after the policy's last line are the next one's
    for i in range(first, last + 1):
        line = text[i]
        if i == first and i < node.start_mark.line and not line.lstrip().startswith("#"):
            continue  # the line above counts only when it is a comment of its own
        for m in _COMMENT.finditer(line):
            out += [c.strip() for c in m.group(1).split(",") if c.strip()]
    return tuple(out)


def is_suppressed(code: str, location: Location) -> bool:
    return code in BY_CODE and matches(code, list(suppressed_codes(location)))
