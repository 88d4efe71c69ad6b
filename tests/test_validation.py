"""Tests of conformance/validation.py: Istio's validation of AuthorizationPolicy and PeerAuthentication
(RequestAuthentication and the ext_authz extension providers: tests/test_validation_jwt_custom.py).

One test per rule, each citing the Istio source it ports ("validation.go:1497" = istio/istio
pkg/config/validation/validation.go at tag 1.30.3; "security.go" = pkg/config/security/security.go; "CRD" =
manifests/charts/base/files/crd-all.gen.yaml). Istio's own test tables (TestValidateAuthorizationPolicy,
TestValidatePeerAuthentication, TestValidateCondition, TestCheckValidPathTemplate, ...) are replayed at
several tags from the unmodified excerpts vendored in tests/data/istio-validation/; Istio's golden builder
inputs (tests/data/istio-golden/) must pass. Both folders say where each file came from (NOTICE).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.validation import (
    ERROR,
    SEVERITIES,
    UNSUPPORTED,
    WARNING,
    Finding,
    has_errors,
    validate_manifest,
)
from conformance.versions import IstioVersion

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "istio-golden"  # istio/istio@1.30.3 builder and ambient testdata (NOTICE there)
ISTIO_TESTS = DATA / "istio-validation"  # Istio's validation test functions at several tags (NOTICE there)

V130 = IstioVersion.parse("1.30")


# --------------------------------------------------------------------------------------------------
# helpers


def ap(spec: Any = None, *, name: str = "p", namespace: str = "ns", **meta: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace, **meta},
    }
    if spec is not None:
        doc["spec"] = spec
    return doc


def pa(spec: Any = None, **meta: Any) -> dict[str, Any]:
    doc = ap(spec, **meta)
    doc["kind"] = "PeerAuthentication"
    return doc


def source(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"from": [{"source": fields}]}]}


def operation(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"to": [{"operation": fields}]}]}


def when(key: Any, values: Any = None, not_values: Any = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"key": key}
    if values is not None:
        cond["values"] = values
    if not_values is not None:
        cond["notValues"] = not_values
    return {"rules": [{"when": [cond]}]}


def run(doc: Any, version: str | IstioVersion = V130) -> list[Finding]:
    v = version if isinstance(version, IstioVersion) else IstioVersion.parse(version)
    return validate_manifest(doc, v)


def fields(doc: Any, severity: str = ERROR, version: str | IstioVersion = V130) -> set[str]:
    return {f.field for f in run(doc, version) if f.severity == severity}


def messages(doc: Any, severity: str = ERROR, version: str | IstioVersion = V130) -> str:
    return " | ".join(f.message for f in run(doc, version) if f.severity == severity)


def istio_warns(doc: Any, version: str | IstioVersion = V130) -> bool:
    return any(f.severity == WARNING and f.message.startswith("Istio warns") for f in run(doc, version))


SRC = "spec.rules[0].from[0].source"
OP = "spec.rules[0].to[0].operation"
COND = "spec.rules[0].when[0]"


# --------------------------------------------------------------------------------------------------
# Envelope: apiVersion, kind, metadata


@pytest.mark.parametrize("api_version", ["security.istio.io/v1", "security.istio.io/v1beta1"])
@pytest.mark.parametrize("kind", ["AuthorizationPolicy", "PeerAuthentication"])
def test_served_api_versions(api_version: str, kind: str) -> None:
    # CRD: both kinds serve v1 and v1beta1 with the same schema at every tag 1.22 ... 1.30.
    doc = ap({}) | {"apiVersion": api_version, "kind": kind}
    assert run(doc) == []


@pytest.mark.parametrize("api_version", ["security.istio.io/v1alpha1", "networking.istio.io/v1", "v1", ""])
def test_api_version_must_be_served(api_version: str) -> None:
    # The API server has no such resource ("no matches for kind"): only v1 and v1beta1 are served.
    assert fields(ap({}) | {"apiVersion": api_version}) == {"apiVersion"}


def test_request_authentication_is_validated_not_refused() -> None:
    # RequestAuthentication is part of the format (issue 11): checked like the other kinds
    # (tests/test_validation_jwt_custom.py); only what the suite cannot serve, a rule without inline jwks
    # (istiod would fetch it), is "not supported yet".
    doc = ap({"jwtRules": [{"issuer": "x"}]}) | {"kind": "RequestAuthentication"}
    assert [(f.field, f.severity) for f in run(doc)] == [("spec.jwtRules[0]", UNSUPPORTED)]
    assert run(ap({"jwtRules": [{"issuer": "x", "jwks": "${jwks:x}"}]}) | {"kind": "RequestAuthentication"}) == []


@pytest.mark.parametrize(("api_version", "kind"), [
    ("security.istio.io/v1", "Sidecar"), ("networking.istio.io/v1", "VirtualService"), ("apps/v1", "Deployment"),
])
def test_other_kinds_are_errors(api_version: str, kind: str) -> None:
    assert fields(ap({}) | {"apiVersion": api_version, "kind": kind}) == {"kind"}


def test_kind_and_api_version_required() -> None:
    assert fields({"metadata": {"name": "a", "namespace": "b"}}) == {"kind", "apiVersion"}


def test_document_must_be_a_mapping() -> None:
    assert [f.field for f in run(["not", "a", "mapping"])] == [""]


def test_metadata_name_and_namespace_required() -> None:
    # Kubernetes requires a name; scenarios also require the namespace (kubectl would use the context's).
    doc = ap({})
    doc["metadata"] = {}
    assert fields(doc) == {"metadata.name", "metadata.namespace"}
    assert "required in a scenario" in messages(doc)
    assert fields(ap({}) | {"metadata": None}) == {"metadata"}


@pytest.mark.parametrize(("name", "ok"), [
    ("a", True), ("a.b-c", True), ("a" * 253, True), ("a" * 254, False), ("A", False), ("a_b", False), ("-a", False),
])
def test_metadata_name_is_dns1123_subdomain(name: str, ok: bool) -> None:
    # apiextensions-apiserver validates custom resource names with NameIsDNSSubdomain.
    assert (fields(ap({}, name=name)) == set()) is ok


@pytest.mark.parametrize(("namespace", "ok"), [("ns-1", True), ("a" * 63, True), ("a" * 64, False), ("a.b", False)])
def test_metadata_namespace_is_dns1123_label(namespace: str, ok: bool) -> None:
    assert (fields(ap({}, namespace=namespace)) == set()) is ok


def test_labels_and_annotations_follow_kubernetes_rules() -> None:
    doc = ap({}, labels={"app": "x", "bad key!": "y", "k": "v" * 64}, annotations={"a/b/c": "x", "ok.io/x": "y"})
    assert fields(doc) == {"metadata.labels[bad key!]", "metadata.labels[k]", "metadata.annotations[a/b/c]"}


def test_other_object_meta_fields_are_unsupported() -> None:
    assert fields(ap({}, finalizers=["x"]), UNSUPPORTED) == {"metadata.finalizers"}


# --------------------------------------------------------------------------------------------------
# Structural schema: types and unknown fields (Kubernetes strict field validation)


@pytest.mark.parametrize("path", [
    ["spec", "bogus"],
    ["spec", "rules", 0, "bogus"],
    ["spec", "rules", 0, "from", 0, "bogus"],
    ["spec", "rules", 0, "from", 0, "source", "bogus"],
    ["spec", "rules", 0, "to", 0, "operation", "bogus"],
    ["spec", "rules", 0, "when", 0, "bogus"],
    ["spec", "selector", "bogus"],
    ["spec", "targetRefs", 0, "bogus"],
    ["spec", "provider", "bogus"],
    ["metadata", "bogus"],
    ["bogus"],
])
def test_unknown_fields_anywhere_are_errors(path: list[str | int]) -> None:
    # CRD structural schema: unknown fields are rejected under `kubectl apply` (strict field validation).
    spec = {
        "action": "CUSTOM", "provider": {"name": "x"}, "selector": {"matchLabels": {"a": "b"}},
        "rules": [{"from": [{"source": {"principals": ["a"]}}], "to": [{"operation": {"ports": ["80"]}}],
                   "when": [{"key": "source.ip", "values": ["1.2.3.4"]}]}],
    }
    if path[1:2] == ["targetRefs"]:
        spec = {"targetRefs": [{"kind": "Service", "group": "", "name": "s"}]}
    doc = ap(spec)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = "x"
    expected = ".".join(str(p) for p in path).replace(".0", "[0]")
    assert expected in fields(doc)
    assert "unknown field 'bogus'" in messages(doc)


def test_unknown_field_suggests_the_known_one() -> None:
    assert "did you mean 'principals'?" in messages(ap(source(principal=["a"])))
    assert "did you mean 'ipBlocks'?" in messages(ap(source(ipblocks=["1.2.3.4"])))


def test_all_known_authorization_policy_fields_are_accepted() -> None:
    # AuthorizationPolicy proto / CRD at 1.30.3: every field of Source, Operation, Condition, Rule, spec.
    srcs = ["principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks",
            "requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks"]
    ops = ["hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"]
    doc = ap({
        "action": "ALLOW",
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "namespace": ""}],
        "rules": [
            {"from": [{"source": {name: ["10.0.0.1"] for name in srcs}},
                      {"source": {"serviceAccounts": ["ns/sa"], "notServiceAccounts": ["sa"]}}],
             "to": [{"operation": {name: ["/x"] for name in ops} | {"ports": ["80"], "notPorts": ["81"]}}],
             "when": [{"key": "source.ip", "values": ["1.2.3.4"], "notValues": ["1.2.3.5"]}]},
        ],
    })
    assert fields(doc) == set()


@pytest.mark.parametrize(("path", "value", "hint"), [
    ((OP, "ports"), [8080], 'quote it: "8080"'),
    (("spec.selector", "matchLabels"), {"version": 1}, 'quote it: "1"'),
    ((SRC, "principals"), "cluster.local/ns/a/sa/b", "write a list"),
    (("spec", "rules"), {"from": []}, "must be a list"),
])
def test_type_errors_name_the_field(path: tuple[str, str], value: Any, hint: str) -> None:
    # CRD structural schema: every leaf of these APIs is a string, every repeated field a list.
    parent, name = path
    spec: dict[str, Any] = {}
    if parent == OP:
        spec = operation(**{name: value})
    elif parent == SRC:
        spec = source(**{name: value})
    elif parent == "spec.selector":
        spec = {"selector": {name: value}}
    else:
        spec = {name: value}
    found = [f for f in run(ap(spec)) if f.severity == ERROR]
    assert found
    assert all(f.field.startswith(f"{parent}.{name}") for f in found)
    assert hint in found[0].message


def test_null_fields_are_pruned_but_null_items_are_not() -> None:
    # The API server prunes null-valued fields; a null list item fails the item's type.
    assert fields(ap({"action": None, "rules": [{"from": None}]})) == set()
    assert fields(ap({"rules": [None]})) == {"spec.rules[0]"}


@pytest.mark.parametrize(("version", "ok"), [("1.24", False), ("1.25", True), ("1.30", True)])
def test_service_accounts_field_exists_from_1_25(version: str, ok: bool) -> None:
    # CRD: Source.serviceAccounts/notServiceAccounts added in 1.25.0 (istio/api; crd-all.gen.yaml).
    doc = ap(source(serviceAccounts=["ns/sa"]))
    if ok:
        assert fields(doc, version=version) == set()
    else:
        assert fields(doc, version=version) == {f"{SRC}.serviceAccounts"}
        assert "exists from Istio 1.25" in messages(doc, version=version)


@pytest.mark.parametrize(("version", "errors", "unsupported"), [
    ("1.29", {f"{SRC}.trustDomains"}, set()),  # not in the CRD before 1.30
    # in the CRD, but validation.go:1499 does not count it until 1.30.2 ("must not be empty")
    ("1.30.0", {SRC}, {f"{SRC}.trustDomains"}),
    ("1.30.2", set(), set()),  # validated and built since #59358 (1.30.2): the engine and compiler model it
])
def test_trust_domains_field(version: str, errors: set[str], unsupported: set[str]) -> None:
    # The brief assumed trustDomains were master-only; the 1.30 tags have them (crd-all.gen.yaml 1.30.0,
    # validation.go CheckTrustDomainValues from 1.30.2).
    doc = ap(source(trustDomains=["cluster.local"]))
    assert fields(doc, version=version) == errors
    assert fields(doc, UNSUPPORTED, version=version) == unsupported


# --------------------------------------------------------------------------------------------------
# action, rules, provider


@pytest.mark.parametrize("action", ["ALLOW", "DENY", "AUDIT", "CUSTOM"])
def test_action_values(action: str) -> None:
    # CRD enum: ALLOW, DENY, AUDIT, CUSTOM.
    spec = {"action": action, "rules": [{}]} | ({"provider": {"name": "ext"}} if action == "CUSTOM" else {})
    assert fields(ap(spec)) == set()


def test_action_enum_is_case_sensitive() -> None:
    assert fields(ap({"action": "deny", "rules": [{}]})) == {"spec.action"}
    assert "did you mean 'DENY'?" in messages(ap({"action": "deny", "rules": [{}]}))


@pytest.mark.parametrize("rules", [None, []])
def test_deny_without_rules(rules: Any) -> None:
    # validation.go:1468. `rules: []` decodes to a nil slice (jsonpb), so it counts as no rules.
    spec = {"action": "DENY"} | ({} if rules is None else {"rules": rules})
    assert fields(ap(spec)) == {"spec.rules"}


@pytest.mark.parametrize("action", ["ALLOW", "AUDIT"])
def test_allow_and_audit_without_rules_are_valid(action: str) -> None:
    # validation.go:1468 / :1421: only DENY and CUSTOM require rules (Istio's case "allow-rules-nil").
    assert fields(ap({"action": action})) == set()


def test_custom_without_rules() -> None:
    # validation.go:1421: checked before the provider, which is then not looked at.
    assert fields(ap({"action": "CUSTOM", "provider": {"name": "x"}})) == {"spec.rules"}


@pytest.mark.parametrize("provider", [None, {}, {"name": ""}])
def test_custom_requires_provider_name(provider: Any) -> None:
    # validation.go:1426
    spec = {"action": "CUSTOM", "rules": [{}]} | ({} if provider is None else {"provider": provider})
    assert fields(ap(spec)) == {"spec.provider.name"}


@pytest.mark.parametrize("action", [None, "ALLOW", "DENY", "AUDIT"])
def test_provider_only_with_custom(action: str | None) -> None:
    # validation.go:1464
    spec = {"provider": {"name": "x"}, "rules": [{}]} | ({"action": action} if action else {})
    assert fields(ap(spec)) == {"spec.provider"}


@pytest.mark.parametrize(("field", "version"), [
    ("principals", "1.30"), ("notPrincipals", "1.30"), ("namespaces", "1.30"), ("notNamespaces", "1.30"),
    ("requestPrincipals", "1.30"), ("notRequestPrincipals", "1.30"), ("serviceAccounts", "1.30"),
    ("notServiceAccounts", "1.30"), ("trustDomains", "1.30.2"), ("notTrustDomains", "1.30.2"),
])
def test_custom_rejects_identity_fields(field: str, version: str) -> None:
    # validation.go:1437-1446 ("... is currently not supported with CUSTOM action")
    value = ["sa"] if "ServiceAccounts" in field or "serviceAccounts" in field else ["x"]
    spec = {"action": "CUSTOM", "provider": {"name": "x"}} | source(**{field: value})
    assert f"{SRC}.{field}" in fields(ap(spec), version=version)


@pytest.mark.parametrize("key", ["source.namespace", "source.principal", "source.serviceAccount",
                                 "request.auth.claims[iss]"])
def test_custom_rejects_identity_when_keys(key: str) -> None:
    # validation.go:1455-1459
    spec = {"action": "CUSTOM", "provider": {"name": "x"}} | when(key, ["v"])
    assert f"{COND}.key" in fields(ap(spec))


def test_custom_with_a_provider_is_accepted() -> None:
    # CUSTOM is part of the format (issue 11); a provider the mesh config lacks is for lint to say (Istio accepts it).
    assert run(ap({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{}]})) == []


# --------------------------------------------------------------------------------------------------
# rules: from, to, when


@pytest.mark.parametrize("part", ["from", "to"])
def test_empty_from_or_to_list_is_accepted_as_absent(part: str) -> None:
    # validation.go:1478 / :1531 reject `from: []` / `to: []`, but the webhook never sees an empty list: it
    # decodes with jsonpb (protomarshal.ApplyJSON), where an empty JSON array becomes a nil Go slice. So a
    # kubectl-applied policy with `from: []` is accepted and behaves as if `from` were absent: we warn.
    doc = ap({"rules": [{part: []}]})
    assert fields(doc) == set()
    assert fields(doc, WARNING) == {f"spec.rules[0].{part}"}


def test_source_must_not_be_nil() -> None:
    # validation.go:1490
    assert fields(ap({"rules": [{"from": [{}]}]})) == {SRC}


def test_source_must_not_be_empty() -> None:
    # validation.go:1499 (an empty list counts as unset)
    assert fields(ap(source())) == {SRC}
    assert fields(ap(source(principals=[]))) == {SRC}


def test_operation_must_not_be_nil() -> None:
    # validation.go:1539
    assert fields(ap({"rules": [{"to": [{}]}]})) == {OP}


def test_operation_must_not_be_empty() -> None:
    # validation.go:1544
    assert fields(ap(operation())) == {OP}
    assert fields(ap(operation(methods=[]))) == {OP}


def test_when_key_is_required_and_not_empty() -> None:
    # CRD: Condition.key is required; validation.go:1567: "`key` must not be empty".
    assert fields(ap({"rules": [{"when": [{"values": ["a"]}]}]})) == {f"{COND}.key"}
    assert fields(ap(when("", ["a"]))) == {f"{COND}.key"}


@pytest.mark.parametrize(("values", "not_values", "ok"), [
    (None, None, False), ([], [], False), (["1.2.3.4"], None, True), (None, ["1.2.3.4"], True),
])
def test_when_needs_values_or_not_values(values: Any, not_values: Any, ok: bool) -> None:
    # validation.go:1570
    assert (fields(ap(when("source.ip", values, not_values))) == set()) is ok


# --------------------------------------------------------------------------------------------------
# ValidateAttribute (security.go:231)


@pytest.mark.parametrize("key", [
    "request.headers[x-token]", "request.headers[:authority]", "source.ip", "source.namespace", "source.principal",
    "destination.ip", "destination.port", "connection.sni", "source.serviceAccount",
])
def test_known_supported_attributes(key: str) -> None:
    value = {"source.ip": "10.0.0.0/8", "destination.ip": "1.2.3.4", "destination.port": "80",
             "source.serviceAccount": "ns/sa"}.get(key, "v")
    assert run(ap(when(key, [value]))) == []


@pytest.mark.parametrize(("key", "fragment"), [
    ("destination.namespace", "replaced by the metadata.namespace"),
    ("destination.labels[app]", "replaced by the workload selector"),
    ("destination.name", "deprecated attribute destination.name: only supported in v1alpha1"),
    ("destination.user", "deprecated attribute destination.user: only supported in v1alpha1"),
    ("source.user", "unknown attribute: source.user"),
    ("sorce.ip", "did you mean 'source.ip'?"),
    ("request.headers[]", "should have format a[b]"),
    ("request.headers", "should have format a[b]"),
    ("request.auth.claims[]", "should have format a[b]"),
    ("experimental.envoy.filters.a.b.x", "should have format a[b]"),
    ("experimental.other", "unknown attribute"),
])
def test_attribute_specific_errors(key: str, fragment: str) -> None:
    # security.go:236-267: the specific errors for destination.* and the a[b] map keys.
    doc = ap(when(key, ["v"]))
    assert fields(doc) == {f"{COND}.key"}
    assert fragment in messages(doc)


@pytest.mark.parametrize(("version", "ok"), [("1.24", False), ("1.25", True)])
def test_source_service_account_key_from_1_25(version: str, ok: bool) -> None:
    # security.go (1.25.0): attrSrcServiceAccount; before, "unknown attribute".
    doc = ap(when("source.serviceAccount", ["ns/sa"]))
    assert (fields(doc, version=version) == set()) is ok
    if not ok:
        assert "Istio knows it from 1.25" in messages(doc, version=version)


@pytest.mark.parametrize(("version", "errors", "unsupported"), [
    ("1.29", {f"{COND}.key"}, set()), ("1.30.0", set(), {f"{COND}.key"}), ("1.30.3", set(), set()),
])
def test_source_trust_domain_key(version: str, errors: set[str], unsupported: set[str]) -> None:
    # security.go: attrSrcTrustDomain from 1.30.0 (values checked with CheckWildcardValues from 1.30.2).
    doc = ap(when("source.trustDomain", ["cluster.local"]))
    assert fields(doc, version=version) == errors
    assert fields(doc, UNSUPPORTED, version=version) == unsupported


def test_source_trust_domain_values_checked_from_1_30_2() -> None:
    # security.go:246 CheckWildcardValues, backported in 1.30.2.
    doc = ap(when("source.trustDomain", ["a*b"]))
    assert fields(doc, version="1.30.1") == set()
    assert fields(doc, version="1.30.2") == {f"{COND}.values[0]"}


@pytest.mark.parametrize("key", ["experimental.envoy.filters.a[b]"])
def test_unsupported_when_keys(key: str) -> None:
    doc = ap(when(key, ["v"]))
    assert fields(doc) == set()
    assert fields(doc, UNSUPPORTED) == {f"{COND}.key"}


def test_remote_ip_when_key_supported() -> None:
    # remote.ip is modelled (X-Forwarded-For at gateways, sidecars and waypoints: engine/xff.py)
    doc = ap(when("remote.ip", ["1.2.3.4", "10.0.0.0/8"]))
    assert fields(doc) == set() and fields(doc, UNSUPPORTED) == set()


# --------------------------------------------------------------------------------------------------
# IPs, ports, empty values


VALID_IPS = ["1.2.3.4", "0.0.0.0", "255.255.255.255", "10.0.0.0/8", "10.1.2.3/8", "0.0.0.0/0", "::1",
             "::ffff:1.2.3.4", "2001:db8::/32", "fe80::1%eth0", "1.2.3.4/32", "::/0"]
INVALID_IPS = ["1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "a.b.c.d", "1.2.3.4/33", "::1/129", "1.2.3.4/",
               "1.2.3.4/08", "1.2.3.4/+8", "fe80::1%eth0/64", "fe80::1%", "%eth0", "localhost", "1.2.3.4 ",
               "10.0.0.0/255.0.0.0", "1:2:3:4:5:6:7:8:9"]


@pytest.mark.parametrize("ip", VALID_IPS)
@pytest.mark.parametrize("where", ["ipBlocks", "notIpBlocks", "source.ip", "destination.ip"])
def test_valid_ips(ip: str, where: str) -> None:
    # security.go:285 ValidateIPs: netip.ParseAddr, or netip.ParsePrefix when the value holds '/'.
    doc = ap(source(**{where: [ip]}) if "." not in where else when(where, [ip]))
    assert fields(doc) == set()


@pytest.mark.parametrize("ip", INVALID_IPS)
@pytest.mark.parametrize("where", ["ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
                                   "source.ip", "remote.ip", "destination.ip"])
def test_invalid_ips(ip: str, where: str) -> None:
    # security.go:285 ValidateIPs; validation.go:1505 (source fields) and ValidateAttribute (when keys).
    if "." in where:
        assert fields(ap(when(where, [ip]))) == {f"{COND}.values[0]"}
    else:
        assert fields(ap(source(**{where: [ip]}))) == {f"{SRC}.{where}[0]"}


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=40))
def test_ipv4_cidrs_match_netip(ip: Any, bits: int) -> None:
    # netip.ParsePrefix accepts host bits and rejects lengths over 32.
    found = fields(ap(source(ipBlocks=[f"{ip}/{bits}"])))
    assert found == (set() if bits <= 32 else {f"{SRC}.ipBlocks[0]"})


@pytest.mark.parametrize(("port", "ok"), [("80", True), ("65535", True), ("0", True), ("0080", True),
                                          ("65536", False), ("-1", False), ("+80", False), ("80a", False),
                                          ("*", False), (" 80", False), ("4294967296", False)])
@pytest.mark.parametrize("where", ["ports", "notPorts", "destination.port"])
def test_ports(port: str, ok: bool, where: str) -> None:
    # security.go:301 ValidatePorts: strconv.ParseUint(port, 10, 32) and p <= 65535 (0 passes, we warn).
    doc = ap(when(where, [port]) if "." in where else operation(**{where: [port]}))
    assert (fields(doc) == set()) is ok
    if port == "0":
        assert fields(doc, WARNING)


@given(st.integers(min_value=-10, max_value=200_000))
def test_ports_property(port: int) -> None:
    assert (fields(ap(operation(ports=[str(port)]))) == set()) is (0 <= port <= 65535)


EMPTY_CHECKED = [(SRC, n) for n in ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                                    "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                                    "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts")]
EMPTY_CHECKED += [(OP, n) for n in ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths",
                                    "notPaths")]


@pytest.mark.parametrize(("parent", "name"), EMPTY_CHECKED)
def test_empty_string_values(parent: str, name: str) -> None:
    # security.go:106 CheckEmptyValues, called for every list (validation.go:1509-1557).
    good = "sa" if "ServiceAccounts" in name or "serviceAccounts" in name else "80" if "orts" in name else "1.2.3.4"
    spec = source(**{name: [good, ""]}) if parent == SRC else operation(**{name: [good, ""]})
    assert fields(ap(spec)) == {f"{parent}.{name}[1]"}
    assert "empty value" in messages(ap(spec))


def test_empty_string_when_values() -> None:
    # security.go:232: ValidateAttribute starts with CheckEmptyValues.
    assert fields(ap(when("request.headers[x]", ["a"], [""]))) == {f"{COND}.notValues[0]"}


# --------------------------------------------------------------------------------------------------
# serviceAccounts


def test_service_accounts_with_principals_or_namespaces() -> None:
    # validation.go:1495 and the CRD CEL rule on Source (1.25+), which uses has(): present-but-empty counts.
    for other in ("principals", "notPrincipals", "namespaces", "notNamespaces"):
        for sa in ("serviceAccounts", "notServiceAccounts"):
            assert fields(ap(source(**{sa: ["sa"], other: ["x"]}))) == {SRC}
    assert fields(ap(source(serviceAccounts=["sa"], principals=[]))) == {SRC}  # CEL has()
    assert fields(ap(source(serviceAccounts=["sa"], ipBlocks=["1.2.3.4"]))) == set()


@pytest.mark.parametrize(("value", "ok"), [
    ("sa", True), ("ns/sa", True), ("*", False), ("ns/*", False), ("a/b/c", False), ("/sa", False), ("ns/", False),
    ("x" * 320, True), ("x" * 321, False),
])
def test_service_account_values(value: str, ok: bool) -> None:
    # security.go:146 CheckServiceAccount (no wildcards, 'sa' or 'ns/sa', at most 320 characters).
    assert (fields(ap(source(serviceAccounts=[value]))) == set()) is ok
    assert (fields(ap(when("source.serviceAccount", [value]))) == set()) is ok


def test_at_most_16_service_accounts() -> None:
    # security.go:147 and CRD maxItems 16.
    assert fields(ap(source(serviceAccounts=[f"sa{i}" for i in range(16)]))) == set()
    assert fields(ap(source(serviceAccounts=[f"sa{i}" for i in range(17)]))) == {f"{SRC}.serviceAccounts"}


# --------------------------------------------------------------------------------------------------
# paths


@pytest.mark.parametrize(("path", "old_ok", "new_ok"), [
    ("/exact", True, True), ("/prefix/*", True, True), ("*/suffix", True, True), ("*", True, True),
    ("/a/{*}/b", True, True), ("/{**}", True, True), ("/a/{**}/b", True, True), ("/{*}/foo/", True, True),
    ("/{**}/{*}", True, False),  # 1.23.5+: {**} must be the last operator
    ("/{*}/foo/?abc", True, False),  # 1.23.5+: segments of a template must be pchar literals
    ("/a/{*}//b", True, False),  # ... an empty segment is not one
    ("/foo/{*}/bar/*", False, False), ("/foo/{buzz}/bar", False, False), ("/{*}/foo/{*}.txt", False, False),
    ("/foo/{**}buzz/bar", False, False), ("/{temp", False, False),
])
def test_path_templates(path: str, old_ok: bool, new_ok: bool) -> None:
    # security.go:183 CheckValidPathTemplate; rewritten in 1.23.5 / 1.24.3 (1.22: the older form).
    for version, ok in (("1.22", old_ok), ("1.23.4", old_ok), ("1.23.5", new_ok), ("1.24.3", new_ok),
                        ("1.30", new_ok)):
        assert (fields(ap(operation(paths=[path], notPaths=[path])), version=version) == set()) is ok, version


# --------------------------------------------------------------------------------------------------
# selector and targetRefs


def test_selector_wildcards_and_empty_key() -> None:
    # validation.go:1363-1371 and the matchLabels CEL rules (1.23+).
    doc = ap({"selector": {"matchLabels": {"app": "a*", "x*": "b", "": "c", "ok": "d"}}})
    assert fields(doc) == {"spec.selector.matchLabels[app]", "spec.selector.matchLabels[x*]",
                           "spec.selector.matchLabels[]"}


def test_selector_label_value_length_from_1_23() -> None:
    # CRD (1.23+): matchLabels values maxLength 63.
    doc = ap({"selector": {"matchLabels": {"app": "a" * 64}}})
    assert fields(doc, version="1.22") == set()
    assert fields(doc, version="1.23") == {"spec.selector.matchLabels[app]"}


@pytest.mark.parametrize("selector", [{}, {"matchLabels": {}}])
def test_selector_without_labels_warns(selector: dict[str, Any]) -> None:
    # validation.go:1374: "workload selector specified without labels" (a warning).
    assert fields(ap({"selector": selector})) == set()
    assert istio_warns(ap({"selector": selector}))


@pytest.mark.parametrize(("spec", "versions_err"), [
    ({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"group": "", "kind": "Service", "name": "s"}]},
     {"1.22", "1.24", "1.30"}),
    ({"selector": {"matchLabels": {"a": "b"}}, "targetRef": {"group": "", "kind": "Service", "name": "s"}},
     {"1.22", "1.24", "1.30"}),
    ({"targetRef": {"group": "", "kind": "Service", "name": "s"},
      "targetRefs": [{"group": "", "kind": "Service", "name": "s"}]}, {"1.22", "1.24", "1.30"}),
    ({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": []}, {"1.24", "1.30"}),  # CEL has() from 1.24
])
def test_selector_together_with_target_refs(spec: dict[str, Any], versions_err: set[str]) -> None:
    # validation.go:1383 validateOneOfSelectorType; CRD CEL "only one of targetRefs or selector" (1.24+).
    for version in ("1.22", "1.24", "1.30"):
        assert bool(fields(ap(spec), version=version)) is (version in versions_err), version


def test_at_most_16_target_refs_from_1_24() -> None:
    # CRD: targetRefs maxItems 16 (1.24+).
    doc = ap({"targetRefs": [{"group": "", "kind": "Service", "name": f"s{i}"} for i in range(17)]})
    assert fields(doc, version="1.23") == set()
    assert fields(doc, version="1.24") == {"spec.targetRefs"}


@pytest.mark.parametrize(("ref", "field"), [
    ({"group": "", "kind": "Service"}, "name"),  # validation.go:1337
    ({"group": "", "kind": "Service", "name": ""}, "name"),
    ({"group": "", "kind": "Service", "name": "s", "namespace": "other"}, "namespace"),  # validation.go:1341
    ({"group": "", "kind": "Pod", "name": "s"}, "kind"),  # validation.go:1353
    ({"group": "wrong-group", "kind": "Gateway", "name": "s"}, "kind"),
    ({"group": "", "name": "s"}, "kind"),
    ({"group": "Bad_Group", "kind": "Service", "name": "s"}, "group"),  # CRD pattern (1.23+)
])
def test_target_ref_rules(ref: dict[str, str], field: str) -> None:
    # validatePolicyTargetReference (validation.go:1333) and the targetRef CRD constraints.
    assert f"spec.targetRefs[0].{field}" in fields(ap({"targetRefs": [ref]}))
    assert f"spec.targetRef.{field}" in fields(ap({"targetRef": ref}))


@pytest.mark.parametrize(("group", "kind", "since"), [
    ("", "Service", "1.22"), ("core", "Service", "1.22"), ("gateway.networking.k8s.io", "Gateway", "1.22"),
    ("networking.istio.io", "ServiceEntry", "1.24"), ("gateway.networking.k8s.io", "GatewayClass", "1.25"),
])
def test_target_ref_kinds_by_version(group: str, kind: str, since: str) -> None:
    # allowedTargetRefs (validation.go:1326): Service, Gateway; ServiceEntry from 1.24; GatewayClass from 1.25.
    doc = ap({"targetRefs": [{"group": group, "kind": kind, "name": "istio-waypoint"}]})
    for version in ("1.22", "1.23", "1.24", "1.25", "1.30"):
        ok = IstioVersion.parse(version) >= IstioVersion.parse(since)
        assert (fields(doc, version=version) == set()) is ok, version


def test_target_ref_group_must_be_written_at_1_23_and_1_24() -> None:
    # CRD 1.23-1.24: CEL `[self.group, self.kind] in [...]` reads group without has() ("no such key: group").
    doc = ap({"targetRefs": [{"kind": "Service", "name": "s"}]})
    assert fields(doc, version="1.22") == set()
    assert fields(doc, version="1.23") == {"spec.targetRefs[0].group"}
    assert fields(doc, version="1.24") == {"spec.targetRefs[0].group"}
    assert fields(doc, version="1.25") == set()


def test_target_ref_kinds_the_suite_supports() -> None:
    # ServiceEntry targets are not modelled; a GatewayClass other than istio-waypoint attaches to nothing
    # (policyattachment.go ShouldAttachPolicy).
    se = ap({"targetRefs": [{"group": "networking.istio.io", "kind": "ServiceEntry", "name": "se"}]})
    assert fields(se, UNSUPPORTED) == {"spec.targetRefs[0].kind"}
    gc = ap({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "other"}]})
    assert fields(gc, WARNING) == {"spec.targetRefs[0].name"}
    for ref in ({"group": "", "kind": "Service", "name": "s"}, {"group": "core", "kind": "Service", "name": "s"},
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"},
                {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}):
        assert run(ap({"targetRefs": [ref]})) == []


def test_at_most_512_rules_and_sources_from_1_25() -> None:
    # CRD: rules and from maxItems 512 (1.25+).
    rules = ap({"rules": [{}] * 513})
    assert fields(rules, version="1.24") == set()
    assert fields(rules, version="1.25") == {"spec.rules"}
    froms = ap({"rules": [{"from": [{"source": {"principals": ["a"]}}] * 513}]})
    assert fields(froms, version="1.25") == {"spec.rules[0].from"}


# --------------------------------------------------------------------------------------------------
# warnings


@pytest.mark.parametrize(("rule", "warns"), [
    ({"to": [{"operation": {"methods": ["GET"]}}]}, True),
    ({"from": [{"source": {"requestPrincipals": ["a"]}}]}, True),
    ({"from": [{"source": {"namespaces": ["a"]}}]}, False),
    ({"from": [{"source": {"namespaces": ["a"]}}], "to": [{"operation": {"methods": ["GET"]}}]}, True),
    ({"from": [{"source": {"requestPrincipals": ["a"]}}], "to": [{"operation": {"ports": ["80"]}}]}, False),
    ({"to": [{"operation": {"ports": ["80"], "methods": ["GET"]}}]}, False),
    ({"when": [{"key": "request.headers[x]", "values": ["a"]}]}, False),  # when is not looked at
    ({}, False),
])
def test_deny_with_only_http_attributes_warns(rule: dict[str, Any], warns: bool) -> None:
    # validation.go:1584 (Istio's cases L7DenyWithFrom, L7DenyWithTo, L7DenyWithFromAndTo, ...WithPort).
    assert istio_warns(ap({"action": "DENY", "rules": [rule]})) is warns
    assert not istio_warns(ap({"action": "ALLOW", "rules": [rule]}))


@pytest.mark.parametrize(("field", "value", "warns"), [
    ("principals", "cluster.local/ns/*/sa/a", True), ("principals", "*/ns/a/sa/b", False),
    ("principals", "cluster.local/*", False), ("namespaces", "team-*-prod", True), ("namespaces", "*", False),
    ("principals", "*a*", True),
])
def test_mid_string_wildcard_warns(field: str, value: str, warns: bool) -> None:
    # Istio accepts it but only a leading or trailing '*' is a wildcard (matcher/string.go StringMatcherWithPrefix).
    doc = ap(source(**{field: [value]}))
    assert fields(doc) == set()
    assert bool(fields(doc, WARNING)) is warns


def test_mid_string_wildcard_in_paths_suggests_templates() -> None:
    doc = ap(operation(paths=["/api/*/data"]))
    assert "{*}" in messages(doc, WARNING)


def test_lowercase_methods_warn() -> None:
    # Istio accepts them; Envoy matches :method case-sensitively.
    doc = ap(operation(methods=["get", "GET", "custom"]))
    assert fields(doc) == set()
    assert fields(doc, WARNING) == {f"{OP}.methods[0]"}


def test_status_is_ignored() -> None:
    assert fields(ap({}) | {"status": {"x": 1}}, WARNING) == {"status"}


# --------------------------------------------------------------------------------------------------
# metadata annotations (validateMetadata, checkDryRunAnnotation)


@pytest.mark.parametrize(("action", "value", "ok"), [
    ("ALLOW", "true", True), ("DENY", "false", True), (None, "1", True), ("ALLOW", "T", True),
    ("ALLOW", "foo", False), ("ALLOW", "yes", False), ("AUDIT", "true", False), ("CUSTOM", "true", False),
])
def test_dry_run_annotation(action: str | None, value: str, ok: bool) -> None:
    # validation.go:228 checkDryRunAnnotation: strconv.ParseBool, only ALLOW and DENY.
    spec: dict[str, Any] = {"rules": [{}]}
    if action:
        spec["action"] = action
    if action == "CUSTOM":
        spec["provider"] = {"name": "x"}
    doc = ap(spec, annotations={"istio.io/dry-run": value})
    assert ("metadata.annotations[istio.io/dry-run]" not in fields(doc)) is ok


def test_dry_run_annotation_must_be_a_string() -> None:
    doc = ap({}, annotations={"istio.io/dry-run": True})
    assert fields(doc) == {"metadata.annotations[istio.io/dry-run]"}
    assert 'quote it: "true"' in messages(doc)


def test_dry_run_annotation_only_on_authorization_policy() -> None:
    # validation.go:231: "has unsupported annotation".
    assert fields(pa({}, annotations={"istio.io/dry-run": "true"})) == {"metadata.annotations[istio.io/dry-run]"}


@pytest.mark.parametrize(("key", "since"), [
    ("internal.istio.io/webhook-always-reject", "1.22"), ("internal.istio.io/parents", "1.27"),
    ("internal.istio.io/parent-namespace", "1.27"),
])
def test_internal_annotations_are_rejected(key: str, since: str) -> None:
    # validation.go:213-223 validateMetadata (parents and parent-namespace from 1.27).
    doc = ap({}, annotations={key: "x"})
    for version in ("1.22", "1.26", "1.27", "1.30"):
        rejected = IstioVersion.parse(version) >= IstioVersion.parse(since)
        assert bool(fields(doc, version=version)) is rejected, version


# --------------------------------------------------------------------------------------------------
# PeerAuthentication (ValidatePeerAuthentication, validation.go:1710)


@pytest.mark.parametrize("mode", ["UNSET", "PERMISSIVE", "STRICT", "DISABLE"])
def test_peer_authentication_modes(mode: str) -> None:
    # CRD enum UNSET, DISABLE, PERMISSIVE, STRICT: every one is accepted and modelled (issue 12).
    assert run(pa({"mtls": {"mode": mode}})) == []


def test_peer_authentication_bad_mode() -> None:
    assert fields(pa({"mtls": {"mode": "BLAH"}})) == {"spec.mtls.mode"}


def test_peer_authentication_disable_is_supported() -> None:
    # issue 12: DISABLE is modelled in every mode (engine/mtls.py), so nothing is "not supported yet".
    assert fields(pa({"mtls": {"mode": "DISABLE"}}), UNSUPPORTED) == set()
    assert run(pa({"selector": {"matchLabels": {"a": "b"}}, "mtls": {"mode": "DISABLE"},
                   "portLevelMtls": {"8080": {"mode": "STRICT"}}})) == []


def test_port_level_mtls_requires_selector() -> None:
    # validation.go:1719; CRD CEL "portLevelMtls requires selector" (1.23+).
    selectors: list[dict[str, Any] | None] = [None, {}, {"matchLabels": {}}]
    for selector in selectors:
        spec: dict[str, Any] = {"portLevelMtls": {"8080": {"mode": "STRICT"}}}
        if selector is not None:
            spec["selector"] = selector
        assert fields(pa(spec)) == {"spec.portLevelMtls"}


def test_port_level_mtls_must_not_be_empty() -> None:
    # validation.go:1725; CRD minProperties 1 (1.23+).
    assert fields(pa({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {}})) == {"spec.portLevelMtls"}


@pytest.mark.parametrize(("port", "ok_122", "ok_130"), [
    ("8080", True, True), (8080, True, True), ("0", False, False), ("65536", True, False), ("080", False, False),
    ("abc", False, False), ("-1", False, False), ("4294967296", False, False),
])
def test_port_level_mtls_ports(port: Any, ok_122: bool, ok_130: bool) -> None:
    # validation.go:1730 (1.23+: 1..65535; 1.22: only 0 rejected); the key is decoded as a uint32 (jsonpb).
    spec = {"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {port: {"mode": "STRICT"}}}
    assert (fields(pa(spec), version="1.22") == set()) is ok_122
    assert (fields(pa(spec)) == set()) is ok_130


@pytest.mark.parametrize("mode", ["UNSET", "PERMISSIVE", "STRICT", "DISABLE"])
def test_port_level_mtls_is_supported(mode: str) -> None:
    # issue 12: every port mode is modelled; only Istio's own rules (above) reject a portLevelMtls.
    spec = {"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"8080": {"mode": mode}, 9000: {"mode": mode}}}
    assert run(pa(spec)) == []


def test_port_level_mtls_bad_mode() -> None:
    # CRD enum for portLevelMtls values too.
    spec = {"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"8080": {"mode": "OFF"}}}
    assert fields(pa(spec)) == {"spec.portLevelMtls[8080].mode"}


def test_peer_authentication_selector_rules() -> None:
    # validateWorkloadSelector, called by ValidatePeerAuthentication (validation.go:1736).
    assert fields(pa({"selector": {"matchLabels": {"app": "*"}}})) == {"spec.selector.matchLabels[app]"}
    assert istio_warns(pa({"selector": {}}))


def test_peer_authentication_has_no_target_refs() -> None:
    # PeerAuthentication's CRD has only selector, mtls and portLevelMtls.
    assert fields(pa({"targetRefs": [{"kind": "Service", "name": "s"}]})) == {"spec.targetRefs"}


# --------------------------------------------------------------------------------------------------
# unsupported features and precedence


@pytest.mark.parametrize("field", ["remoteIpBlocks", "notRemoteIpBlocks"])
def test_remote_ip_source_fields_supported(field: str) -> None:
    doc = ap(source(**{field: ["1.2.3.4", "192.168.4.0/23"]}))
    assert fields(doc) == set()
    assert fields(doc, UNSUPPORTED) == set()


def test_error_takes_precedence_over_unsupported() -> None:
    # An invalid value in an unsupported field is reported as the error it is, not as "not supported yet".
    doc = ap(source(remoteIpBlocks=["not-an-ip"]))
    assert fields(doc) == {f"{SRC}.remoteIpBlocks[0]"}
    assert fields(doc, UNSUPPORTED) == set()
    bad_key = ap(when("request.auth.claims[]", ["x"]))
    assert fields(bad_key) == {f"{COND}.key"} and fields(bad_key, UNSUPPORTED) == set()
    custom = ap({"action": "CUSTOM", "provider": {"name": "x"}} | source(principals=["a"]))
    assert f"{SRC}.principals" in fields(custom)
    assert has_errors(run(custom))


# --------------------------------------------------------------------------------------------------
# Istio's golden builder inputs (pilot/pkg/security/authz/builder/testdata, 1.30.3)


def _golden_docs(folder: str) -> list[tuple[str, int, dict[str, Any]]]:
    base = GOLDEN / folder
    out = []
    for path in sorted(base.glob("*-in.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc is not None:  # multiple-policies-in.yaml ends with an empty document
                out.append((path.name, i, doc))
    assert out, f"no golden inputs in {base}"
    return out


@pytest.mark.parametrize("folder", ["builder-http", "builder-tcp"])
def test_golden_builder_inputs_pass_at_1_30(folder: str) -> None:
    # The builder tests feed these straight to the builder, bypassing validation; at 1.30.3 Istio's
    # validation accepts every one of them (custom-bad-multiple-providers only fails in the builder, which
    # allows one provider per workload; trust-domains needs 1.30.2+).
    for name, i, doc in _golden_docs(folder):
        assert [f for f in run(doc) if f.severity == ERROR] == [], f"{name}#{i}"


# Which golden inputs an older Istio would reject, and where.
GOLDEN_REJECTED = {
    ("allow-full-rule-in.yaml", "1.24"): {"spec.rules[0].from[0].source.serviceAccounts",
                                          "spec.rules[0].from[0].source.notServiceAccounts"},
    ("trust-domains-in.yaml", "1.29"): {"spec.rules[0].from[0].source.trustDomains",
                                        "spec.rules[0].from[1].source.notTrustDomains"},
    ("trust-domains-in.yaml", "1.30.1"): {"spec.rules[0].from[0].source", "spec.rules[0].from[1].source"},
}


@pytest.mark.parametrize("version", ["1.22", "1.24", "1.25", "1.29", "1.30.1"])
def test_golden_builder_inputs_by_version(version: str) -> None:
    for folder in ("builder-http", "builder-tcp"):
        for name, i, doc in _golden_docs(folder):
            found = fields(doc, version=version)
            rejected = sorted((IstioVersion.parse(upto), errs) for (file, upto), errs in GOLDEN_REJECTED.items()
                              if file == name and IstioVersion.parse(version) <= IstioVersion.parse(upto))
            expected = rejected[0][1] if rejected else set()
            assert found == expected, f"{name}#{i} at {version}"


def test_golden_ambient_inputs() -> None:
    # pilot/pkg/serviceregistry/ambient/testdata: two of them omit metadata.namespace (fine for kubectl,
    # required in a scenario); otherwise valid.
    for name, i, doc in _golden_docs("ambient"):
        expected = set() if "namespace" in doc.get("metadata", {}) else {"metadata.namespace"}
        assert fields(doc) == expected, f"{name}#{i}"


# --------------------------------------------------------------------------------------------------
# Istio's own validation tests, replayed from the excerpts in tests/data/istio-validation


_GO_TOKEN = re.compile(r'\s+|//[^\n]*|(?P<str>"(?:\\.|[^"\\])*"|`[^`]*`)|(?P<num>-?\d+)'
                       r"|(?P<id>[A-Za-z_][A-Za-z0-9_.]*)|(?P<p>[{}\[\],:&*])")
_GO_CONST = {
    "gvk.KubernetesGateway.Group": "gateway.networking.k8s.io", "gvk.KubernetesGateway.Kind": "Gateway",
    "gvk.Service.Group": "", "gvk.Service.Kind": "Service", "gvk.ServiceEntry.Group": "networking.istio.io",
    "gvk.ServiceEntry.Kind": "ServiceEntry", "constants.DefaultAuthenticationPolicyName": "default",
    "someName": "foo",
}


class _GoLiteral:
    """Just enough of a Go composite-literal reader for Istio's table-driven validation tests."""

    def __init__(self, text: str) -> None:
        self.toks = [(kind, m.group(kind)) for m in _GO_TOKEN.finditer(text)
                     for kind in ("str", "num", "id", "p") if m.group(kind) is not None]
        self.i = 0

    def peek(self, ahead: int = 0) -> str:
        return self.toks[self.i + ahead][1] if self.i + ahead < len(self.toks) else ""

    def take(self, want: str | None = None) -> tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        if want is not None and tok[1] != want:
            raise ValueError(f"expected {want!r}, got {tok[1]!r}")
        return tok

    def type_(self) -> str:
        parts = []
        while True:
            tok = self.peek()
            if tok == "[":
                self.take()
                self.take("]")
                parts.append("[]")
            elif tok == "*":
                self.take()
            elif tok == "map":
                self.take()
                self.take("[")
                parts.append(f"map[{self.type_()}]")
                self.take("]")
            else:
                parts.append(self.take()[1])
                return "".join(parts)

    def value(self, elem: str = "struct") -> Any:
        kind, tok = self.toks[self.i]
        if kind == "str":
            self.take()
            return json.loads(tok) if tok.startswith('"') else tok[1:-1]
        if kind == "num":
            self.take()
            return int(tok)
        if tok == "&":
            self.take()
            return self.composite(self.type_())
        if tok in ("[", "map"):
            return self.composite(self.type_())
        if tok == "{":
            return self.composite(elem)
        if self.peek(1) == "{":
            self.take()
            return self.composite(tok)
        self.take()
        if tok in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[tok]
        if tok in _GO_CONST:
            return _GO_CONST[tok]
        enum = re.fullmatch(r"security_beta\.(?:AuthorizationPolicy|PeerAuthentication_MutualTLS)_([A-Z]+)", tok)
        if enum:
            return enum.group(1)
        raise ValueError(f"unknown Go constant {tok}")

    def composite(self, typ: str) -> Any:
        self.take("{")
        is_list, is_map = typ.startswith("[]"), typ.startswith("map[")
        elem = typ[2:] if is_list else typ[typ.index("]") + 1:] if is_map else "struct"
        items: list[Any] = []
        pairs: dict[str, Any] = {}
        while self.peek() != "}":
            if not is_list and self.peek(1) == ":":
                key = self.take()[1]
                self.take(":")
                pairs[str(json.loads(key)) if key.startswith('"') else key] = self.value(elem)
            else:
                items.append(self.value(elem))
            if self.peek() == ",":
                self.take()
        self.take("}")
        return items if is_list else pairs


