"""Every field of the published JSON Schema says what it means (issue 9: editors show it on hover, and a
user who only has the repository reads the format there and in docs/scenario-format.md)."""

from __future__ import annotations

from typing import Any

from conformance.schema import DESCRIPTIONS, SCHEMA


def _fields(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(node, dict):
        return out
    for name, sub in (node.get("properties") or {}).items():
        out.append((f"{path}.{name}".lstrip("."), sub))
        out += _fields(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _fields(node["items"], f"{path}[]")
    for i, sub in enumerate(node.get("oneOf") or []):
        out += _fields(sub, f"{path}|{i}")
    return out


def test_every_scenario_field_has_a_description() -> None:
    fields = _fields(SCHEMA)
    assert len(fields) >= len(DESCRIPTIONS)
    assert [path for path, sub in fields if not sub.get("description")] == []


def test_per_mode_verdicts_keep_their_own_descriptions() -> None:
    """The verdict sub-schema is shared; describing one mode must not describe (or overwrite) another."""
    expect = SCHEMA["properties"]["spec"]["properties"]["steps"]["items"]["properties"]["expect"]["items"]
    per_mode = expect["properties"]["verdict"]["oneOf"][1]["properties"]
    texts = {mode: per_mode[mode]["description"] for mode in ("sidecar", "ambient", "waypoint")}
    assert len(set(texts.values())) == 3
    assert "description" not in expect["properties"]["verdict"]["oneOf"][0]
