"""Istio's own CRD schemas for the policy kinds, vendored, and their reading as plain JSON Schema.

Why: a policy that a cluster's API server would reject must fail a scenario before anything runs, and the
only faithful statement of what the API server accepts is the CRD Istio ships. The schemas here are
Istio 1.30.3's, verbatim (see README.md for the source, commit and license); validation.py derives the
older releases from them.

A Kubernetes structural schema is not read like plain JSON Schema, so `json_schema` rewrites it:
- an object with `properties` rejects any other field (the API server prunes unknown fields, and
  `kubectl apply` rejects them: strict field validation, the default since Kubernetes 1.27), unless it
  says `x-kubernetes-preserve-unknown-fields: true`;
- the root also accepts `apiVersion`, `kind` and `metadata`, which every object has (ObjectMeta is
  validated by the API server's own code, not by the CRD: the caller passes a schema for it);
- the `oneOf` / `not anyOf` pairs protoc-gen-crd writes for proto oneofs, and `x-kubernetes-int-or-string`
  (`anyOf` integer/string), are plain JSON Schema already and are kept as they are;
- `x-kubernetes-validations` (CEL) is an unknown keyword to jsonschema and is ignored here: the caller
  evaluates those rules itself.
Null values of fields are pruned first (`prune_nulls`), as the API server does before validating.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

VENDORED_TAG = "1.30.3"
_FILE = f"istio-{VENDORED_TAG}-security.json"


@cache
def _vendored() -> dict[str, Any]:
    """The vendored file, read once (package data, so it works from a wheel as from a checkout)."""
    text = resources.files(__name__).joinpath(_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def source() -> dict[str, str]:
    """Where the vendored schemas come from: repository, path, tag, commit, URL, license."""
    return dict(_vendored()["source"])


def kinds() -> tuple[str, ...]:
    """The kinds whose CRD schema is vendored (AuthorizationPolicy, PeerAuthentication, RequestAuthentication)."""
    return tuple(sorted(_vendored()["schemas"]))


def served_versions(kind: str) -> tuple[str, ...]:
    """The API versions the CRD serves for `kind` (v1, v1beta1), empty for a kind not vendored."""
    return tuple(sorted(_vendored()["schemas"].get(kind, {})))


def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """A deep copy of the vendored openAPIV3Schema of `kind` at API version `version` (KeyError if absent)."""
    return copy.deepcopy(_vendored()["schemas"][kind][version])


def json_schema(structural: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The structural schema of a CRD as a Draft 2020-12 JSON Schema of a whole object (see the module doc)."""
    root = _closed(copy.deepcopy(dict(structural)))
    props = root.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props["metadata"] = dict(metadata)
    root["additionalProperties"] = False
    root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return root


def _closed(node: Any) -> Any:
    """Recursively add `additionalProperties: false` where Kubernetes drops (or rejects) unknown fields."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _closed(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def prune_nulls(value: Any) -> Any:
    """The document as the API server validates it: null fields dropped, keys as JSON strings, tuples as lists.

    `PruneNonNullableNullsWithoutDefaults` (apiextensions-apiserver) drops a field whose value is null;
    a null list item stays, and fails its type. YAML keys that are not strings (`8080:`, `true:`) become the
    JSON object keys sigs.k8s.io/yaml makes of them.
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in list(value.items()):
            if item is not None:
                out[key_text(key)] = prune_nulls(item)
        return out
    if isinstance(value, (list, tuple)):
        return [prune_nulls(item) for item in value]
    return value


def key_text(key: object) -> str:
    """A YAML mapping key as the JSON object key it becomes on its way to the API server (sigs.k8s.io/yaml)."""
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)
