"""One test per semantic rule of the verdict engine, each naming the Istio doc or source it encodes.

Citations: "API" is istio/api security/v1beta1/authorization_policy.proto (rendered at
istio.io/latest/docs/reference/config/security/authorization-policy/); "concepts" is
istio.io/latest/docs/concepts/security/; code paths are istio/istio@1.30.3 unless marked ztunnel.
"""

from __future__ import annotations

import pytest

from conformance.model import DENIED_L4, DENIED_L7, DENIED_UPSTREAM, Waypoint
from conformance.versions import IstioVersion
from tests.engine_world import (
    BACKEND,
    FINANCE,
    FRONTEND,
    OUTSIDER,
    ROGUE,
    ap,
    pa,
    probe,
    state,
    verdict,
    why,
)

FRONTEND_ID = "cluster.local/ns/default/sa/frontend"


# -- evaluation order and defaults (API "Authorization Policy" algorithm; concepts "implicit enablement") --

@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_no_policy_allows_everything_concepts_implicit_enablement(mode: str) -> None:
    d = why(state(), probe(ROGUE), mode)  # type: ignore[arg-type]
    assert (d.verdict, d.reason) == ("allow", "no-policy")


@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_empty_spec_allows_nothing_api_rules_unset_never_match(mode: str) -> None:
    s = state(ap("allow-nothing", {}))
    d = why(s, probe(FRONTEND), mode)  # type: ignore[arg-type]
    assert (d.verdict, d.reason) == ("deny", "allow-unmatched")


@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_allow_empty_rule_allows_all_golden_allow_empty_rule(mode: str) -> None:
    s = state(ap("allow-all", {"rules": [{}]}))
    assert verdict(s, probe(OUTSIDER), mode) == "allow"  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_deny_empty_rule_beats_any_allow_concepts_deny_all_research_1_4(mode: str) -> None:
    s = state(ap("deny-all", {"action": "DENY", "rules": [{}]})
              + ap("allow-frontend", {"rules": [{"from": [{"source": {"principals": [FRONTEND_ID]}}]}]}))
    d = why(s, probe(FRONTEND), mode)  # type: ignore[arg-type]
    assert (d.verdict, d.policy, d.rule) == ("deny", "default/deny-all", 0)
    assert any("DENY is evaluated before ALLOW" in line for line in d.trace)


def test_deny_without_rules_never_matches_builder_match_never() -> None:
    # Rejected by validation.go, but if it gets in the builder emits rbacPolicyMatchNever.
    s = state(ap("deny-none", {"action": "DENY"}))
    assert verdict(s, probe(ROGUE)) == "allow"


def test_audit_never_decides_api_audit() -> None:
    s = state(ap("audit", {"action": "AUDIT", "rules": [{}]}))
    assert verdict(s, probe(ROGUE)) == "allow"


def test_any_allow_policy_matching_allows_builder_allow_filter_merges_policies() -> None:
    s = state(ap("a", {"rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]})
              + ap("b", {"rules": [{"to": [{"operation": {"paths": ["/b"]}}]}]}))
    assert verdict(s, probe(ROGUE, path="/b")) == "allow"
    assert verdict(s, probe(ROGUE, path="/c")) == "deny"


# -- scope (pilot/pkg/model/authorization.go ListAuthorizationPolicies, policyattachment.go) -------------

def test_root_namespace_policy_applies_mesh_wide() -> None:
    s = state(ap("deny-rogue", {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["rogue"]}}]}]},
                 ns="istio-system"))
    assert verdict(s, probe(ROGUE)) == "deny"
    assert verdict(s, probe(FRONTEND)) == "allow"


def test_root_namespace_selector_applies_in_every_namespace() -> None:
    s = state(ap("sel", {"selector": {"matchLabels": {"app": "backend"}}, "action": "DENY", "rules": [{}]},
                 ns="istio-system"))
    assert verdict(s, probe(FRONTEND)) == "deny"


def test_other_namespace_policy_does_not_apply() -> None:
    s = state(ap("deny-all", {"action": "DENY", "rules": [{}]}, ns="finance"))
    assert verdict(s, probe(FRONTEND)) == "allow"


