"""Namespace mapping: consistent (every policy matches the mapped workloads exactly as the scenario's
workloads), reversible, and what it maps keeps policies valid Istio."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from conformance.errors import TargetError
from conformance.mesh.cluster.naming import NamespaceMap, new_prefix
from conformance.model import MeshConfig, Scenario, Workload
from conformance.scenario import load
from conformance.validation import validate_manifest
from conformance.versions import IstioVersion

POLICIES = sorted(Path(__file__).resolve().parents[2].joinpath("policies").glob("*.yaml"))
label = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
prefix_st = st.from_regex(r"az[a-z0-9]{6}-", fullmatch=True)


def istio_match(pattern: str, value: str) -> bool:
    """Istio's string match for namespaces/principals: exact, prefix `x*`, suffix `*x`, presence `*`."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def scenario_with(namespaces: list[str]) -> Scenario:
    workloads = tuple(Workload(f"w{i}", ns, "sa", {"app": "w"}) for i, ns in enumerate(namespaces))
    return Scenario("s", "", "s.yaml", ("sidecar",), MeshConfig(), workloads, (), ())


def patterns(values: list[str]) -> st.SearchStrategy[str]:
    """Patterns built from the scenario's own names (the interesting ones) and from anything."""
    exact = st.sampled_from(values)
    partial = st.builds(lambda v, n: v[:n], exact, st.integers(1, 8))
    tails = st.builds(lambda v, n: v[-n:], exact, st.integers(1, 8))
    return st.one_of(exact, st.just("*"), st.builds(lambda p: p + "*", partial),
                     st.builds(lambda t: "*" + t, tails), label)


@given(st.lists(label, min_size=1, max_size=4, unique=True), prefix_st, st.data())
def test_namespace_patterns_match_the_mapped_namespaces_exactly_as_before(namespaces, prefix, data):
    nsmap = NamespaceMap.for_scenario(scenario_with(namespaces), prefix)
    pattern = data.draw(patterns(namespaces))
    mapped = nsmap.namespace_value(pattern)
    for ns in namespaces:
        before, after = istio_match(pattern, ns), istio_match(mapped, nsmap.cluster_namespace(ns))
        if pattern.startswith("*") and pattern != "*":
            # a suffix reaching into the prefix is refused by check_consistent (tested below)
            assume(before == after)
        assert before == after, (pattern, mapped, ns)


@given(st.lists(label, min_size=1, max_size=3, unique=True), st.lists(label, min_size=1, max_size=2, unique=True),
       prefix_st, st.data())
def test_principal_patterns_match_the_mapped_identities_exactly_as_before(namespaces, accounts, prefix, data):
    nsmap = NamespaceMap.for_scenario(scenario_with(namespaces), prefix)
    identities = [f"cluster.local/ns/{ns}/sa/{sa}" for ns in namespaces for sa in accounts]
    pattern = data.draw(patterns(identities))
    mapped = nsmap.principal_value(pattern)
    for ns in namespaces:
        for sa in accounts:
            before = istio_match(pattern, f"cluster.local/ns/{ns}/sa/{sa}")
            after = istio_match(mapped, f"cluster.local/ns/{nsmap.cluster_namespace(ns)}/sa/{sa}")
            if pattern.startswith("*") and "/sa/" not in pattern[1:]:
                assume(before == after)  # a partial namespace suffix reaching into the prefix
            assert before == after, (pattern, mapped, ns, sa)


@given(st.lists(label, min_size=1, max_size=4, unique=True), prefix_st)
def test_mapping_is_reversible(namespaces, prefix):
    nsmap = NamespaceMap.for_scenario(scenario_with(namespaces), prefix)
    for ns in [*namespaces, "istio-system", "elsewhere"]:
        assert nsmap.scenario_namespace(nsmap.cluster_namespace(ns)) == ns
        assert nsmap.scenario_ref(nsmap.cluster_ref(f"{ns}/x")) == f"{ns}/x"
    assert len({nsmap.cluster_namespace(ns) for ns in namespaces}) == len(namespaces)


def test_new_prefixes_are_unique_and_valid():
    prefixes = {new_prefix() for _ in range(200)}
    assert len(prefixes) == 200
    assert all(p.startswith("az") and p.endswith("-") and len(p) == 9 for p in prefixes)


