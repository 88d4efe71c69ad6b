"""The suite's own exceptions: errors a user can act on, each saying where and what.

Every error that reaches a user names the file, the place in it (step, probe or document) and the
field, on one line, so that the CLI and the pytest plugin can print it without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class ConformanceError(Exception):
    """Base class of every error the suite reports to its user."""


class UsageError(ConformanceError):
    """A bad command-line value or option."""


@dataclass(frozen=True)
class Location:
    """Where in a scenario something is: file, then step, probe or document, then field."""

    file: str
    where: str = ""
    field: str = ""

    def __str__(self) -> str:
        parts = [self.file]
        if self.where:
            parts.append(self.where)
        if self.field:
            parts.append(f"field {self.field}")
        return ": ".join(parts)


@dataclass(frozen=True)
class Problem:
    """One finding about a scenario: an error (it cannot run), a warning (it runs, but look), or a notice (it runs;
    this is what the suite skipped or assumed in the files it read)."""

    location: Location
    message: str
    severity: str = "error"  # "error" | "warning" | "notice" (what was skipped or assumed, and why)

    def __str__(self) -> str:
        tag = "" if self.severity == "error" else f"{self.severity}: "
        # one problem, one line: a field name or value taken from the input may hold line breaks
        return f"{self.location}: {tag}{self.message}".replace("\r", "\\r").replace("\n", "\\n")


class ScenarioError(ConformanceError):
    """A scenario file that cannot run: one or more problems, each one line."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = [p for p in problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in self.problems))


class NotModelled(ScenarioError):
    """A valid scenario that uses what the verdict engine does not model yet (JWT and CUSTOM while issue 11 is
    under way): refused at prediction time, with file, step, document and field, instead of a prediction that
    silently ignores the policy or the token."""


class TargetError(ConformanceError):
    """A target (local mesh, kind, cluster) could not do what it was asked: infrastructure, not policy."""


class TargetUnavailable(ConformanceError):
    """A target cannot run here at all (missing Docker, kind, istioctl, curl ...): a reason to skip."""


def yaml_type(value: object, article: bool = False) -> str:
    """What a YAML value is, in the words of an error message ("must be a list, not a string"): shared by
    the scenario loader and the policy validation so both say it the same way."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        name = "boolean"
    elif isinstance(value, int):
        name = "integer"
    elif isinstance(value, float):
        name = "number"
    elif isinstance(value, str):
        name = "string"
    elif isinstance(value, Mapping):
        name = "mapping"
    elif isinstance(value, (list, tuple)):
        name = "list"
    else:
        return type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}" if article else name


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice a misspelt `word` most likely meant (difflib's ratio ≥ `cutoff`), for "did you mean"."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return found[0] if found else None
