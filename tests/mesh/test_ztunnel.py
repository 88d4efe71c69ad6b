"""The ztunnel emulation: istiod's ambient translation, then Envoy RBAC that decides like ztunnel.

Why: ambient verdicts come from what istiod *sends* ztunnel (authorization.go handleRule /
convertAuthorizationPolicy at 1.30.3) and how ztunnel *evaluates* it (ztunnel src/rbac.rs,
src/state.rs). The first step is tested on its own (rules here, Istio's golden data in
test_golden.py); the second is checked against a line-by-line port of rbac.rs, on fixed cases and on
generated policies and connections (hypothesis; tests/mesh/rbac_rs.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.mesh.local import ztunnel
from conformance.mesh.local.authz import ztunnel_authorizations, ztunnel_filters, ztunnel_plaintext_filters
from conformance.model import MeshConfig
from tests.mesh import rbac_rs
from tests.mesh.envoy_support import Downstream, eval_filters, manifest

MESH = MeshConfig()
DEST_IP = "10.0.0.5"


def translate_one(spec: dict[str, Any], namespace: str = "foo", **kw: Any) -> ztunnel.Authorization | None:
    authz, _ = ztunnel.convert_authorization_policy(manifest("p", namespace, spec, **kw), "istio-system")
    return authz


def test_allow_rule_with_any_l7_attribute_is_dropped_whole() -> None:
    """handleRule: `if action == ALLOW && l7RuleFound { rules = nil }`."""
    authz = translate_one({"rules": [
        {"from": [{"source": {"principals": ["a/ns/b/sa/c"]}}], "to": [{"operation": {"methods": ["GET"]}}]},
        {"from": [{"source": {"principals": ["a/ns/b/sa/c"]}}]},
    ]})
    assert authz is not None
    assert [g.rule_index for g in authz.groups] == [1]


def test_allow_policy_left_without_rules_still_counts_and_allows_nothing() -> None:
    """rbac.rs: no rules → no match; state.rs: ALLOW policies present, none matched → deny."""
    spec = {"rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}
    authz = translate_one(spec)
    assert authz is not None and authz.groups == ()
    conn = rbac_rs.Peer("10.0.0.9", DEST_IP, 8080, "spiffe://cluster.local/ns/a/sa/b")
    assert rbac_rs.decide([authz], conn) == (False, None)
    (allow,) = ztunnel_filters([manifest("p", "foo", spec)], MESH, DEST_IP)
    assert allow["typed_config"]["rules"] == {}


def test_deny_keeps_l4_remains_and_l7_only_clause_never_matches() -> None:
    """handleRule for DENY: stripped fields leave empty Matches; rbac.rs skips empty matches."""
    authz = translate_one({"action": "DENY", "rules": [
        {"from": [{"source": {"principals": ["x/ns/a/sa/b"], "requestPrincipals": ["*"]}}]},
        {"to": [{"operation": {"methods": ["GET"]}}]},
        {"from": [{"source": {"namespaces": ["a"]}}], "when": [{"key": "request.headers[x]", "values": ["1"]}]},
    ]})
    assert authz is not None
    assert [g.to_dict() for g in authz.groups] == [
        {"rules": [{"matches": [{"principals": [{"exact": "x/ns/a/sa/b"}]}]}]},
        {"rules": [{"matches": [{}]}]},
        {"rules": [{"matches": [{"namespaces": [{"exact": "a"}]}]}, {"matches": [{}]}]},
    ]
    from_a = rbac_rs.Peer("10.0.0.9", DEST_IP, 8080, "spiffe://cluster.local/ns/a/sa/b")
    assert rbac_rs.matches(ztunnel.Authorization("p", "foo", "NAMESPACE", "DENY", authz.groups[1:]), from_a) is False
    assert rbac_rs.decide([authz], rbac_rs.Peer("1.1.1.1", DEST_IP, 80, "spiffe://x/ns/a/sa/b")) == (False, "foo/p")


def test_empty_rule_matches_everything() -> None:
    """handleRule returns a non-nil empty list: a Group with no clauses, which rbac.rs matches."""
    authz = translate_one({"action": "DENY", "rules": [{}]})
    assert authz is not None and authz.to_dict()["groups"] == [{}]
    assert rbac_rs.decide([authz], rbac_rs.Peer("1.1.1.1", DEST_IP, 80)) == (False, "foo/p")


def test_not_sent_to_ztunnel() -> None:
    """convertAuthorizationPolicy: dry-run (EnableWdsDryRunAuthzPol off), targetRefs, AUDIT, CUSTOM."""
    assert translate_one({"rules": [{}]}, annotations={"istio.io/dry-run": "true"}) is None
    assert translate_one({"rules": [{}], "targetRefs": [{"kind": "Service", "name": "x"}]}) is None
    assert translate_one({"action": "AUDIT", "rules": [{}]}) is None
    assert translate_one({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{}]}) is None


def test_scope() -> None:
    assert translate_one({"rules": [{}]}).scope == "NAMESPACE"  # type: ignore[union-attr]
    assert translate_one({"rules": [{}]}, namespace="istio-system").scope == "GLOBAL"  # type: ignore[union-attr]
    assert translate_one({"selector": {"matchLabels": {"a": "b"}}, "rules": [{}]}).scope == "WORKLOAD_SELECTOR"  # type: ignore[union-attr]


def test_no_trust_domain_rewriting_and_bare_service_account() -> None:
    """`// TODO: TDA`: principals literal; stringToServiceAccountMatch: bare SA in the policy's namespace."""
    authz = translate_one({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"],
                                                           "serviceAccounts": ["sa1", "other/sa2"]}}]}]})
    assert authz is not None
    (match,) = authz.groups[0].rules[0].matches
    assert match.principals == (ztunnel.StringMatch("exact", "cluster.local/ns/a/sa/b"),)
    assert match.service_accounts == (ztunnel.ServiceAccountMatch("foo", "sa1"),
                                      ztunnel.ServiceAccountMatch("other", "sa2"))
    td1 = rbac_rs.Peer("1.1.1.1", DEST_IP, 80, "spiffe://td1/ns/a/sa/b")
    assert not rbac_rs.matches(authz, td1)