def test_selector_must_be_subset_of_labels() -> None:
    s = state(ap("sel", {"selector": {"matchLabels": {"app": "backend", "v": "2"}}, "action": "DENY",
                         "rules": [{}]}))
    assert verdict(s, probe(FRONTEND)) == "allow"


@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_target_refs_never_apply_to_sidecars_or_ztunnel_should_attach_policy(mode: str) -> None:
    s = state(ap("svc", {"targetRefs": [{"kind": "Service", "group": "", "name": "backend"}],
                         "action": "DENY", "rules": [{}]}))
    assert verdict(s, probe(FRONTEND), mode) == "allow"  # type: ignore[arg-type]


# -- sources: identity only with mTLS (concepts "Dependency on mutual TLS"; research §3.3) -------------

@pytest.mark.parametrize(("pattern", "matches"), [
    (FRONTEND_ID, True), ("cluster.local/ns/default/*", True), ("*/sa/frontend", True), ("*", True),
    ("cluster.local/ns/default/sa/front", False), ("*/sa/rogue", False),
    ("spiffe://cluster.local/ns/default/sa/frontend", False),  # research §3.1: never matches
])
@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_principal_string_forms_api_string_match(pattern: str, matches: bool, mode: str) -> None:
    s = state(ap("p", {"rules": [{"from": [{"source": {"principals": [pattern]}}]}]}))
    assert verdict(s, probe(FRONTEND), mode) == ("allow" if matches else "deny")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sidecar", "ambient"])
