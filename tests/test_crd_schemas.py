"""The vendored Istio CRD schemas (conformance/crd) and their use as the structural gate of validation.py.

Checks that the vendored file is Istio 1.30.3's, verbatim (its hash against the one recorded from the
istio/istio tag in tests/data/istio-crd), that
each older release's schema derived from it equals the CRD that release really shipped (the CRDs of every
release tested are in tests/data/istio-crd, extracted from the tags with their commits), and that the
Kubernetes reading of a structural schema (unknown fields rejected, `x-kubernetes-preserve-unknown-fields`,
the `oneOf` / `not anyOf` of proto oneofs, null pruning) holds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conformance import crd
from conformance.validation import ERROR, _Features, _structural_for, validate_manifest
from conformance.versions import PINNED_PATCH, IstioVersion

WORK = Path(__file__).resolve().parents[2]
RELEASES = Path(__file__).parent / "data" / "istio-crd"
KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")


def _without(node: Any, *keys: str) -> Any:
    if isinstance(node, dict):
        return {k: _without(v, *keys) for k, v in node.items() if k not in keys}
    if isinstance(node, list):
        return [_without(v, *keys) for v in node]
    return node


def test_vendored_source_is_istio_1_30_3_with_its_license() -> None:
    source = crd.source()
    assert source["tag"] == "1.30.3" == crd.VENDORED_TAG
    assert source["commit"] == "56df41f63e513f834c9a3af33d8aed82d1d961f2"
    assert source["path"] == "manifests/charts/base/files/crd-all.gen.yaml"
    assert source["url"].startswith("https://github.com/istio/istio/blob/1.30.3/")
    assert "Apache-2.0" in source["license"]
    readme = (Path(crd.__file__).parent / "README.md").read_text()
    assert "Apache License, Version 2.0" in readme and source["commit"] in readme and source["url"] in readme


def test_vendored_kinds_and_versions() -> None:
    assert crd.kinds() == KINDS
    for kind in KINDS:
        assert crd.served_versions(kind) == ("v1", "v1beta1")
        # validation.py reads v1 for both: the two served versions carry one schema.
        assert crd.crd_schema(kind, "v1") == crd.crd_schema(kind, "v1beta1")


def _release(tag: str) -> dict[str, Any]:
    """A release's CRD schemas as tests/data/istio-crd holds them (see its NOTICE)."""
    path = RELEASES / f"{tag}.json"
    assert path.exists(), f"{path} missing: regenerate it (tests/data/istio-crd/NOTICE)"
    return json.loads(path.read_text())


