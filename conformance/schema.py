"""The published JSON Schema of scenario files (`authz-conformance schema`).

Editors validate against it while typing; the loader validates against it first, so that an unknown
field or a wrong type is reported by path (the later checks still run on every usable part). An inline
policy's `spec` is described by Istio's own CRD schema (conformance/crd, 1.30.3), for editors; the loader
leaves inline policies to validation.py, which checks them the way Istio does at the version in use.
"""

from __future__ import annotations

import re
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
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"  # an HTTP token (RFC 9110 field-name)
_STRINGS = {"type": "array", "items": {"type": "string"}}
_REQUEST_BODY = {  # MeshConfig EnvoyExternalAuthorizationRequestBody (accepted by the schema, not modelled)
    "type": "object",
    "additionalProperties": False,
    "properties": {"maxRequestBytes": {"type": "integer", "minimum": 0}, "allowPartialMessage": {"type": "boolean"},
                   "packAsBytes": {"type": "boolean"}},
}
# The fields both ext_authz provider kinds have (istio/api mesh/v1alpha1/config.proto), camelCase as MeshConfig.
_EXT_AUTHZ_COMMON: dict[str, Any] = {
    "service": {"type": "string"},
    "port": {"type": "integer"},
    "timeout": {"type": "string"},
    "failOpen": {"type": "boolean"},
    "clearRouteCache": {"type": "boolean"},
    "statusOnError": {"type": "string"},
    "includeRequestBodyInCheck": _REQUEST_BODY,
}
_EXT_AUTHZ_HTTP = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **_EXT_AUTHZ_COMMON,
        "pathPrefix": {"type": "string"},
        "includeRequestHeadersInCheck": _STRINGS,
        "includeHeadersInCheck": _STRINGS,
        "includeAdditionalHeadersInCheck": {"type": "object", "additionalProperties": {"type": "string"}},
        "headersToUpstreamOnAllow": _STRINGS,
        "headersToDownstreamOnDeny": _STRINGS,
        "headersToDownstreamOnAllow": _STRINGS,
    },
}
_EXT_AUTHZ_GRPC = {"type": "object", "additionalProperties": False, "properties": dict(_EXT_AUTHZ_COMMON)}

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
            "required": ["steps"],
            "anyOf": [{"required": ["workloads"]}, {"required": ["workloadsFrom"]}],
            "properties": {
                "modes": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"enum": ["sidecar", "ambient", "waypoint", "mixed"]},
                    "description": "Modes the scenario runs in; default [sidecar, ambient]; waypoint and mixed are "
                                   "opt-in.",
                },
                "dataplanes": {
                    "type": "object",
                    "propertyNames": {"pattern": DNS_LABEL, "maxLength": 63},
                    "additionalProperties": {"enum": ["sidecar", "ambient", "waypoint"]},
                },
                "mesh": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "rootNamespace": {"type": "string", "pattern": DNS_LABEL},
                        "trustDomain": {"type": "string", "minLength": 1, "pattern": r"^[^/\s]+$"},
                        "pilotEnv": {"type": "object", "additionalProperties": {"type": "string"}},
                        "numTrustedProxies": {"type": "integer", "minimum": 0, "maximum": 4294967295},
                        "extensionProviders": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "envoyExtAuthzHttp": _EXT_AUTHZ_HTTP,
                                    "envoyExtAuthzGrpc": _EXT_AUTHZ_GRPC,
                                },
                            },
                        },
                    },
                },
                "issuers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "issuer"],
                        "properties": {
                            "name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
                            "issuer": {"type": "string", "minLength": 1},
                        },
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
                "workloadsFrom": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "minLength": 1}},
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
                            "kind": {"enum": ["app", "ext-authz", "ingress-gateway"]},
                            "routes": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["host", "to"],
                                    "properties": {
                                        "host": {"type": "string",
                                                 "pattern": r"^(\*|(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"
                                                            r"(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*)$"},
                                        "to": {"type": "string", "pattern": r"^[a-z0-9-]+/[a-z0-9-]+:[0-9]+$"},
                                    },
                                },
                            },
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
                                                    "propertyNames": {"pattern": _HEADER_NAME},
                                                    "additionalProperties": {"type": "string"},
                                                },
                                                "jwt": {
                                                    "type": "object",
                                                    "additionalProperties": False,
                                                    "properties": {
                                                        "issuer": {"type": "string"},
                                                        "sub": {"type": "string"},
                                                        "aud": {"oneOf": [
                                                            {"type": "string"},
                                                            {"type": "array", "items": {"type": "string"}},
                                                        ]},
                                                        "azp": {"type": "string"},
                                                        "claims": {"type": "object"},
                                                        "expired": {"type": "boolean"},
                                                        "signature": {"enum": ["valid", "invalid"]},
                                                        "in": {"oneOf": [
                                                            {"type": "string", "enum": ["header"]},
                                                            {
                                                                "type": "object",
                                                                "additionalProperties": False,
                                                                "required": ["header"],
                                                                "properties": {
                                                                    "header": {"type": "string",
                                                                               "pattern": _HEADER_NAME},
                                                                    "prefix": {"type": "string"},
                                                                },
                                                            },
                                                            {
                                                                "type": "object",
                                                                "additionalProperties": False,
                                                                "required": ["param"],
                                                                "properties": {
                                                                    "param": {"type": "string", "minLength": 1,
                                                                              "pattern": r"^[^&=#\s]+$"},
                                                                },
                                                            },
                                                        ]},
                                                        "raw": {"type": "string", "minLength": 1,
                                                                "pattern": r"^[\x21-\x7e]+$"},
                                                    },
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
                                                        "mixed": _VERDICT,
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

# What each field means, for editors' hover text and `authz-conformance schema` readers
# (docs/scenario-format.md says the same at length). Keyed by the field's path: `[]` steps into a
# list's items, `|N` into the N-th `oneOf` branch.
DESCRIPTIONS: dict[str, str] = {
    "apiVersion": "Always authz-conformance/v1.",
    "kind": "Always Scenario.",
    "metadata": "The scenario's name and what it shows.",
    "metadata.name": "A DNS label; names the scenario in test ids, reports and repro commands.",
    "metadata.description": "What the scenario shows and where its verdicts come from (Istio test, doc or source).",
    "spec": "The world (mesh, workloads, waypoints), the modes and the steps.",
    "spec.mesh": "Mesh-wide settings, as Istio's meshConfig holds them.",
    "spec.mesh.rootNamespace": "Istio's root namespace (meshConfig.rootNamespace); default istio-system. A "
                               "policy there without a selector applies mesh-wide.",
    "spec.mesh.trustDomain": "The mesh trust domain (meshConfig.trustDomain); default cluster.local. Workload "
                             "identities are spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.",
    "spec.mesh.numTrustedProxies": "meshConfig.defaultConfig.gatewayTopology.numTrustedProxies (default 0): the "
                                   "gateway's xff_num_trusted_hops. N > 0: remoteIpBlocks and remote.ip at the "
                                   "gateway see the N-th X-Forwarded-For entry from the right, or the peer address "
                                   "when XFF is shorter or that entry is no IP; N = 0: the peer address. ipBlocks "
                                   "and source.ip always see the peer address.",
    "spec.mesh.pilotEnv": (
        "istiod feature flags that change authorization, as istiod's environment (the cluster "
        "targets set them at install, values.pilot.env): a map of variable name to string value, "
        "read as Go's strconv.ParseBool reads it (true, false, 1, 0, ...). Absent flags keep "
        "Istio's default (false for every one). Modelled: PILOT_AUTO_ALLOW_WAYPOINT_POLICY "
        "(ztunnel allows each workload's waypoint identity), "
        "ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES (1.25+: policies selecting a waypoint's "
        "pod enforced as L4 at its HBONE termination), "
        "AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY (1.29+: dry-run policies sent to ztunnel, "
        "logged only), PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS (1.30+: several CUSTOM "
        "providers on one workload). Any other name, or a flag the Istio version lacks, is an "
        "error."
    ),
    "spec.mesh.extensionProviders": "meshConfig.extensionProviders of the ext_authz kinds: the external "
                                    "authorizers CUSTOM AuthorizationPolicies name (validated as Istio validates a "
                                    "mesh config).",
    "spec.mesh.extensionProviders[].name": "What a CUSTOM policy's provider.name refers to; from Istio 1.30 a "
                                           "lowercase DNS-1123 label of at most 63 characters, or istiod ignores "
                                           "the provider and CUSTOM policies naming it deny.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp": "An HTTP ext_authz server (Envoy's HTTP check protocol).",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.service":
        "[<namespace>/]<hostname> of its Service, e.g. ext-authz.ext-authz.svc.cluster.local; one that names no "
        "Service makes istiod deny the requests CUSTOM rules naming the provider match.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.port": "The Service port the proxies call (1-65535).",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.timeout": "How long a proxy waits for a decision, a duration "
                                                                "(0.5s, 200ms); default 600s.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.pathPrefix": "A prefix of the check request's path "
                                                                   "(/check makes /admin /check/admin); starts "
                                                                   "with /.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.failOpen": "true: let the request through when the provider "
                                                                 "cannot be reached or answers 5xx; default false.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.clearRouteCache": "MeshConfig's clearRouteCache; not "
                                                                        "supported yet.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.statusOnError": "The status (a string, \"503\") a client "
                                                                      "gets when the provider cannot be reached; "
                                                                      "default 403.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.includeRequestBodyInCheck": "Send the request body to the "
                                                                                  "provider; not supported yet.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.includeRequestBodyInCheck.maxRequestBytes":
        "The most body bytes held for the check (not supported yet).",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.includeRequestBodyInCheck.allowPartialMessage":
        "Send a partial body past maxRequestBytes instead of 413 (not supported yet).",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.includeRequestBodyInCheck.packAsBytes":
        "gRPC only: the body as raw bytes (not supported yet).",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.includeRequestHeadersInCheck":
        "Client headers sent to the provider besides Host, Method, Path and Content-Length: exact, prefix (x*) or "
        "suffix (*x); a lone * makes istiod ignore the provider.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.includeHeadersInCheck": "Deprecated by Istio for "
                                                                              "includeRequestHeadersInCheck; not "
                                                                              "supported yet.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.includeAdditionalHeadersInCheck":
        "Fixed headers (name: value) added to every check request.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.headersToUpstreamOnAllow":
        "Provider response headers added to the request sent upstream when it allows (exact, x*, *x).",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.headersToDownstreamOnDeny":
        "Provider response headers returned to the client when it denies; unset: all but Host.",
    "spec.mesh.extensionProviders[].envoyExtAuthzHttp.headersToDownstreamOnAllow":
        "Provider response headers returned to the client when it allows.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc": "A gRPC ext_authz server (envoy.service.auth.v3); also "
                                                        "checks TCP connections.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.service": "[<namespace>/]<hostname> of its Service, as for "
                                                                "envoyExtAuthzHttp.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.port": "The Service port the proxies call (1-65535); the "
                                                             "suite's ext-authz workload speaks gRPC on it.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.timeout": "How long a proxy waits for a decision; default "
                                                                "600s.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.failOpen": "true: let the request (or connection) through "
                                                                 "when the provider cannot be reached.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.clearRouteCache": "MeshConfig's clearRouteCache; not "
                                                                        "supported yet.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.statusOnError": "The status (a string) a client gets when "
                                                                      "the provider cannot be reached; default 403.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.includeRequestBodyInCheck": "Send the request body to the "
                                                                                  "provider; not supported yet.",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.includeRequestBodyInCheck.maxRequestBytes":
        "The most body bytes held for the check (not supported yet).",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.includeRequestBodyInCheck.allowPartialMessage":
        "Send a partial body past maxRequestBytes instead of 413 (not supported yet).",
    "spec.mesh.extensionProviders[].envoyExtAuthzGrpc.includeRequestBodyInCheck.packAsBytes":
        "The body as raw bytes (not supported yet).",
    "spec.issuers": "JWT issuers the suite plays: it makes each one's keys at run time, fills ${jwks:<name>} "
                    "with its JWKS and signs the tokens probes carry (request.jwt).",
    "spec.issuers[].name": "A DNS label naming the issuer in request.jwt.issuer and ${jwks:<name>}.",
    "spec.issuers[].issuer": "The iss claim of its tokens: what a jwtRule's issuer and a request principal's "
                             "<iss>/<sub> match (testing@secure.istio.io).",
    "spec.dataplanes": "Mode mixed only: the data plane of each namespace, `{<namespace>: sidecar | ambient | "
                       "waypoint}` (waypoint: ambient capture with the namespace's waypoint). A namespace not "
                       "listed runs sidecars. Each namespace listed must hold an in-mesh workload.",
    "spec.waypoints": "Waypoints (waypoint mode, and in mode mixed the namespaces whose data plane is waypoint): "
                      "each serves the in-mesh services of its namespace.",
    "spec.waypoints[].name": "The waypoint's Gateway name (what a Gateway targetRef names).",
    "spec.waypoints[].namespace": "The namespace whose services the waypoint serves.",
    "spec.workloadsFrom": "Rendered Kubernetes manifests (kustomize build, helm template) the workloads come from: "
                          "Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and Pods give workloads "
                          "(named after the object, with its namespace, pod labels and service account), Services "
                          "their ports (target ports, protocol from appProtocol or the port name as istiod reads it), "
                          "Namespaces their data plane (mode mixed) and waypoint. spec.workloads entries of the same "
                          "namespace/name override the fields they write.",
    "spec.workloadsFrom[].file": "A multi-document YAML file, relative to the scenario file (List kinds, comments and "
                                 "empty documents as kubectl accepts them).",
    "spec.workloads": "Every pod of the scenario, with its Service. Required unless workloadsFrom gives them; with "
                      "it, additions and field-by-field overrides (same namespace/name).",
    "spec.workloads[].name": "Workload (and Service) name; also its `app` label unless labels say otherwise.",
    "spec.workloads[].namespace": "The workload's namespace.",
    "spec.workloads[].serviceAccount": "The service account, hence the identity; default: the workload's name.",
    "spec.workloads[].labels": "Pod labels that selectors match; default {app: <name>}.",
    "spec.workloads[].ports": "Service ports the workload serves (a number is an HTTP port); none: a client only.",
    "spec.workloads[].ports[]|1.port": "The port number clients use (the Service port).",
    "spec.workloads[].ports[]|1.protocol": "HTTP (default) or TCP: how Istio treats the port (L7 or L4 policy).",
    "spec.workloads[].mesh": "false: outside the mesh (no proxy, no identity, plaintext). Default true.",
    "spec.workloads[].kind": "app (default): the suite's echo app. ext-authz: the suite's external authorizer "
                             "(Istio's samples/extauthz behaviour: allows iff the request has x-ext-authz: allow), "
                             "serving the ports its providers name; never a probe source or destination. "
                             "ingress-gateway: an Istio ingress gateway (its own Envoy and identity, HTTP ports, "
                             "policies by selector or, with the label gateway.networking.k8s.io/gateway-name, "
                             "targetRefs to that Gateway), forwarding by Host to its routes; probe it from an "
                             "out-of-mesh client with a Host header (and X-Forwarded-For); in a namespace of its "
                             "own.",
    "spec.workloads[].routes": "kind ingress-gateway only: its Host routes (a Gateway server and a VirtualService); "
                               "the Host's port is ignored when routing (ignore_port_in_host_matching), not by "
                               "`hosts` in policies.",
    "spec.workloads[].routes[].host": "A host name, `*.suffix` or `*`, matched case-insensitively as an Envoy vhost "
                                      "domain (exact, then the longest suffix, then `*`).",
    "spec.workloads[].routes[].to": "The destination, <namespace>/<name>:<port>: an in-mesh app's HTTP port. The "
                                    "gateway reaches a sidecar by mTLS, an ambient pod by HBONE straight to the pod "
                                    "(its waypoint bypassed unless the workload has the label "
                                    "istio.io/ingress-use-waypoint: \"true\"), all with its own identity.",
    "spec.steps": "Steps run in order on one mesh; each sets the complete set of policies in force.",
    "spec.steps[].name": "A DNS label naming the step (test ids, reports, `--step`).",
    "spec.steps[].description": "What the step changes and why.",
    "spec.steps[].policies": "Every policy in force during the step (the rest are deleted): inline documents, "
                             "or {file: path} to a multi-document YAML file relative to the scenario.",
    "spec.steps[].policies[]|0.file": "A YAML file of policies, relative to the scenario file.",
    "spec.steps[].policies[]|1.apiVersion": "security.istio.io/v1 or v1beta1.",
    "spec.steps[].policies[]|1.kind": "AuthorizationPolicy, PeerAuthentication or RequestAuthentication (whose "
                                      "jwtRules take jwks: \"${jwks:<issuer name>}\").",
    "spec.steps[].policies[]|1.metadata": "name, namespace, and annotations such as istio.io/dry-run.",
    "spec.steps[].policies[]|1.spec": "The policy's spec, as Istio's CRD defines it (validated per Istio version).",
    "spec.steps[].expect": "The probes of the step and what each must observe.",
    "spec.steps[].expect[].from": "The source workload, <namespace>/<name>.",
    "spec.steps[].expect[].to": "The destination, <namespace>/<name>[:port]; the port defaults to its only one.",
    "spec.steps[].expect[].request": "The HTTP request (HTTP ports); default GET /.",
    "spec.steps[].expect[].request.method": "HTTP method, upper case.",
    "spec.steps[].expect[].request.path": "Request path, sent as written (curl --path-as-is): dot segments "
                                          "and queries reach the proxy unnormalised.",
    "spec.steps[].expect[].request.headers": "Request headers; x-authz-conformance-probe is the suite's own "
                                             "and may not be set.",
    "spec.steps[].expect[].request.jwt": "A JWT the probe carries, minted per probe with an issuer's key: "
                                         "issuer and claims, or raw.",
    "spec.steps[].expect[].request.jwt.issuer": "A name from spec.issuers: its key signs, its issuer is iss.",
    "spec.steps[].expect[].request.jwt.sub": "The sub claim; absent when not given.",
    "spec.steps[].expect[].request.jwt.aud": "The aud claim: a string or a list; absent when not given.",
    "spec.steps[].expect[].request.jwt.azp": "The azp claim (request.auth.presenter).",
    "spec.steps[].expect[].request.jwt.claims": "Further claims, nested maps and lists allowed (groups: [admin]); "
                                                "not iss, sub, aud, azp or exp.",
    "spec.steps[].expect[].request.jwt.expired": "true: exp lies well before now, beyond Envoy's 60 s clock skew.",
    "spec.steps[].expect[].request.jwt.signature": "valid (default), or invalid: signed by a key the issuer's JWKS "
                                                   "does not hold.",
    "spec.steps[].expect[].request.jwt.in": "Where the token goes: header (default, Authorization: Bearer "
                                            "<token>), {header: NAME, prefix: P} or {param: NAME}.",
    "spec.steps[].expect[].request.jwt.in|1.header": "The header name.",
    "spec.steps[].expect[].request.jwt.in|1.prefix": "Written before the token (\"Bearer \"); default none.",
    "spec.steps[].expect[].request.jwt.in|2.param": "The parameter name: ?<param>=<token> is added to the path.",
    "spec.steps[].expect[].request.jwt.raw": "A literal token sent as it is (deadbeef, invalidToken); excludes "
                                             "every other field but in.",
    "spec.steps[].expect[].verdict": "allow, deny or auto (the engine's prediction; also when omitted), or one "
                                     "per mode: {sidecar: deny, ambient: allow}.",
    "spec.steps[].expect[].verdict|1.sidecar": "The verdict in sidecar mode.",
    "spec.steps[].expect[].verdict|1.ambient": "The verdict in ambient mode (ztunnel only).",
    "spec.steps[].expect[].verdict|1.waypoint": "The verdict in ambient mode with a waypoint.",
    "spec.steps[].expect[].verdict|1.mixed": "The verdict in mode mixed: each namespace on its spec.dataplanes data "
                                             "plane.",
    "spec.steps[].expect[].note": "Why this verdict: the Istio test, doc or source line it comes from.",
}


def _describe(schema: dict[str, Any], descriptions: dict[str, str]) -> None:
    """Put each description on its field (copying shared sub-schemas such as _VERDICT first)."""
    for path, text in descriptions.items():
        node: dict[str, Any] = schema
        for part in path.split("."):
            m = re.fullmatch(r"([^\[|]+)(\[\])?(?:\|(\d+))?", part)
            assert m is not None, path
            props = node["properties"]
            props[m[1]] = node = dict(props[m[1]])
            if m[2]:
                node["items"] = node = dict(node["items"])
            if m[3] is not None:
                branches = node["oneOf"] = list(node["oneOf"])
                branches[int(m[3])] = node = dict(branches[int(m[3])])
        node["description"] = text


_describe(SCHEMA, DESCRIPTIONS)
