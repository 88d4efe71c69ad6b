"""Why a test item failed, in one of five categories that every report sorts by.

A CI gate is read by category first: "the policies do not do what the scenario says" is a finding
about Istio or about the policies, "the probe could not tell" and "the mesh broke" are not, and an
invalid scenario never ran. So every failure the plugin raises is one of the exceptions below, and
its message starts with the category's tag (`policy verdict mismatch: ...`). The same tags drive the
Allure categories (`categories.json` and the Awesome report's config, both from `allure_categories`),
the JUnit message and the console, so they cannot drift apart: a test feeds each kind of failure
through the category rules and checks that it lands where it belongs.

Allure derives the status from the exception type (allure-pytest: AssertionError means `failed`,
anything else `broken`): a verdict mismatch is `failed` (a product defect), everything else is
`broken` (the run could not produce a verdict).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conformance import verdicts

if TYPE_CHECKING:
    from conformance.runner import StepResult
    from conformance.truthtable import Row
    from conformance.verdicts import Judgement


@dataclass(frozen=True)
class Category:
    """One failure category: its name in reports, the tag its messages start with, its Allure status."""

    name: str
    tag: str
    status: str  # "failed" | "broken" (Allure's statuses)
    description: str

    @property
    def message_regex(self) -> str:
        """Matches a message `<exception type>: <tag>: ...` (allure-pytest's `exconly()` form).

        Written to work in the three engines that read it: Java's `Pattern.matches` (Allure 2 CLI,
        whole string), and JavaScript's `RegExp.test` with and without the `s` flag (Allure 3's
        `allure2` plugin and its core): so `[\\s\\S]` rather than `.` for the multi-line tail.
        """
        return rf"^[\w.]+: {self.tag}:[\s\S]*"

    def matches(self, status: str, message: str) -> bool:
        return status == self.status and re.fullmatch(self.message_regex, message) is not None


MISMATCH = Category(
    "policy verdict mismatch", verdicts.MISMATCH, "failed",
    "The target observed a different outcome than the scenario expects: allowed instead of denied, "
    "a denial instead of allowed, another denial form, or a denial decided by another policy.",
)
UNPROVEN = Category(
    "denial without proof", verdicts.UNPROVEN, "broken",
    "A reset or a 503 that the enforcing proxy did not record as a policy denial: a broken certificate, "
    "a dead proxy or a wrong address look the same from the client, so this is never counted as a denial.",
)
INCONCLUSIVE = Category(
    "inconclusive probe (timeout / error)", verdicts.INCONCLUSIVE, "broken",
    "The probe timed out or ended in an error (refused connection, DNS failure, another status, a body "
    "from the wrong workload): nothing can be concluded about the policies.",
)
INFRASTRUCTURE = Category(
    "infrastructure failure", verdicts.INFRASTRUCTURE, "broken",
    "The target could not bring up the mesh, apply the policies or run the probes.",
)
INVALID = Category(
    "invalid scenario", "invalid scenario", "broken",
    "The scenario file is invalid; it did not run.",
)
# Most specific first: Allure puts a result in the first category that matches.
CATEGORIES: tuple[Category, ...] = (MISMATCH, UNPROVEN, INCONCLUSIVE, INFRASTRUCTURE, INVALID)
_BY_TAG = {c.tag: c for c in CATEGORIES}


def allure_categories() -> list[dict[str, Any]]:
    """`categories.json` (Allure 2 format, also accepted by Allure 3's config) for these categories."""
    return [{"name": c.name, "matchedStatuses": [c.status], "messageRegex": c.message_regex,
             "description": c.description} for c in CATEGORIES]


def category_of(status: str, message: str) -> Category | None:
    """The category a report puts a result in (first match, as Allure does); None for Allure's defaults."""
    return next((c for c in CATEGORIES if c.matches(status, message)), None)


class Failure(Exception):
    """A failed or broken test item; `str()` is its message, starting with the category's tag."""

    category: Category = INFRASTRUCTURE

    def __init__(self, message: str, result: StepResult | None = None):
        if not message.startswith(f"{self.category.tag}:"):
            message = f"{self.category.tag}: {message}"
        super().__init__(message)
        self.result = result

    @property
    def message(self) -> str:
        return str(self)


class PolicyVerdictMismatch(Failure, AssertionError):
    """The policies did not do what the scenario expects (Allure: failed)."""

    category = MISMATCH


class DenialWithoutProof(Failure):
    category = UNPROVEN


class InconclusiveProbe(Failure):
    category = INCONCLUSIVE


class InfrastructureFailure(Failure):
    category = INFRASTRUCTURE


class InvalidScenarioFailure(Failure):
    category = INVALID


_EXCEPTIONS: dict[str, type[Failure]] = {
    MISMATCH.tag: PolicyVerdictMismatch, UNPROVEN.tag: DenialWithoutProof, INCONCLUSIVE.tag: InconclusiveProbe,
    INFRASTRUCTURE.tag: InfrastructureFailure,
}


def step_failure(result: StepResult, repro: Callable[[Row], str] | None = None) -> Failure:
    """The failure of a step that did not conform: its primary category and the failing cells.

    The message is short enough for a JUnit `message` attribute (a headline, the command reproducing
    the first failing probe, then one line per failing cell) and says, per cell, what was expected and
    what was observed; the full tables, evidence, explanations and every probe's repro command are in
    the failure text and the Allure attachments.
    """
    from conformance.report import cell_line

    table = result.table
    failing = result.failing()
    found = {j.category for _, rec in failing if (j := rec.failing_judgement) is not None and j.category}
    tag = next((c.tag for c in CATEGORIES if c.tag in found), INCONCLUSIVE.tag)
    lines = [f"{tag}: {table.scenario.name} [{table.mode}] step {table.step.name}: "
             f"{len(failing)} of {len(table.rows)} probe(s) did not conform"]
    if repro is not None and failing:
        lines.append(f"reproduce: {repro(failing[0][0])}")
    lines += [cell_line(table, row, rec) for row, rec in failing]
    return _EXCEPTIONS[tag]("\n".join(lines), result)


def probe_failure(judgement: Judgement | None) -> Failure:
    """The failure of one probe (an Allure step), in its own judgement's category."""
    if judgement is None or judgement.passed or judgement.category not in _EXCEPTIONS:
        return InconclusiveProbe("never observed")
    return _EXCEPTIONS[judgement.category](f"{judgement.category}: {judgement.message}")
