"""YAML documents read fast, with PyYAML's own words when they are not YAML.

Collecting `policies/` parsed every scenario file twice with PyYAML's pure-Python parser (`sniff`, then the
load): about a second of the suite's start on two cores. libyaml's parser (`CSafeLoader`: the C parser under
the same SafeConstructor and resolver, so the same values) does it several times faster. Error messages must
not change with the parser a machine happens to have: on any YAML error the text is parsed again with the
pure-Python SafeLoader, whose exception (message and position) is the one raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import yaml

_FAST = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# libyaml's emitter under the same SafeRepresenter: `init` on a 300-workload mesh writes 90,000 probes, which
# PyYAML's pure-Python serializer and emitter took ~10 s of its ~26 s to write out
FAST_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_all(text: str) -> list[Any]:
    """Every document of `text` (None for an empty one), as `yaml.safe_load_all` gives them."""
    return _load(text, list)


def load_first(text: str) -> Any:
    """The first document of `text` only (the rest is not parsed), as `next(yaml.safe_load_all(text))`."""
    return _load(text, lambda docs: next(iter(docs), None))


def _load(text: str, take: Callable[[Iterator[Any]], Any]) -> Any:
    try:
        return take(yaml.load_all(text, Loader=_FAST))  # a safe loader: SafeConstructor
    except yaml.YAMLError:
        if _FAST is yaml.SafeLoader:
            raise
        return take(yaml.safe_load_all(text))  # raises the pure-Python parser's own error
