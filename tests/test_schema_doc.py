"""docs/scenario-reference.md is the JSON Schema's own descriptions, field by field, and current."""

from __future__ import annotations

from pathlib import Path

from conformance.schema import SCHEMA
from conformance.schema_doc import markdown, rows

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scenario-reference.md"


def test_the_committed_reference_is_what_the_schema_says_now():
    """Regenerate with `authz-conformance schema --markdown > docs/scenario-reference.md` after a schema change."""
    assert DOC.read_text() == markdown(), "docs/scenario-reference.md is stale: regenerate it (see its header)"


def test_every_described_field_is_listed_once_with_its_type_and_requiredness():
    listed = [r[0] for r in rows(SCHEMA)]
    text = markdown()
    for path in dict.fromkeys(listed):
        assert f"| `{path}` |" in text
    assert "| `spec.steps` | list of object | yes |" in text
    assert "| `spec.workloads` | list of object |  | Every pod of the scenario, with its Service. Required" in text
    assert text.count("| `spec.workloads[].name` |") == 1