def test_root_namespace_and_foreign_names_are_left_alone():
    nsmap = NamespaceMap.for_scenario(scenario_with(["accounts"]), "azq-")
    assert nsmap.cluster_namespace("istio-system") == "istio-system"
    assert nsmap.namespace_value("legacy") == "legacy"
    assert nsmap.principal_value("cluster.local/ns/accounts/sa/x") == "cluster.local/ns/azq-accounts/sa/x"
    assert nsmap.principal_value("cluster.local/ns/acc*") == "cluster.local/ns/azq-acc*"
    assert nsmap.principal_value("*/ns/accounts/sa/x") == "*/ns/azq-accounts/sa/x"
    assert nsmap.principal_value("*/sa/x") == "*/sa/x"
    assert nsmap.service_account_value("accounts/x") == "azq-accounts/x"
    assert nsmap.host_value("accounts.accounts:8080") == "accounts.azq-accounts:8080"
    assert nsmap.host_value("*.accounts.svc.cluster.local") == "*.azq-accounts.svc.cluster.local"
    assert nsmap.host_value("example.com") == "example.com"


def test_policy_body_maps_every_namespace_reference():
    nsmap = NamespaceMap.for_scenario(scenario_with(["accounts", "finance"]), "azq-")
    body = {
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "accounts"},
        "spec": {
            "selector": {"matchLabels": {"app": "accounts"}},
            "rules": [{
                "from": [{"source": {"namespaces": ["finance"], "notPrincipals": ["cluster.local/ns/finance/sa/bad"],
                                     "serviceAccounts": ["finance/curl"]}}],
                "to": [{"operation": {"hosts": ["accounts.accounts:8080"]}}],
                "when": [{"key": "source.namespace", "values": ["finance"]},
                         {"key": "source.principal", "notValues": ["cluster.local/ns/accounts/sa/x"]},
                         {"key": "request.headers[x-ns]", "values": ["finance"]}],
            }],
        },
    }
    out = nsmap.policy_body(body)
    assert out["metadata"]["namespace"] == "azq-accounts"
    src = out["spec"]["rules"][0]["from"][0]["source"]
    assert src == {"namespaces": ["azq-finance"], "notPrincipals": ["cluster.local/ns/azq-finance/sa/bad"],
                   "serviceAccounts": ["azq-finance/curl"]}
    assert out["spec"]["rules"][0]["to"][0]["operation"]["hosts"] == ["accounts.azq-accounts:8080"]
    when = out["spec"]["rules"][0]["when"]
    assert when[0]["values"] == ["azq-finance"]
    assert when[1]["notValues"] == ["cluster.local/ns/azq-accounts/sa/x"]
    assert when[2]["values"] == ["finance"]  # a header value is not a namespace
    assert out["spec"]["selector"] == {"matchLabels": {"app": "accounts"}}  # labels stay: pods keep them
    assert body["metadata"]["namespace"] == "accounts"  # the input is not modified


def test_target_refs_namespace_is_mapped():
    nsmap = NamespaceMap.for_scenario(scenario_with(["accounts"]), "azq-")
    out = nsmap.policy_body({"metadata": {"namespace": "accounts"},
                             "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "a",
                                                      "namespace": "accounts"}]}})
    assert out["spec"]["targetRefs"][0]["namespace"] == "azq-accounts"


def test_suffix_pattern_reaching_into_the_prefix_is_refused():
    scenario = scenario_with(["a"])
    nsmap = NamespaceMap.for_scenario(scenario, "azq-")
    from conformance.model import Manifest

    m = Manifest("AuthorizationPolicy", "security.istio.io/v1", "p", "a",
                 {"spec": {"rules": [{"from": [{"source": {"namespaces": ["*-a"]}}]}]}}, "s.yaml: step x")
    with pytest.raises(TargetError, match="cannot be kept meaning the same"):
        nsmap.check_consistent(scenario, [m])


def test_workloads_in_the_root_namespace_and_too_long_names_are_refused():
    with pytest.raises(TargetError, match="root namespace"):
        NamespaceMap.for_scenario(scenario_with(["istio-system"]), "azq-")
    with pytest.raises(TargetError, match="too long"):
        NamespaceMap.for_scenario(scenario_with(["a" * 60]), "azqwertyu-")