def test_plaintext_matches_no_identity_but_its_negation_test_authz_deny_plaintext(mode: str) -> None:
    deny_plain = state(ap("deny-plain", {"action": "DENY",
                                         "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]}))
    assert verdict(deny_plain, probe(OUTSIDER), mode) == "deny"  # type: ignore[arg-type]
    assert verdict(deny_plain, probe(FRONTEND), mode) == "allow"  # type: ignore[arg-type]
    allow_ns = state(ap("ns", {"rules": [{"from": [{"source": {"namespaces": ["*"]}}]}]}))
    assert verdict(allow_ns, probe(OUTSIDER), mode) == "deny"  # type: ignore[arg-type]
    assert verdict(allow_ns, probe(ROGUE), mode) == "allow"  # type: ignore[arg-type]


def test_namespaces_regex_generator_src_namespace() -> None:
    s = state(ap("ns", {"rules": [{"from": [{"source": {"namespaces": ["fin*"], "notNamespaces": ["rogue"]}}]}]}))
    assert verdict(s, probe(FINANCE)) == "allow"
    assert verdict(s, probe(ROGUE)) == "deny"


def test_service_accounts_bare_name_uses_policy_namespace_generator_service_account_regex() -> None:
    s = state(ap("sa", {"rules": [{"from": [{"source": {"serviceAccounts": ["frontend", "finance/app"]}}]}]}))
    assert verdict(s, probe(FRONTEND)) == "allow"
    assert verdict(s, probe(FINANCE)) == "allow"
    assert verdict(s, probe(ROGUE)) == "deny"


def test_ip_blocks_direct_remote_ip() -> None:
    s = state(ap("ip", {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.2/32"]}}]}]}))  # frontend's address
    assert verdict(s, probe(FRONTEND)) == "allow"
    assert verdict(s, probe(ROGUE)) == "deny"


def test_cluster_local_principal_means_mesh_trust_domain_in_envoy_only_bundle_go_ztunnel_1260() -> None:
    s = state(ap("p", {"rules": [{"from": [{"source": {"principals": [FRONTEND_ID]}}]}]}), trust_domain="td1")
    assert verdict(s, probe(FRONTEND), "sidecar") == "allow"  # ReplaceTrustDomainAliases rewrites cluster.local
    assert verdict(s, probe(FRONTEND), "ambient") == "deny"  # ztunnel: `// TODO: TDA`, literal comparison


# -- operations and conditions (generator.go, matcher/*.go; normalization doc) -----------------------------

def test_methods_and_not_methods_test_authz_not_method() -> None:
    s = state(ap("m", {"rules": [{"to": [{"operation": {"notMethods": ["PUT"]}}]}]}))
    assert verdict(s, probe(ROGUE, method="GET")) == "allow"
    assert verdict(s, probe(ROGUE, method="PUT")) == "deny"


@pytest.mark.parametrize(("path", "allowed"), [
    ("/public", True), ("/public/x", True), ("/public/../private", False), ("/public/%2e%2e/private", False),
    ("/public/./x", True), ("/private?x=/public", False), ("/public?x=1", True), ("/public%2F..%2Fprivate", True),
])
def test_path_normalization_base_test_authz_path_normalization(path: str, allowed: bool) -> None:
    s = state(ap("p", {"rules": [{"to": [{"operation": {"paths": ["/public*"]}}]}]}))
    assert verdict(s, probe(ROGUE, path=path)) == ("allow" if allowed else "deny")


def test_path_precedence_deny_beats_allow_test_authz_path_precedence() -> None:
    s = state(ap("deny", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/allow/admin"]}}]}]})
              + ap("allow", {"rules": [{"to": [{"operation": {"paths": ["/allow*"]}}]}]}))
    assert verdict(s, probe(ROGUE, path="/allow/admin")) == "deny"
    assert verdict(s, probe(ROGUE, path="/allow")) == "allow"
    assert verdict(s, probe(ROGUE, path="/allow/admin?param=value")) == "deny"


def test_hosts_are_case_insensitive_and_include_the_port_matcher_host_matcher() -> None:
    s = state(ap("h", {"rules": [{"to": [{"operation": {"hosts": ["Backend.Default:8080"]}}]}]}))
    assert verdict(s, probe(ROGUE)) == "allow"  # Host: backend.default:8080
    s2 = state(ap("h", {"rules": [{"to": [{"operation": {"hosts": ["backend.default"]}}]}]}))
    assert verdict(s2, probe(ROGUE)) == "deny"
    assert verdict(s2, probe(ROGUE, port=80)) == "allow"  # curl omits :80


def test_ports_and_destination_port_condition() -> None:
    s = state(ap("p", {"rules": [{"to": [{"operation": {"ports": ["80"]}}]}]}))
    assert verdict(s, probe(ROGUE, port=80)) == "allow"
    assert verdict(s, probe(ROGUE, port=8080)) == "deny"
    s2 = state(ap("p", {"rules": [{"when": [{"key": "destination.port", "notValues": ["80"]}]}]}))
    assert verdict(s2, probe(ROGUE, port=8080)) == "allow"


def test_when_request_headers_values_and_not_values_test_authz_conditions() -> None:
    s = state(ap("h", {"rules": [{"when": [{"key": "request.headers[x-team]", "values": ["a*"],
                                            "notValues": ["ab"]}]}]}))
    assert verdict(s, probe(ROGUE, headers={"X-Team": "ac"})) == "allow"
    assert verdict(s, probe(ROGUE, headers={"x-team": "ab"})) == "deny"
    assert verdict(s, probe(ROGUE)) == "deny"


def test_when_source_namespace_needs_mtls() -> None:
    s = state(ap("n", {"rules": [{"when": [{"key": "source.namespace", "notValues": ["rogue"]}]}]}))
    assert verdict(s, probe(OUTSIDER)) == "allow"  # not_id of an authenticated matcher holds for plaintext
    assert verdict(s, probe(ROGUE)) == "deny"


# -- TCP chains (builder tcp golden data; model.go checkError) ---------------------------------------------

def test_tcp_allow_with_http_only_attributes_drops_the_rule_golden_tcp_allow_only_http() -> None:
    s = state(ap("a", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))
    d = why(s, probe(FRONTEND, port=9000))
    assert (d.verdict, d.outcome) == ("deny", DENIED_L4)


def test_tcp_deny_with_http_only_attributes_denies_all_tcp_golden_tcp_deny_both() -> None:
    s = state(ap("d", {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))
    assert verdict(s, probe(FRONTEND, port=9000)) == "deny"
    assert verdict(s, probe(FRONTEND, port=8080, method="POST")) == "allow"


# -- ambient translation (ambient/authorization.go handleRule; ztunnel src/rbac.rs) -----------------------

def test_ambient_allow_rule_with_l7_is_dropped_l4_policy_docs() -> None:
    s = state(ap("a", {"rules": [{"from": [{"source": {"principals": [FRONTEND_ID]}}],
                                  "to": [{"operation": {"methods": ["GET"]}}]}]}))
    assert verdict(s, probe(FRONTEND), "sidecar") == "allow"
    d = why(s, probe(FRONTEND), "ambient")
    assert (d.verdict, d.outcome, d.layer) == ("deny", DENIED_L4, "ztunnel")


def test_ambient_deny_with_l7_only_clause_is_a_no_op_istio_61126() -> None:
    s = state(ap("d", {"action": "DENY", "rules": [{"from": [{"source": {"principals": [FRONTEND_ID]}}],
                                                    "to": [{"operation": {"methods": ["GET"]}}]}]}))
    assert verdict(s, probe(FRONTEND), "sidecar") == "deny"
    assert verdict(s, probe(FRONTEND), "ambient") == "allow"


def test_ambient_deny_mixing_l4_and_l7_in_one_source_denies_broader_golden_deny_groups() -> None:
    s = state(ap("d", {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"], "methods": ["POST"]}}]}]}))
    assert verdict(s, probe(FRONTEND, method="GET"), "sidecar") == "allow"
    assert verdict(s, probe(FRONTEND, method="GET"), "ambient") == "deny"


def test_ambient_deny_empty_rule_still_denies_beside_l7_rule() -> None:
    s = state(ap("d", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}, {}]}))
    assert why(s, probe(FRONTEND), "ambient").rule == 1


@pytest.mark.parametrize(("version", "enforced"), [("1.25.1", True), ("1.25.2", False), ("1.30", False)])
def test_ambient_dry_run_enforced_before_1_25_2_istio_55414(version: str, enforced: bool) -> None:
    s = state(ap("d", {"action": "DENY", "rules": [{}]}, annotations={"istio.io/dry-run": "true"}))
    v = IstioVersion.parse(version)
    assert verdict(s, probe(FRONTEND), "ambient", v) == ("deny" if enforced else "allow")
    assert verdict(s, probe(FRONTEND), "sidecar", v) == "allow"  # builder: shadow_rules only


# -- PeerAuthentication (authn/policy_applier.go ComposePeerAuthentication) -------------------------------

def test_strict_rejects_plaintext_in_both_modes() -> None:
    s = state(pa("strict", "STRICT"))
    d = why(s, probe(OUTSIDER))
    assert (d.verdict, d.outcome, d.reason, d.policy) == ("deny", DENIED_L4, "strict-mtls", "default/strict")
    assert verdict(s, probe(OUTSIDER), "ambient") == "deny"
    assert verdict(s, probe(FRONTEND)) == "allow"


def test_workload_peer_authentication_overrides_namespace_and_mesh() -> None:
    s = state(pa("mesh", "STRICT", ns="istio-system") + pa("wl", "PERMISSIVE", selector={"app": "backend"}))
    assert verdict(s, probe(OUTSIDER)) == "allow"
    s2 = state(pa("mesh", "STRICT", ns="istio-system") + pa("ns", "UNSET"))
    assert verdict(s2, probe(OUTSIDER)) == "deny"  # UNSET inherits


# -- version-dependent regex quoting (istio/istio#59992, #59700) ------------------------------------------

def test_service_account_regex_unquoted_before_fix_istio_59700() -> None:
    odd = BACKEND.__class__(name="odd", namespace="default", service_account="aXb", labels={"app": "odd"})
    world = (BACKEND, odd)
    s = state(ap("sa", {"rules": [{"from": [{"source": {"serviceAccounts": ["a.b"]}}]}]}), workloads=world)
    assert verdict(s, probe(odd), "sidecar", IstioVersion.parse("1.29.1")) == "allow"
    assert verdict(s, probe(odd), "sidecar", IstioVersion.parse("1.29.2")) == "deny"


# -- waypoints (ambient usage/l4-policy; tests/integration/ambient/baseline_test.go) ------------------------

WAYPOINT = (Waypoint("waypoint", "default"),)


def test_destination_ztunnel_sees_the_waypoint_identity_test_authorization_l4() -> None:
    s = state(ap("allow-frontend", {"selector": {"matchLabels": {"app": "backend"}},
                                    "rules": [{"from": [{"source": {"principals": [FRONTEND_ID]}}]}]}),
              waypoints=WAYPOINT)
    assert verdict(s, probe(FRONTEND), "ambient") == "allow"
    d = why(s, probe(FRONTEND), "waypoint")
    assert (d.verdict, d.outcome, d.layer) == ("deny", DENIED_UPSTREAM, "ztunnel")
    s2 = state(ap("allow-both", {"selector": {"matchLabels": {"app": "backend"}}, "rules": [{"from": [{"source": {
        "principals": [FRONTEND_ID, "cluster.local/ns/default/sa/waypoint"]}}]}]}), waypoints=WAYPOINT)
    assert verdict(s2, probe(FRONTEND), "waypoint") == "allow"


def test_waypoint_enforces_l7_target_ref_policies_test_authorization_l7() -> None:
    s = state(ap("wp", {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                        "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}), waypoints=WAYPOINT)
    assert verdict(s, probe(ROGUE, method="GET"), "waypoint") == "allow"
    d = why(s, probe(ROGUE, method="POST"), "waypoint")
    assert (d.verdict, d.outcome, d.layer, d.policy) == ("deny", DENIED_L7, "waypoint", None)
    assert verdict(s, probe(ROGUE, method="POST"), "ambient") == "allow"  # ztunnel never gets targetRefs


def test_gateway_class_target_ref_only_from_1_25() -> None:
    s = state(ap("all", {"targetRefs": [{"kind": "GatewayClass", "group": "gateway.networking.k8s.io",
                                         "name": "istio-waypoint"}]}, ns="istio-system"), waypoints=WAYPOINT)
    assert verdict(s, probe(ROGUE), "waypoint", IstioVersion.parse("1.25")) == "deny"
    assert verdict(s, probe(ROGUE), "waypoint", IstioVersion.parse("1.24")) == "allow"


def test_out_of_mesh_client_bypasses_the_waypoint() -> None:
    s = state(ap("wp", {"targetRefs": [{"kind": "Service", "group": "", "name": "backend"}],
                        "action": "DENY", "rules": [{}]}), waypoints=WAYPOINT)
    assert verdict(s, probe(ROGUE), "waypoint") == "deny"
    assert verdict(s, probe(OUTSIDER), "waypoint") == "allow"


def test_waypoint_ip_blocks_see_the_internal_client_address_istio_46982() -> None:
    """Differential-test finding: at a waypoint `ipBlocks` / `source.ip` are Envoy's direct_remote_ip
    (generator.go srcIPGenerator), and the waypoint's inner listener restores only the remote address
    (filters.go connect_authority → original_dst setRemoteAddress), so the direct one stays
    `envoy://internal_client_address/`: a positive IP match never holds there, a not-form always does.
    The same ipBlocks in a selector policy still match at the destination ztunnel (the waypoint's IP)."""
    refs = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
    s = state(ap("wp-ip", {"targetRefs": refs, "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/24"]}}]}]}),
              waypoints=WAYPOINT)
    d = why(s, probe(FRONTEND), "waypoint")
    assert (d.verdict, d.outcome, d.layer, d.policy) == ("deny", DENIED_L7, "waypoint", None)
    assert any("internal_client_address" in line for line in d.trace)
    assert verdict(s, probe(FRONTEND), "sidecar") == "allow", "targetRefs policies never reach sidecars"
    s_not = state(ap("wp-not-ip", {"targetRefs": refs, "action": "DENY",
                                   "rules": [{"when": [{"key": "source.ip", "notValues": ["10.0.0.2"]}]}]}),
                  waypoints=WAYPOINT)
    assert verdict(s_not, probe(FRONTEND), "waypoint") == "deny"
    s_sel = state(ap("l4-ip", {"selector": {"matchLabels": {"app": "backend"}},
                              "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.100"]}}]}]}), waypoints=WAYPOINT)
    assert verdict(s_sel, probe(FRONTEND), "waypoint") == "allow", "ztunnel sees the waypoint's own address"


