"""Regenerate the vendored CRD schemas: `python -m conformance.crd.vendor <istio git dir> [tag]`.

Why: the structural check of policy documents must be Istio's own CRD schema, not a transcription of it,
and a new Istio release must be one command away. This reads `manifests/charts/base/files/crd-all.gen.yaml`
at the tag from a clone of istio/istio (1.22 and 1.23 kept it under `manifests/charts/base/crds/`), keeps
the openAPIV3Schema of AuthorizationPolicy, PeerAuthentication and RequestAuthentication (security.istio.io,
every served version) verbatim, and writes `istio-<tag>-security.json` next to this file with where it came from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")
GROUP = "security.istio.io"
CRD_PATHS = ("manifests/charts/base/files/crd-all.gen.yaml", "manifests/charts/base/crds/crd-all.gen.yaml")
HERE = Path(__file__).parent


def extract(git_dir: str | Path, tag: str) -> dict[str, Any]:
    """The vendored document for one tag: source, license and the schemas by kind and API version."""
    commit = _git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip()
    text, used = "", ""
    for path in CRD_PATHS:
        try:
            text, used = _git(git_dir, "show", f"{tag}:{path}"), path
            break
        except subprocess.CalledProcessError:
            continue
    if not text:
        raise SystemExit(f"{tag}: no crd-all.gen.yaml at {' or '.join(CRD_PATHS)}")
    schemas: dict[str, dict[str, Any]] = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the file has ~18,000 lines
    for doc in yaml.load_all(text, Loader=loader):  # a safe loader (CSafeLoader or SafeLoader)
        if not doc or doc.get("spec", {}).get("group") != GROUP or doc["spec"]["names"]["kind"] not in KINDS:
            continue
        kind = doc["spec"]["names"]["kind"]
        schemas[kind] = {v["name"]: v["schema"]["openAPIV3Schema"] for v in doc["spec"]["versions"] if v["served"]}
    return {
        "source": {
            "repository": "https://github.com/istio/istio",
            "path": used,
            "tag": tag,
            "commit": commit,
            "url": f"https://github.com/istio/istio/blob/{tag}/{used}",
            "license": "Apache-2.0 (https://github.com/istio/istio/blob/master/LICENSE), Copyright Istio Authors",
            "extracted": f"spec.versions[].schema.openAPIV3Schema of the {GROUP} CRDs {', '.join(KINDS)}, verbatim",
        },
        "schemas": schemas,
    }


def _git(git_dir: str | Path, *args: str) -> str:
    """Run git on a bare or working clone; CalledProcessError when a tag or path is absent."""
    return subprocess.run(["git", "-C", str(git_dir), *args], capture_output=True, text=True, check=True).stdout


def main(argv: list[str] | None = None) -> int:
    """Command line: write istio-<tag>-security.json next to this file."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    tag = args[1] if len(args) > 1 else "1.30.3"
    doc = extract(args[0], tag)
    out = HERE / f"istio-{tag}-security.json"
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {out} ({doc['source']['commit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