def _go_to_yaml(value: Any) -> Any:
    """Go struct field names to the JSON names a YAML manifest uses (ActionDetail is a oneof wrapper)."""
    if isinstance(value, list):
        return [_go_to_yaml(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, sub in value.items():
        if key == "ActionDetail":
            out.update(_go_to_yaml(sub))
        else:
            out[key[0].lower() + key[1:] if key[:1].isupper() else key] = _go_to_yaml(sub)
    return out


def _go_source(tag: str, file: str, func: str) -> str:
    """The text of Istio's test function `func` in `file` at `tag`, as vendored (index.json says where from)."""
    index = json.loads((ISTIO_TESTS / "index.json").read_text(encoding="utf-8"))
    for entry in index["excerpts"]:
        if (entry["tag"], entry["path"], entry["func"]) == (tag, file, func):
            return (ISTIO_TESTS / entry["file"]).read_text(encoding="utf-8")
    raise LookupError(f"{func} ({file} at {tag}) is not vendored in {ISTIO_TESTS}: see extract.py there")


def _go_cases(tag: str, file: str, func: str) -> list[dict[str, Any]]:
    src = _go_source(tag, file, func)
    body = src[src.index(f"func {func}(t *testing.T) {{"):]
    table = re.search(r"(?:cases|tests) := \[\]struct", body)
    assert table is not None, f"{func} at {tag} has no test table"
    body = body[body.index("}{", table.start()) + 1:]
    return list(_GoLiteral(body).composite("[]struct"))


TAGS = ["1.22.8", "1.23.6", "1.24.6", "1.25.5", "1.26.8", "1.27.9", "1.28.10", "1.29.6", "1.30.0", "1.30.3"]
VALIDATION_TEST = "pkg/config/validation/validation_test.go"
SECURITY_TEST = "pkg/config/security/security_test.go"
# Istio's Go tests build protos directly; as YAML an empty list decodes to nil (see
# test_empty_from_or_to_list_is_accepted_as_absent), so these two cases are accepted when kubectl-applied.
GO_DIVERGENCES = {"from-empty", "to-empty"}


@pytest.mark.parametrize("tag", TAGS)
def test_istio_validate_authorization_policy_cases(tag: str) -> None:
    # TestValidateAuthorizationPolicy (validation_test.go) at each tag, against validate_manifest at that tag.
    failures = []
    for case in _go_cases(tag, VALIDATION_TEST, "TestValidateAuthorizationPolicy"):
        meta: dict[str, Any] = {"name": "name", "namespace": "namespace"}
        if case.get("annotations"):
            meta["annotations"] = case["annotations"]
        doc = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta,
               "spec": _go_to_yaml(case["in"])}
        found = run(doc, tag)
        valid = not has_errors(found)
        warns = any(f.severity == WARNING and f.message.startswith("Istio warns") for f in found)
        want_valid = case["valid"] or case["name"] in GO_DIVERGENCES
        if (valid, warns) != (want_valid, bool(case.get("Warning"))):
            failures.append((case["name"], valid, warns, [(f.field, f.message) for f in found]))
    assert failures == []


@pytest.mark.parametrize("tag", TAGS)
def test_istio_validate_peer_authentication_cases(tag: str) -> None:
    # TestValidatePeerAuthentication (validation_test.go) at each tag.
    for case in _go_cases(tag, VALIDATION_TEST, "TestValidatePeerAuthentication"):
        doc = pa(_go_to_yaml(case["in"]), name=case.get("configName") or "name")
        doc["metadata"]["namespace"] = "bar"
        found = run(doc, tag)
        assert has_errors(found) is not case["valid"], case["name"]
        assert istio_warns(doc, tag) is bool(case.get("warning")), case["name"]


@pytest.mark.parametrize("tag", TAGS)
def test_istio_validate_condition_cases(tag: str) -> None:
    # TestValidateCondition (security_test.go): ValidateAttribute(key, values) at each tag.
    for case in _go_cases(tag, SECURITY_TEST, "TestValidateCondition"):
        assert has_errors(run(ap(when(case["key"], case["values"])), tag)) is bool(case.get("wantError")), case


@pytest.mark.parametrize("tag", TAGS)
def test_istio_check_valid_path_template_cases(tag: str) -> None:
    # TestCheckValidPathTemplate (security_test.go) at each tag, which also tracks the 1.23.5 rewrite.
    for case in _go_cases(tag, SECURITY_TEST, "TestCheckValidPathTemplate"):
        assert has_errors(run(ap(operation(paths=case["values"])), tag)) is bool(case.get("wantError")), case


@pytest.mark.parametrize(("func", "doc_for"), [
    ("TestCheckTrustDomainValues", lambda values: ap(source(trustDomains=values))),
    ("TestCheckWildcardValues", lambda values: ap(when("source.trustDomain", values))),
])
def test_istio_trust_domain_value_cases(func: str, doc_for: Callable[[list[str]], dict[str, Any]]) -> None:
    # security_test.go at 1.30.3: CheckTrustDomainValues (trustDomains) and CheckWildcardValues
    # (source.trustDomain values).
    for case in _go_cases("1.30.3", SECURITY_TEST, func):
        assert has_errors(run(doc_for(case["values"]), "1.30.3")) is bool(case.get("wantError")), case


# --------------------------------------------------------------------------------------------------
# Properties: never raises, every Finding.field is a path into the document


_SEGMENT = re.compile(r'\.([^.\[]+)|\[("(?:\\.|[^"\\])*"|[^\]]*)\]|([^.\[]+)')


def _segments(path: str) -> list[str]:
    out = []
    pos = 0
    while pos < len(path):
        match = _SEGMENT.match(path, pos)
        assert match, f"unparseable path {path!r} at {pos}"
        text = next(g for g in match.groups() if g is not None)
        out.append(json.loads(text) if match.group(2) and text.startswith('"') else text)
        pos = match.end()
    return out


def _key_text(key: object) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _is_path_into(doc: Any, path: str) -> bool:
    """True when `path` names something in `doc`, or a place below an existing mapping where a field is missing."""
    node = doc
    for segment in _segments(path):
        if node is None:
            return True
        if isinstance(node, Mapping):
            matches = [v for k, v in node.items() if _key_text(k) == segment]
            if not matches:
                return True
            node = matches[0]
        elif isinstance(node, (list, tuple)):
            if not segment.isdigit() or int(segment) >= len(node):
                return False
            node = node[int(segment)]
        else:
            return False
    return True


def _check_contract(doc: Any, version: IstioVersion) -> None:
    found = validate_manifest(doc, version)
    for finding in found:
        assert finding.severity in SEVERITIES
        assert finding.message and "\n" not in finding.message
        assert not finding.message.startswith("internal error"), finding
        assert _is_path_into(doc, finding.field), finding


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
KEYS = st.text(max_size=10) | st.integers() | st.booleans() | st.sampled_from(
    ["apiVersion", "kind", "metadata", "spec", "rules", "from", "to", "when", "source", "operation", "key",
     "values", "selector", "matchLabels", "targetRefs", "portLevelMtls", "mtls", "mode", "name", "namespace"])
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(KEYS, inner, max_size=4), max_leaves=25)
VERSIONS = st.sampled_from([IstioVersion.parse(v) for v in ("1.22", "1.23.4", "1.24", "1.25", "1.27", "1.30.0",
                                                            "1.30")])