def test_waypoint_sees_no_sni_for_plaintext_services_istio_53588() -> None:
    """Differential-test finding: `connection.sni` matches the client sidecar's Istio SNI at a sidecar,
    but a waypoint's `main_internal` listener inspects TLS only on ports of TLS services
    (listener_waypoint.go buildWaypointInternal, istio/istio#53588): for plaintext services the SNI is
    empty there, so a positive SNI match never holds and a not-form always does."""
    sni = "outbound_.8080_._.backend.default.svc.cluster.local"
    refs = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
    deny = {"action": "DENY", "rules": [{"when": [{"key": "connection.sni", "values": [sni]}]}]}
    s_sidecar = state(ap("deny-sni", deny))
    assert verdict(s_sidecar, probe(FRONTEND), "sidecar") == "deny"
    assert verdict(s_sidecar, probe(OUTSIDER), "sidecar") == "allow", "plaintext carries no SNI"
    s_wp = state(ap("wp-deny-sni", {"targetRefs": refs, **deny}), waypoints=WAYPOINT)
    d = why(s_wp, probe(FRONTEND), "waypoint")
    assert d.verdict == "allow" and any("istio/istio#53588" in line for line in d.trace)
    s_not = state(ap("wp-deny-not-sni", {"targetRefs": refs, "action": "DENY",
                                         "rules": [{"when": [{"key": "connection.sni", "notValues": [sni]}]}]}),
                  waypoints=WAYPOINT)
    assert verdict(s_not, probe(FRONTEND), "waypoint") == "deny"


