"""The published JSON Schema of scenario files (`authz-conformance schema`).

Editors validate against it while typing; the loader validates against it first, so that an unknown
field or a wrong type is reported by path before any semantic check runs. Policy documents are only
checked for their envelope here: their content is checked the way Istio checks it (validation.py).
"""

from __future__ import annotations

from typing import Any

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
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
