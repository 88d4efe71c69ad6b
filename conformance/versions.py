"""Istio versions: parsing, ordering and the patch releases we pin.

Behaviour that changed inside a minor release (the dry-run change in 1.25.2, the regex escaping fixes
in 1.28.7 / 1.29.3) is keyed by patch, so a version given as `1.29` resolves to the patch release the
suite pins for it (the one the cluster targets install), never to an ambiguous "some 1.29".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from conformance.errors import UsageError

# The patch release each supported minor version resolves to. 1.30.3 is the release the golden data in
# ../shared/istio-golden comes from; 1.29.6 is the last 1.29 patch (research/kind-istio-practicals.md §3).
PINNED_PATCH: dict[tuple[int, int], int] = {
    (1, 22): 8,
    (1, 23): 6,
    (1, 24): 6,
    (1, 25): 5,
    (1, 26): 8,
    (1, 27): 9,
    (1, 28): 10,
    (1, 29): 6,
    (1, 30): 3,
}
DEFAULT_VERSION = "1.30"
OLDEST_SUPPORTED = (1, 22)

_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?$")


@total_ordering
@dataclass(frozen=True)
class IstioVersion:
    """A concrete Istio release (major.minor.patch)."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str | None) -> IstioVersion:
        """Parse `1.30`, `1.30.3` or `v1.30.3`; a minor-only version resolves to its pinned patch."""
        raw = (text or DEFAULT_VERSION).strip()
        match = _VERSION_RE.match(raw)
        if not match:
            raise UsageError(f"Istio version {raw!r} is not of the form 1.30 or 1.30.3")
        major, minor = int(match.group(1)), int(match.group(2))
        if (major, minor) < OLDEST_SUPPORTED:
            raise UsageError(
                f"Istio version {raw!r} is older than {OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]}, "
                "the oldest whose semantics the engine models"
            )
        if match.group(3) is not None:
            patch = int(match.group(3))
        elif (major, minor) in PINNED_PATCH:
            patch = PINNED_PATCH[(major, minor)]
        else:
            patch = 0
        return cls(major, minor, patch)

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return (self.major, self.minor, self.patch) >= (major, minor, patch)

    def fixed_in(self, *fixes: tuple[int, int, int]) -> bool:
        """True when this release carries a fix backported to several minors.

        `fixes` lists the first fixed patch of each minor, oldest first; a minor newer than the last one
        listed has the fix, a minor older than the first one does not.
        """
        for major, minor, patch in fixes:
            if (self.major, self.minor) == (major, minor):
                return self.patch >= patch
        newest = fixes[-1]
        return (self.major, self.minor) > (newest[0], newest[1])

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, IstioVersion):
            return NotImplemented
        return (self.major, self.minor, self.patch) < (other.major, other.minor, other.patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"