@pytest.mark.parametrize(("pattern", "sidecar"), [
    ("*/cluster.local/ns/default/sa/frontend", "deny"),  # would need a `/` after `spiffe://`
    ("*/ns/default/sa/frontend", "allow"),
    ("*cluster.local/ns/default/sa/frontend", "allow"),  # `.*` matches the empty string
])
def test_suffix_principal_regex_does_not_overlap_the_spiffe_prefix(pattern: str, sidecar: str) -> None:
    """Differential-test finding: a `*suffix` principal becomes RE2 `spiffe://.*<quoted suffix>` over the
    whole URI (matcher/string.go StringMatcherWithPrefix), so the suffix cannot reuse the `/` that ends
    `spiffe://`. ztunnel compares the identity without `spiffe://` by suffix (rbac.rs), which agrees."""
    s = state(ap("allow-suffix", {"rules": [{"from": [{"source": {"principals": [pattern]}}]}]}))
    assert verdict(s, probe(FRONTEND), "sidecar") == sidecar
    assert verdict(s, probe(FRONTEND), "ambient") == sidecar


# -- trustDomains (Istio 1.30.2+, istio/istio#59358 backported in 71500c473b8) -------------------------------

def test_trust_domains_match_in_envoy_and_are_ignored_by_ztunnel() -> None:
    s = state(ap("td", {"rules": [{"from": [{"source": {"trustDomains": ["cluster.local"]}}]}]}))
    assert verdict(s, probe(FRONTEND), "sidecar") == "allow"
    assert verdict(s, probe(OUTSIDER), "sidecar") == "deny"
    # handleRule neither translates nor flags trustDomains: the Match is empty, so the ALLOW never matches
    assert verdict(s, probe(FRONTEND), "ambient") == "deny"
    s2 = state(ap("td", {"rules": [{"from": [{"source": {"trustDomains": ["other.td"]}}]}]}))
    assert verdict(s2, probe(FRONTEND), "sidecar") == "deny"
    s3 = state(ap("td", {"rules": [{"from": [{"source": {"trustDomains": ["clu*al"]}}]}]}))
    assert verdict(s3, probe(FRONTEND), "sidecar") == "allow"


def test_empty_from_list_is_absent_proto3_decoding() -> None:
    # An empty repeated field decodes to nothing, so `from: []` matches every source (validation.py warns).
    s = state(ap("a", {"rules": [{"from": [], "to": [{"operation": {"paths": ["/x"]}}]}]}))
    assert verdict(s, probe(ROGUE, path="/x")) == "allow"
    assert verdict(s, probe(ROGUE, path="/y")) == "deny"