def test_vendored_schemas_are_verbatim() -> None:
    recorded = _release("1.30.3")
    assert recorded["source"]["commit"] == crd.source()["commit"]
    ours = {kind: {v: crd.crd_schema(kind, v) for v in ("v1", "v1beta1")} for kind in KINDS}
    digest = hashlib.sha256(json.dumps(ours, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert digest == recorded["sha256_of_verbatim_schemas"]


_TAGS = sorted({f"{major}.{minor}.{patch}" for (major, minor), patch in PINNED_PATCH.items()}
               | {"1.22.0", "1.23.0", "1.24.0", "1.25.0", "1.30.0", "1.30.2"})


@pytest.mark.parametrize("tag", _TAGS)
def test_derived_schemas_equal_each_release_crd(tag: str) -> None:
    # What _structural_for removes from 1.30.3 is exactly what each release lacks (CEL rules, descriptions
    # and status aside: the CEL rules are ported in Python, status is ignored on create).
    real = _release(tag)["schemas"]  # description and x-kubernetes-validations already removed
    features = _Features.of(IstioVersion.parse(tag))
    for kind in KINDS:
        derived = _structural_for(features, kind)
        for version in ("v1", "v1beta1"):
            want = _without(real[kind][version], "description", "x-kubernetes-validations")
            want["properties"]["status"] = {}
            assert _without(derived, "description", "x-kubernetes-validations") == want, (tag, kind, version)


def _doc(spec: Any, kind: str = "AuthorizationPolicy", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": {"name": "p", "namespace": "ns"},
            "spec": spec, **extra}


def test_json_schema_reads_the_structural_schema_like_the_api_server() -> None:
    schema = crd.json_schema(crd.crd_schema("AuthorizationPolicy"), {"type": "object"})
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    # unknown fields: rejected at every level that lists its properties
    assert not validator.is_valid(_doc({"bogus": 1}))
    assert not validator.is_valid(_doc({"rules": [{"from": [{"source": {"bogus": ["x"]}}]}]}))
    assert not validator.is_valid(_doc({}, bogus=1))
    # ... but not where the schema preserves them (status)
    assert validator.is_valid(_doc({}, status={"anything": {"goes": 1}}))
    # the proto oneof (provider) is written as oneOf [not anyOf [required provider], required provider]:
    # exactly one branch holds with or without a provider
    assert validator.is_valid(_doc({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{}]}))
    assert validator.is_valid(_doc({"action": "ALLOW"}))
    # int-or-string (status.observedGeneration)
    assert validator.is_valid(_doc({}, status={"observedGeneration": "3"}))
    assert validator.is_valid(_doc({}, status={"observedGeneration": 3}))


def test_prune_nulls_drops_null_fields_and_keeps_null_items() -> None:
    doc = {"a": None, "b": [None, {"c": None, 8080: "x", True: "y"}], "d": ("e",)}
    assert crd.prune_nulls(doc) == {"b": [None, {"8080": "x", "true": "y"}], "d": ["e"]}


def _errors(doc: dict[str, Any], version: str = "1.30") -> dict[str, str]:
    return {f.field: f.message for f in validate_manifest(doc, IstioVersion.parse(version)) if f.severity == ERROR}


def test_structural_errors_name_the_field_and_the_crd_rule() -> None:
    found = _errors(_doc({
        "action": "ALLOWED",
        "selector": {"matchLabels": {"app": "a" * 64}},
        "targetRefs": [{"group": "Bad_Group", "kind": "Service", "name": "s"}] * 17,
        "rules": [{"to": [{"operation": {"ports": [80]}}]}],
    }))
    assert "must be one of ALLOW, DENY, AUDIT, CUSTOM" in found["spec.action"]
    assert "CRD maxLength" in found["spec.selector.matchLabels[app]"]
    assert "CRD maxItems" in found["spec.targetRefs"]
    assert "CRD pattern" in found["spec.targetRefs[0].group"]
    assert 'quote it: "80"' in found["spec.rules[0].to[0].operation.ports[0]"]


def test_one_line_per_field_when_the_crd_and_istio_validation_agree() -> None:
    # validation.go:1337 ("targetRef name must be set") and the CRD's `required: [kind, name]` (1.23+) see the
    # same problem: one finding, validation.go's, which says more than "is required".
    findings = [f for f in validate_manifest(_doc({"targetRefs": [{"group": "", "kind": "Service"}]}),
                                             IstioVersion.parse("1.30")) if f.severity == ERROR]
    assert [(f.field, f.message) for f in findings] == [("spec.targetRefs[0].name", "targetRef name must be set")]
    # validation.go:1725 and the CRD's minProperties 1 (1.23+): the CRD's line; 1.22 has only validation.go's.
    pa = _doc({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {}}, kind="PeerAuthentication")
    assert list(_errors(pa).values()) == ["must have at least 1 entry (CRD minProperties)"]
    assert list(_errors(pa, "1.22").values()) == ["port level mTLS, if defined, must have at least one element"]


def test_structural_errors_come_in_document_order() -> None:
    doc = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "p", "namespace": "ns", "bogus": 1}, "spec": {"action": "x", "zzz": 1}}
    assert list(_errors(doc)) == ["metadata.bogus", "spec.action", "spec.zzz"]
