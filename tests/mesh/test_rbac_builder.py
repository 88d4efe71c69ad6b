"""Rule-by-rule tests of the sidecar / waypoint RBAC compiler, each citing the istiod code it follows.

Why: the golden cases check whole outputs; these pin the individual rules (and our two additions,
`port_map` and `rules_stat_prefix`) so that a regression names the rule it broke.
"""

from __future__ import annotations

from typing import Any

import pytest

from conformance.mesh.local.authz import (
    PEER_PRINCIPAL_KEY,
    sidecar_http_filters,
    sidecar_tcp_filters,
    waypoint_filters,
)
from conformance.mesh.local.rbac import TrustDomainBundle, go_parse_bool, quote_meta
from conformance.model import MeshConfig
from tests.mesh.envoy_support import manifest

MESH = MeshConfig()
TD1 = MeshConfig(trust_domain="td1")


def rules_of(f: dict[str, Any]) -> Any:
    return f["typed_config"].get("rules", {})


def only_policy(f: dict[str, Any]) -> Any:
    (policy,) = rules_of(f)["policies"].values()
    return policy


def principal_ids(policy: dict[str, Any]) -> Any:
    (principal,) = policy["principals"]
    return principal["and_ids"]["ids"]


def permission_rules(policy: dict[str, Any]) -> Any:
    (permission,) = policy["permissions"]
    return permission["and_rules"]["rules"]