def test_l4_when_keys_only() -> None:
    """l4WhenAttributes: source.serviceAccount, connection.sni, remote.ip... are L7 to ztunnel."""
    for key in ("source.serviceAccount", "connection.sni", "remote.ip", "request.headers[x]"):
        assert translate_one({"rules": [{"when": [{"key": key, "values": ["a"]}]}]}).groups == ()  # type: ignore[union-attr]
    for key in ("source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"):
        assert len(translate_one({"rules": [{"when": [{"key": key, "values": ["1"]}]}]}).groups) == 1  # type: ignore[union-attr]


def test_unparsable_ports_and_ips_are_silently_dropped() -> None:
    """stringToPort / stringToIP skip what they cannot parse."""
    authz = translate_one({"rules": [{"to": [{"operation": {"ports": ["x", "80", "70000"]}}],
                                      "from": [{"source": {"ipBlocks": ["bad", "10.0.0.0/8"]}}]}]})
    assert authz is not None
    to, frm = authz.groups[0].rules
    assert to.matches[0].destination_ports == (80,)
    assert frm.matches[0].source_ips == (ztunnel.Address("10.0.0.0", 8),)


def test_hbone_filters_match_port_and_destination_on_authority() -> None:
    """destination_port there is 15008: ports and destination IPs come from the CONNECT authority."""
    policies = [manifest("p", "foo", {"rules": [{"to": [{"operation": {"ports": ["80"]}}]}]}),
                manifest("d", "foo", {"action": "DENY", "rules": [
                    {"when": [{"key": "destination.ip", "values": ["10.0.0.0/24"]}],
                     "from": [{"source": {"ipBlocks": ["192.168.0.0/16"]}}]}]})]
    deny, allow = ztunnel_filters(policies, MESH, DEST_IP)
    assert deny["typed_config"]["rules_stat_prefix"] == "deny_"
    assert allow["typed_config"]["rules_stat_prefix"] == "allow_"
    assert allow["typed_config"]["rules"]["policies"]["ns[foo]-policy[p]-rule[0]"]["principals"] == [
        {"header": {"name": ":authority", "string_match": {"suffix": ":80"}}}]
    assert deny["typed_config"]["rules"]["policies"]["ns[foo]-policy[d]-rule[0]"]["principals"] == [
        {"and_ids": {"ids": [
            {"direct_remote_ip": {"address_prefix": "192.168.0.0", "prefix_len": 16}},
            {"header": {"name": ":authority", "string_match": {"prefix": "10.0.0.5:"}}},
        ]}}]


