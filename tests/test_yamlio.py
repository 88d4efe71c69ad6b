"""yamlio: libyaml's parser where the machine has it, with the same documents and the same error words as PyYAML's
pure-Python SafeLoader (scenario errors and their positions must not depend on which parser is installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conformance import yamlio

ROOT = Path(__file__).resolve().parents[1]
# Without libyaml both sides would be PyYAML's pure-Python loader: nothing to compare
pytestmark = pytest.mark.skipif(yamlio._FAST is yaml.SafeLoader, reason="PyYAML without libyaml (CSafeLoader)")
FILES = sorted([*ROOT.glob("policies/*.yaml"), *ROOT.glob("tests/data/**/*.yaml"), *ROOT.glob("clusters/**/*.yaml")])


def test_there_are_files_to_compare() -> None:
    assert len(FILES) > 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_fast_parser_reads_every_shipped_file_as_pyyaml_does(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    try:
        want = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        with pytest.raises(yaml.YAMLError) as got:
            yamlio.load_all(text)
        assert str(got.value) == str(exc)
        return
    assert yamlio.load_all(text) == want
    assert yamlio.load_first(text) == (want[0] if want else None)


@pytest.mark.parametrize("text", [
    "a: [1, 2\n",
    "kind: Scenario\nspec:\n  - a\n b: c\n",
    "---\na: 1\n---\n: :\n  - x\n\t- y\n",
])
def test_a_yaml_error_is_pyyamls_own(text: str) -> None:
    with pytest.raises(yaml.YAMLError) as want:
        list(yaml.safe_load_all(text))
    with pytest.raises(yaml.YAMLError) as got:
        yamlio.load_all(text)
    assert str(got.value) == str(want.value)
    assert type(got.value) is type(want.value)