ALLOW_GET = manifest("allow-get", "foo", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})
DENY_ADMIN = manifest("deny-admin", "foo", {"action": "DENY",
                                            "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]})
AUDIT_ALL = manifest("audit", "foo", {"action": "AUDIT", "rules": [{}]})


def test_filter_order_is_audit_deny_allow_with_log_action() -> None:
    """builder.go build(): AUDIT (RBAC_LOG), then DENY, then ALLOW, one filter per action present."""
    filters = sidecar_http_filters([ALLOW_GET, DENY_ADMIN, AUDIT_ALL], MESH, {})
    assert [rules_of(f).get("action", "ALLOW") for f in filters] == ["LOG", "DENY", "ALLOW"]
    assert {f["name"] for f in filters} == {"envoy.filters.http.rbac"}
    assert [f["typed_config"]["rules_stat_prefix"] for f in filters] == ["audit_", "deny_", "allow_"]


def test_no_policies_no_filters() -> None:
    """builder.go New(): nil builder when there are no ALLOW/DENY/AUDIT policies."""
    assert sidecar_http_filters([], MESH, {}) == []
    assert [rules_of(f).get("action", "ALLOW") for f in sidecar_http_filters([DENY_ADMIN], MESH, {})] == ["DENY"]


def test_policy_ids_name_namespace_policy_and_rule_index() -> None:
    """builder.go policyName: `ns[<ns>]-policy[<name>]-rule[<i>]`, i counting every rule."""
    policy = manifest("p", "bar", {"rules": [{"to": [{"operation": {"ports": ["1"]}}]}, {}]})
    (f,) = sidecar_http_filters([policy], MESH, {})
    assert set(rules_of(f)["policies"]) == {"ns[bar]-policy[p]-rule[0]", "ns[bar]-policy[p]-rule[1]"}


def test_spec_without_rules_never_matches() -> None:
    """builder.go: `len(Rules) == 0` → rbacPolicyMatchNever (not any / not any)."""
    (f,) = sidecar_http_filters([manifest("deny-all", "foo", {})], MESH, {})
    assert only_policy(f) == {"permissions": [{"not_rule": {"any": True}}], "principals": [{"not_id": {"any": True}}]}


def test_empty_rule_matches_everything() -> None:
    """model.go Generate: empty permission / principal lists become `any`."""
    (f,) = sidecar_http_filters([manifest("allow-all", "foo", {"rules": [{}]})], MESH, {})
    assert only_policy(f) == {"permissions": [{"and_rules": {"rules": [{"any": True}]}}],
                              "principals": [{"and_ids": {"ids": [{"any": True}]}}]}


@pytest.mark.parametrize("value", ["true", "True", "1", "t", "TRUE"])
def test_dry_run_goes_to_shadow_rules(value: str) -> None:
    """builder.go isDryRun (strconv.ParseBool) → shadowRules, with istio_dry_run_deny_ for DENY."""
    policy = manifest("d", "foo", DENY_ADMIN.spec, annotations={"istio.io/dry-run": value})
    (f,) = sidecar_http_filters([policy], MESH, {})
    cfg = f["typed_config"]
    assert "rules" not in cfg
    assert cfg["shadow_rules"]["action"] == "DENY"
    assert cfg["shadow_rules_stat_prefix"] == "istio_dry_run_deny_"


def test_dry_run_false_or_garbage_is_enforced() -> None:
    """ParseBool errors read as false."""
    for value in ("false", "yes", ""):
        policy = manifest("d", "foo", DENY_ADMIN.spec, annotations={"istio.io/dry-run": value})
        (f,) = sidecar_http_filters([policy], MESH, {})
        assert "shadow_rules" not in f["typed_config"]
    assert not go_parse_bool("yes")


def test_shadow_prefix_quirk_on_every_filter() -> None:
    """builder.go shadowRuleStatPrefix(nil) reads the nil RBAC's action as ALLOW."""
    (f,) = sidecar_http_filters([DENY_ADMIN], MESH, {})
    assert f["typed_config"]["shadow_rules_stat_prefix"] == "istio_dry_run_allow_"


def test_principal_gets_spiffe_prefix_and_cluster_local_means_mesh_trust_domain() -> None:
    """generator.go srcPrincipalGenerator + bundle.go ReplaceTrustDomainAliases (no aliases)."""
    policy = manifest("p", "foo", {"rules": [{"from": [{"source": {"principals": [
        "cluster.local/ns/a/sa/b", "td1/ns/a/sa/c", "other/ns/a/sa/d", "*/ns/a/sa/e", "*",
        "prefix-*", "*-suffix",
    ]}}]}]})
    (f,) = sidecar_http_filters([policy], TD1, {})
    (ors,) = principal_ids(only_policy(f))
    names = [i["authenticated"]["principal_name"] for i in ors["or_ids"]["ids"]]
    assert names == [
        {"exact": "spiffe://td1/ns/a/sa/b"},
        {"exact": "spiffe://td1/ns/a/sa/c"},
        {"exact": "spiffe://other/ns/a/sa/d"},
        {"safe_regex": {"regex": "spiffe://.*/ns/a/sa/e"}},
        {"safe_regex": {"regex": ".+"}},
        {"prefix": "spiffe://prefix-"},
        {"safe_regex": {"regex": "spiffe://.*-suffix"}},
    ]


def test_trust_domain_bundle_with_aliases() -> None:
    """bundle.go: one principal per trust domain of the bundle, duplicates dropped."""
    bundle = TrustDomainBundle.of("td1", ["cluster.local", "old"])
    assert bundle.replace_trust_domain_aliases(["old/ns/a/sa/b", "x/ns/a/sa/b", "a/b"]) == [
        "td1/ns/a/sa/b", "cluster.local/ns/a/sa/b", "old/ns/a/sa/b", "x/ns/a/sa/b", "a/b"]


def test_namespaces_regex_quotes_literals() -> None:
    """generator.go srcNamespaceGenerator: QuoteMeta on the literal parts (the 1.30.0 security fix)."""
    policy = manifest("p", "foo", {"rules": [{"from": [{"source": {"namespaces": ["a.b", "pre*", "*"]}}]}]})
    (f,) = sidecar_http_filters([policy], MESH, {})
    (ors,) = principal_ids(only_policy(f))
    regexes = [i["authenticated"]["principal_name"]["safe_regex"]["regex"] for i in ors["or_ids"]["ids"]]
    assert regexes == [r".*/ns/a\.b/.*", ".*/ns/pre.*/.*", ".*/ns/.*/.*"]


def test_quote_meta_is_go_quote_meta() -> None:
    assert quote_meta(r"a.b-c_d+e*f?(g)|[h]{i}^$\ ") == r"a\.b-c_d\+e\*f\?\(g\)\|\[h\]\{i\}\^\$\\ "


def test_service_accounts_bare_name_uses_policy_namespace() -> None:
    """generator.go serviceAccountRegex."""
    policy = manifest("p", "foo", {"rules": [{"from": [{"source": {"serviceAccounts": ["bar/sa.1", "local"]}}]}]})
    (f,) = sidecar_http_filters([policy], MESH, {})
    (ors,) = principal_ids(only_policy(f))
    regexes = [i["authenticated"]["principal_name"]["safe_regex"]["regex"] for i in ors["or_ids"]["ids"]]
    assert regexes == [r"spiffe://.+/ns/bar/(.+/|)sa/sa\.1(/.+)?", r"spiffe://.+/ns/foo/(.+/|)sa/local(/.+)?"]


def test_field_order_and_not_forms() -> None:
    """model.go New: insertFront order (hosts, methods, paths, ports); notX is NOT(OR(values))."""
    policy = manifest("p", "foo", {"rules": [{"to": [{"operation": {
        "ports": ["8080"], "paths": ["/a"], "notPaths": ["/b"], "methods": ["GET"], "hosts": ["Example.com"],
    }}]}]})
    (f,) = sidecar_http_filters([policy], MESH, {})
    rules = permission_rules(only_policy(f))
    assert rules == [
        {"or_rules": {"rules": [{"header": {"name": ":authority",
                                            "string_match": {"exact": "Example.com", "ignore_case": True}}}]}},
        {"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}},
        {"or_rules": {"rules": [{"url_path": {"path": {"exact": "/a"}}}]}},
        {"not_rule": {"or_rules": {"rules": [{"url_path": {"path": {"exact": "/b"}}}]}}},
        {"or_rules": {"rules": [{"destination_port": 8080}]}},
    ]


def test_port_map_applies_to_ports_not_ports_and_destination_port() -> None:
    """Ours: scenario ports below 1024 are remapped to the listener's real port."""
    policy = manifest("p", "foo", {"rules": [{"to": [{"operation": {"ports": ["80"], "notPorts": ["443"]}}],
                                              "when": [{"key": "destination.port", "values": ["80", "9000"]}]}]})
    for build in (sidecar_http_filters, sidecar_tcp_filters, waypoint_filters):
        (f,) = build([policy], MESH, {80: 10080, 443: 10443})
        assert permission_rules(only_policy(f)) == [
            {"or_rules": {"rules": [{"destination_port": 10080}]}},
            {"not_rule": {"or_rules": {"rules": [{"destination_port": 10443}]}}},
            {"or_rules": {"rules": [{"destination_port": 10080}, {"destination_port": 9000}]}},
        ]


def test_when_conditions_fold_into_every_from_and_to() -> None:
    """model.go New: `when` is appendLast-ed onto each from (principal keys) / to (permission keys)."""
    policy = manifest("p", "foo", {"rules": [{
        "from": [{"source": {"namespaces": ["a"]}}, {"source": {"ipBlocks": ["10.0.0.0/8"]}}],
        "when": [{"key": "request.headers[x-team]", "values": ["blue"]},
                 {"key": "source.ip", "notValues": ["10.1.2.3"]}],
    }]})
    (f,) = sidecar_http_filters([policy], MESH, {})
    policy_json = only_policy(f)
    assert len(policy_json["principals"]) == 2
    for principal in policy_json["principals"]:
        tail = principal["and_ids"]["ids"][1:]
        assert tail == [
            {"or_ids": {"ids": [{"header": {"name": "x-team", "string_match": {"exact": "blue"}}}]}},
            {"not_id": {"or_ids": {"ids": [{"direct_remote_ip": {"address_prefix": "10.1.2.3", "prefix_len": 32}}]}}},
        ]


def test_paths_templates_and_wildcards() -> None:
    """generator.go pathGenerator / template.go: `{*}`, `{**}` → uri_template; `*` → regex `.+`."""
    policy = manifest("p", "foo", {"rules": [{"to": [{"operation": {"paths": ["/a/{*}/b/{**}", "*", "/p*"]}}]}]})
    (f,) = sidecar_http_filters([policy], MESH, {})
    (ors,) = permission_rules(only_policy(f))
    assert ors["or_rules"]["rules"] == [
        {"uri_template": {"name": "uri-template", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "path_template": "/a/*/b/**"}}},
        {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}},
        {"url_path": {"path": {"prefix": "/p"}}},
    ]


def test_header_presence_prefix_suffix() -> None:
    """header.go HeaderMatcher: `*` presence, `x*` prefix, `*x` suffix."""
    policy = manifest("p", "foo", {"rules": [{"when": [{"key": "request.headers[x]", "values": ["*", "a*", "*b"]}]}]})
    (f,) = sidecar_http_filters([policy], MESH, {})
    (ors,) = principal_ids(only_policy(f))
    assert [i["header"] for i in ors["or_ids"]["ids"]] == [
        {"name": "x", "present_match": True},
        {"name": "x", "string_match": {"prefix": "a"}},
        {"name": "x", "string_match": {"suffix": "b"}},
    ]


def test_tcp_allow_rule_with_http_attribute_disappears() -> None:
    """model.go checkError: an HTTP-only attribute on a TCP chain skips the whole ALLOW rule."""
    policy = manifest("p", "foo", {"rules": [
        {"from": [{"source": {"namespaces": ["a"]}}], "to": [{"operation": {"methods": ["GET"]}}]},
        {"to": [{"operation": {"ports": ["9000"]}}]},
    ]})
    (f,) = sidecar_tcp_filters([policy], MESH, {})
    assert f["name"] == "envoy.filters.network.rbac"
    assert f["typed_config"]["stat_prefix"] == "tcp."
    assert "rules_stat_prefix" not in f["typed_config"]  # Envoy's network RBAC has no such field
    assert set(rules_of(f)["policies"]) == {"ns[foo]-policy[p]-rule[1]"}


def test_tcp_allow_with_only_http_rules_allows_nothing() -> None:
    """Golden tcp/allow-only-http: `rules: {}` (ALLOW with no policies) denies all TCP."""
    policy = manifest("p", "foo", {"rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]})
    (f,) = sidecar_tcp_filters([policy], MESH, {})
    assert f["typed_config"]["rules"] == {}


def test_tcp_deny_drops_only_the_http_attributes() -> None:
    """model.go checkError: DENY keeps the rest, so it denies more widely on TCP."""
    policy = manifest("p", "foo", {"action": "DENY", "rules": [
        {"from": [{"source": {"namespaces": ["a"]}}], "to": [{"operation": {"methods": ["GET"]}}]},
        {"to": [{"operation": {"methods": ["GET"]}}], "when": [{"key": "request.headers[x]", "values": ["1"]}]},
    ]})
    (f,) = sidecar_tcp_filters([policy], MESH, {})
    policies = rules_of(f)["policies"]
    assert permission_rules(policies["ns[foo]-policy[p]-rule[0]"]) == [{"any": True}]
    assert principal_ids(policies["ns[foo]-policy[p]-rule[0]"]) == [{"or_ids": {"ids": [
        {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/a/.*"}}}}]}}]
    assert policies["ns[foo]-policy[p]-rule[1]"] == {"permissions": [{"and_rules": {"rules": [{"any": True}]}}],
                                                     "principals": [{"and_ids": {"ids": [{"any": True}]}}]}


def test_unknown_when_key_skips_the_rule_for_every_action() -> None:
    """model.go New: "unknown attribute" fails the rule before checkError, even for DENY."""
    for action in ("ALLOW", "DENY"):
        rule = {"when": [{"key": "destination.name", "values": ["x"]}]}
        policy = manifest("p", "foo", {"action": action, "rules": [rule]})
        (f,) = sidecar_http_filters([policy], MESH, {})
        assert "policies" not in rules_of(f)


def test_invalid_value_drops_rule_for_allow_and_value_for_deny() -> None:
    """model.go checkError on a value error (a bad port)."""
    spec = {"rules": [{"to": [{"operation": {"ports": ["http", "80"]}}]}]}
    (allow,) = sidecar_http_filters([manifest("p", "foo", spec)], MESH, {})
    assert "policies" not in rules_of(allow)
    (deny,) = sidecar_http_filters([manifest("p", "foo", {**spec, "action": "DENY"})], MESH, {})
    assert permission_rules(only_policy(deny)) == [{"or_rules": {"rules": [{"destination_port": 80}]}}]


def test_waypoint_matches_identity_on_filter_state() -> None:
    """builder Option.UseFilterState → principal.go principalAuthenticated's filter_state branch."""
    policy = manifest("p", "foo", {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"],
                                                                   "ipBlocks": ["10.0.0.1"]}}]}]})
    (f,) = waypoint_filters([policy], MESH, {})
    (by_principal, by_ip) = principal_ids(only_policy(f))
    assert by_principal == {"or_ids": {"ids": [{"filter_state": {
        "key": PEER_PRINCIPAL_KEY, "string_match": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}}]}}
    assert by_ip == {"or_ids": {"ids": [{"direct_remote_ip": {"address_prefix": "10.0.0.1", "prefix_len": 32}}]}}
    assert PEER_PRINCIPAL_KEY == "io.istio.peer_principal"


def test_cidr_kept_as_written() -> None:
    """util.go AddrStrToCidrRange: not masked (Envoy masks)."""
    policy = manifest("p", "foo", {"rules": [{"when": [{"key": "destination.ip", "values": ["10.1.2.3/8", "::1"]}]}]})
    (f,) = sidecar_http_filters([policy], MESH, {})
    assert permission_rules(only_policy(f)) == [{"or_rules": {"rules": [
        {"destination_ip": {"address_prefix": "10.1.2.3", "prefix_len": 8}},
        {"destination_ip": {"address_prefix": "::1", "prefix_len": 128}},
    ]}}]


def test_custom_action_with_an_undefined_provider_is_istiods_rbac_deny() -> None:
    """CUSTOM goes to the CUSTOM builder (extauthz.py), in front of the local RBAC filters; a provider the mesh
    config does not define becomes istiod's RBAC DENY `...-deny-due-to-bad-CUSTOM-action` (builder.go)."""
    custom = manifest("c", "foo", {"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{}]})
    filters = sidecar_http_filters([custom, manifest("d", "foo", {"action": "DENY", "rules": [{}]})], MESH, {})
    assert [f["typed_config"]["rules"]["action"] for f in filters] == ["DENY", "DENY"]
    assert list(filters[0]["typed_config"]["rules"]["policies"]) == [
        "istio-ext-authz-x-ns[foo]-policy[c]-rule[0]-deny-due-to-bad-CUSTOM-action"]
    assert list(filters[1]["typed_config"]["rules"]["policies"]) == ["ns[foo]-policy[d]-rule[0]"]
