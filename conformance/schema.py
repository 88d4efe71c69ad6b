"""The published JSON Schema of scenario files (`authz-conformance schema`).

Editors validate against it while typing; the loader validates against it first, so that an unknown
field or a wrong type is reported by path (the later checks still run on every usable part). An inline
policy's `spec` is described by Istio's own CRD schema (conformance/crd, 1.30.3), for editors; the loader
leaves inline policies to validation.py, which checks them the way Istio does at the version in use.
"""

from __future__ import annotations

from typing import Any

from conformance import crd

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

def _policy_specs() -> list[dict[str, Any]]:
    """Istio's own CRD schema of each policy kind's `spec` (conformance/crd, Istio 1.30.3), keyed on `kind`.

    So that an editor flags a misspelt policy field and shows Istio's field documentation while typing.
    The loader does not rely on it (validation.py checks each document at the Istio version in use, older
    releases knowing fewer fields); 1.30.3 is the newest release the engine models, so nothing valid at any
    modelled release is flagged here.
    """
    out = []
    for kind in crd.kinds():
        spec = crd.json_schema(crd.crd_schema(kind), {"type": "object"})["properties"]["spec"]
        out.append({"if": {"required": ["kind"], "properties": {"kind": {"const": kind}}},
                    "then": {"properties": {"spec": spec}}})
    return out


_POLICY_SPECS = _policy_specs()
_VERDICT = {"type": "string", "enum": ["allow", "deny", "auto"]}  # typed: a oneOf branch is chosen by type

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/istio-authz-conformance/schema/scenario-v1.json",
    "title": "istio-authz-conformance scenario",
    "description": "Workloads, the policies in force at each step, and the expected verdict of each probe.",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "authz-conformance/v1"},
        "kind": {"const": "Scenario"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
                "description": {"type": "string"},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["workloads", "steps"],
            "properties": {
                "modes": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"enum": ["sidecar", "ambient", "waypoint"]},
                    "description": "Modes the scenario runs in; default [sidecar, ambient]; waypoint is opt-in.",
                },
                "mesh": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "rootNamespace": {"type": "string", "pattern": DNS_LABEL},
                        "trustDomain": {"type": "string", "minLength": 1, "pattern": r"^[^/\s]+$"},
                    },
                },
                "waypoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "namespace"],
                        "properties": {
                            "name": {"type": "string", "pattern": DNS_LABEL},
                            "namespace": {"type": "string", "pattern": DNS_LABEL},
                        },
                    },
                },
                "workloads": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "namespace"],
                        "properties": {
                            "name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
                            "namespace": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
                            "serviceAccount": {"type": "string", "pattern": DNS_LABEL},
                            "labels": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "ports": {
                                "type": "array",
                                "items": {
                                    "oneOf": [
                                        {"type": "integer", "minimum": 1, "maximum": 65535},
                                        {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "required": ["port"],
                                            "properties": {
                                                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                                "protocol": {"enum": ["HTTP", "TCP"]},
                                            },
                                        },
                                    ]
                                },
                            },
                            "mesh": {"type": "boolean"},
                        },
                    },
                },
                "steps": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "policies", "expect"],
                        "properties": {
                            "name": {"type": "string", "pattern": DNS_LABEL},
                            "description": {"type": "string"},
                            "policies": {
                                "type": "array",
                                "items": {
                                    "oneOf": [
                                        {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "required": ["file"],
                                            "properties": {"file": {"type": "string", "minLength": 1}},
                                        },
                                        {
                                            "type": "object",
                                            "required": ["apiVersion", "kind", "metadata"],
                                            "properties": {
                                                "apiVersion": {"type": "string"},
                                                "kind": {"type": "string"},
                                                "metadata": {"type": "object"},
                                                "spec": {"type": "object"},
                                            },
                                            "allOf": _POLICY_SPECS,
                                        },
                                    ]
                                },
                            },
                            "expect": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["from", "to"],
                                    "properties": {
                                        "from": {"type": "string", "pattern": r"^[a-z0-9-]+/[a-z0-9-]+$"},
                                        "to": {
                                            "type": "string",
                                            "pattern": r"^[a-z0-9-]+/[a-z0-9-]+(:[0-9]{1,5})?$",
                                        },
                                        "request": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "properties": {
                                                "method": {"type": "string", "pattern": r"^[A-Z][A-Z0-9_-]*$"},
                                                "path": {"type": "string", "pattern": r"^/[^\s]*$"},
                                                "headers": {
                                                    "type": "object",
                                                    "propertyNames": {"pattern": r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"},
                                                    "additionalProperties": {"type": "string"},
                                                },
                                            },
                                        },
                                        "verdict": {
                                            "oneOf": [
                                                _VERDICT,
                                                {
                                                    "type": "object",
                                                    "additionalProperties": False,
                                                    "minProperties": 1,
                                                    "properties": {
                                                        "sidecar": _VERDICT,
                                                        "ambient": _VERDICT,
                                                        "waypoint": _VERDICT,
                                                    },
                                                },
                                            ]
                                        },
                                        "note": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