def test_a_waypoint_in_the_root_namespace_is_refused():
    """Found by review: the root namespace is never renamed, so a waypoint there made the session label, then
    delete, istio-system."""
    from dataclasses import replace

    from conformance.model import Waypoint

    scenario = replace(scenario_with(["a"]), waypoints=(Waypoint("waypoint", "istio-system"),))
    with pytest.raises(TargetError, match="waypoint istio-system/waypoint lives in the mesh root namespace"):
        NamespaceMap.for_scenario(scenario, "azq-")


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.stem)
def test_every_shipped_policy_stays_valid_istio_after_mapping(path):
    version = IstioVersion.parse("1.30")
    scenario = load(path, version)
    nsmap = NamespaceMap.for_scenario(scenario, "az1b2c3d-")
    for step in scenario.steps:
        nsmap.check_consistent(scenario, step.policies)
        for m in step.policies:
            before = [(f.field, f.severity) for f in validate_manifest(m.body, version)]
            mapped = nsmap.manifest(m)
            after = [(f.field, f.severity) for f in validate_manifest(mapped.body, version)]
            assert after == before, (m.origin, after)
            assert mapped.namespace == nsmap.cluster_namespace(m.namespace)


def test_session_prefixes():
    from conformance.mesh.cluster.naming import PREFIX_RE, session_prefix

    assert session_prefix("ci-", 3) == "ci3-" and session_prefix("ci", 4) == "ci4-"
    assert PREFIX_RE.match(session_prefix(None, 1)) and session_prefix(None, 1) != session_prefix(None, 1)


def test_a_custom_policys_provider_is_the_sessions_own():
    """meshconfig.py registers each session's providers under its prefix; CUSTOM policies name them so, and
    nothing else is touched (an ALLOW policy has no provider)."""
    from conformance.model import Manifest

    nsmap = NamespaceMap("az1-", frozenset({"foo"}))
    body = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "c", "namespace": "foo"},
            "spec": {"action": "CUSTOM", "provider": {"name": "sample"}, "rules": [{}]}}
    mapped = nsmap.manifest(Manifest("AuthorizationPolicy", "security.istio.io/v1", "c", "foo", body, "t"))
    assert mapped.body["spec"]["provider"] == {"name": "az1-sample"} and mapped.namespace == "az1-foo"
    assert body["spec"]["provider"] == {"name": "sample"}  # the scenario's own document is not changed
    assert nsmap.provider_name("sample") == "az1-sample"


def test_scenarios_with_an_ingress_gateway_are_built_for_clusters():
    """Issue 12: the cluster targets deploy ingress gateways, so the four ingress scenarios are planned like any other;
    what stays refused is a gateway port Istio's own proxy holds in the gateway pod, named in the skip."""
    import dataclasses

    from conformance.mesh.cluster.naming import not_built_for_clusters
    from conformance.mesh.cluster.plan import build
    from conformance.model import Port
    from conformance.scenario import load
    from conformance.versions import IstioVersion

    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "policies").glob("ingress-*.yaml"))
    assert len(files) == 4
    for f in files:
        assert not_built_for_clusters(load(f, IstioVersion.parse("1.30"))) is None
    built = build(files, "kind", ["sidecar", "waypoint"], "1.30")
    planned = {Path(f).name for mp in built.modes for sh in mp.shards for f in sh.files}
    assert planned == {f.name for f in files} and not built.skipped
    scenario = load(files[0], IstioVersion.parse("1.30"))
    gw = next(w for w in scenario.workloads if w.is_gateway)
    clashing = dataclasses.replace(gw, ports=(Port(80), Port(15021)))
    scenario = dataclasses.replace(scenario, workloads=tuple(clashing if w is gw else w for w in scenario.workloads))
    reason = not_built_for_clusters(scenario) or ""
    assert gw.ref in reason and "15021" in reason and "Ports used by Istio" in reason


def test_literal_address_blocks_of_the_policies_are_what_a_cluster_address_is_checked_against():
    """session.py `_check_addresses` refuses (a skip) a cluster whose pod sits in a literal address block a policy
    names: the written verdicts assume no workload there. `${ip:...}` values are the pods' own and never count."""
    import ipaddress

    from conformance.mesh.cluster.session import literal_blocks
    from conformance.scenario import load
    from conformance.versions import IstioVersion

    root = Path(__file__).resolve().parents[2]
    blocks = literal_blocks(load(root / "policies" / "ingress-gateway.yaml", IstioVersion.parse("1.30")))
    assert {str(b) for b, _ in blocks} == {"172.17.72.46/32", "192.168.4.0/23", "172.23.240.0/22",
                                           "10.242.5.7/32", "10.124.99.0/24"}
    assert any("remoteIpBlocks" in where for _, where in blocks)
    assert any("when remote.ip" in where for _, where in blocks)
    kind_pod = ipaddress.ip_address("10.244.0.7")  # kind's pod range: clear of every block
    assert not [b for b, _ in blocks if kind_pod in b]
    assert not literal_blocks(load(root / "policies" / "ingress-backends.yaml", IstioVersion.parse("1.30")))