STRING_VALUES = st.sampled_from(["", "*", "a*", "*a", "a*b", "GET", "get", "1.2.3.4", "10.0.0.0/8", "::1/200",
                                 "80", "0", "70000", "ns/sa", "a/b/c", "/x/{*}", "/{**}/{*}", "request.headers[x]",
                                 "source.ip", "request.auth.claims[]", "istio-waypoint"]) | st.text(max_size=8)
MAYBE_WRONG: Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]] = lambda good: good | YAML_VALUES  # noqa: E731
STRING_LISTS = MAYBE_WRONG(st.lists(MAYBE_WRONG(STRING_VALUES), max_size=3))
SOURCE = st.dictionaries(st.sampled_from(["principals", "notPrincipals", "namespaces", "serviceAccounts",
                                          "notServiceAccounts", "ipBlocks", "remoteIpBlocks", "requestPrincipals",
                                          "trustDomains", "bogus"]), STRING_LISTS, max_size=3)
OPERATION = st.dictionaries(st.sampled_from(["ports", "notPorts", "methods", "paths", "hosts", "notPaths"]),
                            STRING_LISTS, max_size=3)
CONDITION = st.fixed_dictionaries({}, optional={"key": MAYBE_WRONG(STRING_VALUES), "values": STRING_LISTS,
                                                "notValues": STRING_LISTS})