def test_plaintext_filters_have_no_identity() -> None:
    """rbac.rs with src_identity None: positive identity matchers false, their not-forms true."""
    policies = [
        manifest("deny-plain", "foo", {"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]}),
        manifest("allow-ns", "foo", {"rules": [{"from": [{"source": {"namespaces": ["a"]}}]},
                                               {"to": [{"operation": {"ports": ["80"]}}]},
                                               {"to": [{"operation": {"ports": ["81"]}}]}]}),
    ]
    deny, allow = ztunnel_plaintext_filters(policies, MESH, DEST_IP, 80)
    assert deny["name"] == "envoy.filters.network.rbac"
    assert deny["typed_config"]["rules"]["policies"]["ns[foo]-policy[deny-plain]-rule[0]"]["principals"] == [
        {"any": True}]
    allow_policies = allow["typed_config"]["rules"]["policies"]
    assert allow_policies["ns[foo]-policy[allow-ns]-rule[0]"]["principals"] == [{"not_id": {"any": True}}]
    assert allow_policies["ns[foo]-policy[allow-ns]-rule[1]"]["principals"] == [{"any": True}]
    assert allow_policies["ns[foo]-policy[allow-ns]-rule[2]"]["principals"] == [{"not_id": {"any": True}}]


def test_ztunnel_authorizations_keeps_only_what_is_sent() -> None:
    policies = [manifest("a", "foo", {"rules": [{}]}),
                manifest("dry", "foo", {"action": "DENY", "rules": [{}]}, annotations={"istio.io/dry-run": "true"}),
                manifest("audit", "foo", {"action": "AUDIT", "rules": [{}]})]
    assert [a.name for a in ztunnel_authorizations(policies, MESH)] == ["a"]
    (allow,) = ztunnel_filters(policies, MESH, DEST_IP)
    assert allow["typed_config"]["rules"] == {"policies": {"ns[foo]-policy[a]-rule[0]": {
        "permissions": [{"any": True}], "principals": [{"any": True}]}}}


# ---------------------------------------------------------------------------------------------------
# Property: the Envoy form decides exactly as rbac.rs evaluates the translated policies.

NAMESPACES = ["a", "b", "ab"]
SAS = ["x", "y"]
TDS = ["cluster.local", "td1"]
IPS = ["10.0.0.1", "10.0.0.2", "10.1.0.1", "192.168.1.1"]
CIDRS = ["10.0.0.1", "10.0.0.0/24", "10.0.0.0/8", "192.168.0.0/16"]
PORTS = ["80", "8080", "9000"]


def _pattern(values: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(values), st.sampled_from(values).map(lambda v: v[:1] + "*"),
                     st.sampled_from(values).map(lambda v: "*" + v[-1:]), st.just("*"))


principals = st.builds(lambda td, ns, sa: f"{td}/ns/{ns}/sa/{sa}", st.sampled_from([*TDS, "*"]),
                       st.sampled_from(NAMESPACES), st.sampled_from(SAS)) | _pattern(["cluster.local/ns/a/sa/x"])
sources = st.fixed_dictionaries({}, optional={
    "principals": st.lists(principals, min_size=1, max_size=2),
    "notPrincipals": st.lists(principals, min_size=1, max_size=2),
    "namespaces": st.lists(_pattern(NAMESPACES), min_size=1, max_size=2),
    "notNamespaces": st.lists(_pattern(NAMESPACES), min_size=1, max_size=2),
    "serviceAccounts": st.lists(st.sampled_from(["x", "a/x", "b/y"]), min_size=1, max_size=2),
    "ipBlocks": st.lists(st.sampled_from(CIDRS), min_size=1, max_size=2),
    "notIpBlocks": st.lists(st.sampled_from(CIDRS), min_size=1, max_size=2),
    "requestPrincipals": st.just(["*"]),
})
operations = st.fixed_dictionaries({}, optional={
    "ports": st.lists(st.sampled_from(PORTS), min_size=1, max_size=2),
    "notPorts": st.lists(st.sampled_from(PORTS), min_size=1, max_size=2),
    "methods": st.just(["GET"]),
})
whens = st.fixed_dictionaries({
    "key": st.sampled_from(["source.ip", "source.namespace", "source.principal", "destination.ip",
                            "destination.port", "request.headers[x]"]),
    "values": st.sampled_from([["10.0.0.0/8"], ["a"], ["cluster.local/ns/a/sa/x"], ["10.0.0.5"], ["80"], ["1"]]),
})
rules = st.fixed_dictionaries({}, optional={
    "from": st.lists(st.fixed_dictionaries({"source": sources}), min_size=1, max_size=2),
    "to": st.lists(st.fixed_dictionaries({"operation": operations}), min_size=1, max_size=2),
    "when": st.lists(whens, min_size=1, max_size=2),
})


def _policy(i: int, action: str, rs: list[Any] | None) -> Any:
    """A policy with `rules` (possibly empty) or without (never matches)."""
    return manifest(f"p{i}", "a", {"action": action, **({"rules": rs} if rs is not None else {})})


policies_st = st.lists(
    st.builds(_policy, st.integers(0, 1000), st.sampled_from(["ALLOW", "DENY"]),
              st.none() | st.lists(rules, max_size=3)),
    max_size=3, unique_by=lambda m: m.name,
)
peers = st.builds(
    lambda src, port, ident, dest: rbac_rs.Peer(src, dest, int(port), ident),
    st.sampled_from(IPS), st.sampled_from(PORTS),
    st.none() | st.builds(lambda td, ns, sa: f"spiffe://{td}/ns/{ns}/sa/{sa}", st.sampled_from(TDS),
                          st.sampled_from(NAMESPACES), st.sampled_from(SAS)),
    st.sampled_from([DEST_IP, "10.9.9.9"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=policies_st, peer=peers)
def test_envoy_rbac_config_evaluated_in_python_decides_like_rbac_rs(policies: list[Any], peer: rbac_rs.Peer) -> None:
    """The Envoy RBAC config the ztunnel emulation builds, evaluated by a Python model of Envoy's RBAC
    (tests/mesh/envoy_support.py eval_filters), not by real Envoy, decides like the rbac.rs port
    (tests/mesh/rbac_rs.py). Cheap enough for hundreds of generated cases; real Envoy deciding the same
    is checked in test_envoy_live.py and by the local-mesh tests."""
    authorizations = ztunnel_authorizations(policies, MESH)
    expected_allowed, _ = rbac_rs.decide(authorizations, peer)
    if peer.identity is not None:
        filters = ztunnel_filters(policies, MESH, peer.destination_ip)
        down = Downstream(peer.identity, peer.source_ip, f"{peer.destination_ip}:{peer.destination_port}")
    else:
        filters = ztunnel_plaintext_filters(policies, MESH, peer.destination_ip, peer.destination_port)
        down = Downstream(None, peer.source_ip, "")
    allowed, _ = eval_filters(filters, down)
    assert allowed == expected_allowed


@pytest.mark.parametrize(("match", "identity", "expected"), [
    (ztunnel.StringMatch("exact", "cluster.local/ns/a/sa/x"), "spiffe://cluster.local/ns/a/sa/x", True),
    (ztunnel.StringMatch("suffix", "sa/x"), "spiffe://cluster.local/ns/a/sa/x", True),
    (ztunnel.StringMatch("prefix", "cluster"), "spiffe://cluster.local/ns/a/sa/x", True),
    (ztunnel.StringMatch("presence"), "spiffe://cluster.local/ns/a/sa/x", True),
    (ztunnel.StringMatch("presence"), None, False),
])
def test_principal_match_table(match: ztunnel.StringMatch, identity: str | None, expected: bool) -> None:
    """rbac.rs rbac_test! tables: principals against plaintext and mTLS connections."""
    authz = ztunnel.Authorization("p", "a", "NAMESPACE", "ALLOW",
                                  (ztunnel.Group((ztunnel.Clause((ztunnel.Match(principals=(match,)),)),)),))
    peer = rbac_rs.Peer("1.1.1.1", DEST_IP, 80, identity)
    assert rbac_rs.matches(authz, peer) is expected
    neg = ztunnel.Authorization("p", "a", "NAMESPACE", "ALLOW",
                                (ztunnel.Group((ztunnel.Clause((ztunnel.Match(not_principals=(match,)),)),)),))
    assert rbac_rs.matches(neg, peer) is (not expected)
