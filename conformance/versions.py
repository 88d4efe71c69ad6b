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

# The patch release each supported minor version resolves to. 1.30.3 is the release Istio's golden data in
# tests/data/istio-golden comes from; 1.29.6 is the last 1.29 patch (clusters/versions.yaml installs both).
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

# Every release the engine models: each supported minor from its .0 up to the patch it pins. A release
# outside this list (1.31, 2.0, 9.99, or 1.30.9, newer than the pinned 1.30.3) is refused everywhere: the
# engine's version switches (dry-run in 1.25.2, path templates in 1.23.5, trustDomains in 1.30.2, ...) are
# only known up to the pinned patch, so a prediction "for 1.30.9" would silently be one for 1.30.3, and
# `compare --to 1.99` would report "0 probes change" for a release nobody has looked at.
MODELLED_VERSIONS: tuple[tuple[int, int, int], ...] = tuple(
    (major, minor, patch)
    for (major, minor), pinned in sorted(PINNED_PATCH.items())
    for patch in range(pinned + 1)
)

_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?$")


def is_modelled(text: str | None) -> bool:
    """Whether `text` (1.30, 1.30.3 or v1.30.3) is in MODELLED_VERSIONS (a minor alone: its pinned patch)."""
    match = _VERSION_RE.match((text or "").strip())
    if not match:
        return False
    major, minor = int(match.group(1)), int(match.group(2))
    patch = int(match.group(3)) if match.group(3) is not None else PINNED_PATCH.get((major, minor), -1)
    return (major, minor, patch) in MODELLED_VERSIONS


def modelled_summary() -> str:
    """The modelled releases in one line, for error messages: `1.22.0-1.22.8, ..., 1.30.0-1.30.3`."""
    ranges = ", ".join(f"{major}.{minor}.0-{major}.{minor}.{pinned}"
                       for (major, minor), pinned in sorted(PINNED_PATCH.items()))
    return f"the engine models Istio {ranges} (a minor version alone, e.g. 1.29, means its newest modelled patch)"


@total_ordering
@dataclass(frozen=True)
class IstioVersion:
    """A concrete Istio release (major.minor.patch)."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str | None) -> IstioVersion:
        """Parse `1.30`, `1.30.3` or `v1.30.3`; a minor-only version resolves to its pinned patch.

        Raises UsageError, naming the modelled releases, for anything not in MODELLED_VERSIONS: every
        command and option goes through here, so none can predict for a release the engine does not know.
        """
        raw = (text or DEFAULT_VERSION).strip()
        match = _VERSION_RE.match(raw)
        if not match:
            raise UsageError(f"Istio version {raw!r} is not of the form 1.30 or 1.30.3")
        major, minor = int(match.group(1)), int(match.group(2))
        if (major, minor) < OLDEST_SUPPORTED:
            raise UsageError(
                f"Istio version {raw!r} is older than {OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]}, "
                f"the oldest whose semantics the engine models: {modelled_summary()}"
            )
        if (major, minor) not in PINNED_PATCH:
            raise UsageError(f"Istio version {raw!r} is not modelled: {modelled_summary()}")
        patch = int(match.group(3)) if match.group(3) is not None else PINNED_PATCH[(major, minor)]
        if not is_modelled(f"{major}.{minor}.{patch}"):
            raise UsageError(f"Istio version {raw!r} is newer than {major}.{minor}.{PINNED_PATCH[(major, minor)]}, "
                             f"the newest {major}.{minor} patch the engine models: {modelled_summary()}")
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