RULE = st.fixed_dictionaries({}, optional={
    "from": MAYBE_WRONG(st.lists(MAYBE_WRONG(st.fixed_dictionaries({}, optional={"source": MAYBE_WRONG(SOURCE)})),
                                 max_size=2)),
    "to": MAYBE_WRONG(st.lists(MAYBE_WRONG(st.fixed_dictionaries({}, optional={"operation": MAYBE_WRONG(OPERATION)})),
                               max_size=2)),
    "when": MAYBE_WRONG(st.lists(MAYBE_WRONG(CONDITION), max_size=2)),
})
TARGET_REF = st.dictionaries(st.sampled_from(["group", "kind", "name", "namespace"]),
                             MAYBE_WRONG(st.sampled_from(["", "core", "Service", "Gateway", "GatewayClass",
                                                          "gateway.networking.k8s.io", "x"])), max_size=4)
SELECTOR = st.fixed_dictionaries({}, optional={"matchLabels": MAYBE_WRONG(st.dictionaries(KEYS, MAYBE_WRONG(
    STRING_VALUES), max_size=3))})
SPEC = st.fixed_dictionaries({}, optional={
    "action": MAYBE_WRONG(st.sampled_from(["ALLOW", "DENY", "AUDIT", "CUSTOM", "deny"])),
    "provider": MAYBE_WRONG(st.fixed_dictionaries({}, optional={"name": MAYBE_WRONG(STRING_VALUES)})),
    "rules": MAYBE_WRONG(st.lists(MAYBE_WRONG(RULE), max_size=3)),
    "selector": MAYBE_WRONG(SELECTOR),
    "targetRef": MAYBE_WRONG(TARGET_REF),
    "targetRefs": MAYBE_WRONG(st.lists(MAYBE_WRONG(TARGET_REF), max_size=2)),
    "mtls": MAYBE_WRONG(st.fixed_dictionaries({}, optional={"mode": MAYBE_WRONG(st.sampled_from(
        ["STRICT", "DISABLE", "x"]))})),
    "portLevelMtls": MAYBE_WRONG(st.dictionaries(KEYS, MAYBE_WRONG(st.just({"mode": "STRICT"})), max_size=2)),
})
DOCUMENT = st.fixed_dictionaries({}, optional={
    "apiVersion": MAYBE_WRONG(st.sampled_from(["security.istio.io/v1", "security.istio.io/v1beta1", "v1"])),
    "kind": MAYBE_WRONG(st.sampled_from(["AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"])),
    "metadata": MAYBE_WRONG(st.fixed_dictionaries({}, optional={
        "name": MAYBE_WRONG(STRING_VALUES), "namespace": MAYBE_WRONG(STRING_VALUES),
        "annotations": MAYBE_WRONG(st.dictionaries(st.sampled_from(["istio.io/dry-run", "a/b/c", "x"]),
                                                   MAYBE_WRONG(STRING_VALUES), max_size=2)),
    })),
    "spec": MAYBE_WRONG(SPEC),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(YAML_VALUES, VERSIONS)
def test_never_raises_on_arbitrary_values(doc: Any, version: IstioVersion) -> None:
    _check_contract(doc, version)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENT, VERSIONS)
def test_never_raises_on_policy_shaped_values(doc: Any, version: IstioVersion) -> None:
    _check_contract(doc, version)


@pytest.mark.parametrize("version", [IstioVersion.parse(v) for v in ("1.22", "1.24", "1.30")])
def test_golden_paths_resolve(version: IstioVersion) -> None:
    for folder in ("builder-http", "builder-tcp", "ambient"):
        for _name, _i, doc in _golden_docs(folder):
            _check_contract(doc, version)


def test_path_syntax_round_trips() -> None:
    doc = {"metadata": {"labels": {"a.b/c": "x", "we[ird]": "y"}}, "spec": {"rules": [{"from": [{}]}]}}
    assert _segments('metadata.labels["we[ird]"]') == ["metadata", "labels", "we[ird]"]
    assert _is_path_into(doc, "metadata.labels[a.b/c]")
    assert _is_path_into(doc, 'metadata.labels["we[ird]"]')
    assert _is_path_into(doc, "spec.rules[0].from[0].source")
    assert not _is_path_into(doc, "spec.rules[1]")
    assert not _is_path_into(doc, "metadata.labels[a.b/c].x")
