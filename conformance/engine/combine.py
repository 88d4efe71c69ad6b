"""AND and OR of compiled checks (the sidecar/waypoint matcher in proxy.py and ztunnel's in ztunnel.py).

These run for every request or connection of every decision, so they avoid a generator per call: one check is
returned as it is, two are joined by one lambda, more by a plain loop (faster than all() or any() over a
generator, which cost more than the checks themselves on this path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def every(checks: Sequence[Callable[[T], bool]]) -> Callable[[T], bool]:
    """AND of `checks`: True for none."""
    if not checks:
        return lambda _: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda x: first(x) and second(x)

    def all_of(x: T) -> bool:
        for check in checks:  # noqa: SIM110
            if not check(x):
                return False
        return True

    return all_of


def some(checks: Sequence[Callable[[T], bool]]) -> Callable[[T], bool]:
    """OR of `checks`: False for none (a clause whose matches are all empty never matches)."""
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda x: first(x) or second(x)

    def any_of(x: T) -> bool:
        for check in checks:  # noqa: SIM110
            if check(x):
                return True
        return False

    return any_of
