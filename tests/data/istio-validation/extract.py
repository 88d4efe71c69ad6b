"""Extract Istio's validation test tables (Go functions, unmodified) from a clone of istio/istio.

    python tests/data/istio-validation/extract.py ISTIO_CLONE           # (re)write the excerpts and index.json
    python tests/data/istio-validation/extract.py ISTIO_CLONE --check   # exit 1 when the copy differs

Each excerpt is the text of one test function, `func Name(t *testing.T) {` through the `}` that closes
it, exactly as it stands in the file at that tag; identical excerpts of several tags are stored once.
tests/test_validation.py reads them through index.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPOSITORY = "https://github.com/istio/istio"
TAGS = ["1.22.8", "1.23.6", "1.24.6", "1.25.5", "1.26.8", "1.27.9", "1.28.10", "1.29.6", "1.30.0", "1.30.3"]
FUNCS = {
    "pkg/config/validation/validation_test.go": ["TestValidateAuthorizationPolicy", "TestValidatePeerAuthentication",
                                                 "TestValidateRequestAuthentication"],
    "pkg/config/security/security_test.go": ["TestValidateCondition", "TestCheckValidPathTemplate",
                                             "TestCheckTrustDomainValues", "TestCheckWildcardValues"],
    "pkg/config/validation/agent/extensionprovider_test.go": ["TestValidateExtensionProviderService"],
}


def _git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True, check=True).stdout


def extract(clone: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The index and the excerpt files (name → text) for every tag and function present there."""
    entries: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    by_digest: dict[str, str] = {}
    for tag in TAGS:
        commit = _git(clone, "rev-parse", f"{tag}^{{commit}}").strip()
        for path, funcs in FUNCS.items():
            src = _git(clone, "show", f"{commit}:{path}")
            for func in funcs:
                start = src.find(f"func {func}(t *testing.T) {{")
                if start < 0:
                    continue  # e.g. TestCheckTrustDomainValues before 1.30.2
                end = src.index("\n}\n", start) + 3
                text = src[start:end]
                digest = hashlib.sha256(text.encode()).hexdigest()
                name = by_digest.setdefault(digest, f"{func}-{tag}.go")
                files[name] = text
                first = src.count("\n", 0, start) + 1
                entries.append({"tag": tag, "commit": commit, "path": path, "func": func,
                                "lines": [first, first + text.count("\n") - 1], "file": name, "sha256": digest})
    index = {"repository": REPOSITORY, "excerpts": entries}
    return index, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path, help="a clone of istio/istio with its tags")
    parser.add_argument("--check", action="store_true", help="compare with the vendored copy, write nothing")
    args = parser.parse_args(argv)
    index, files = extract(args.clone)
    rows = ",\n".join("  " + json.dumps(entry) for entry in index["excerpts"])
    index_text = f'{{"repository": {json.dumps(index["repository"])}, "excerpts": [\n{rows}\n]}}\n'
    if args.check:
        wrong = [name for name, text in files.items()
                 if not (HERE / name).is_file() or (HERE / name).read_text(encoding="utf-8") != text]
        if (HERE / "index.json").read_text(encoding="utf-8") != index_text:
            wrong.append("index.json")
        print("\n".join(f"differs: {name}" for name in wrong) or "the vendored excerpts match the clone")
        return 1 if wrong else 0
    for name, text in files.items():
        (HERE / name).write_text(text, encoding="utf-8")
    (HERE / "index.json").write_text(index_text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
