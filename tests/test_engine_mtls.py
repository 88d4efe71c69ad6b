"""Engine tests for PeerAuthentication DISABLE and portLevelMtls (issue 12), each rule with its Istio source.

Sources (istio/istio@1.30.3 unless said): `pilot/pkg/security/authn/policy_applier.go` ComposePeerAuthentication;
`pilot/pkg/networking/core/filterchain_options.go` getFilterChainMatchOptions; `pilot/pkg/xds/endpoints/
mtls_checker.go` checkMtlsEnabled; `pilot/pkg/serviceregistry/ambient/authorization.go`
convertedSelectorPeerAuthentications / convertPeerAuthentication and its tests (TestAmbientIndex_Policy,
TestRBACConvert's peer-authn-* golden files, vendored in tests/data/istio-golden/ambient); istio/ztunnel@1.30.3
`src/state.rs` assert_rbac; the istio.io authn-policy task ("Enable mutual TLS per workload": STRICT with
`portLevelMtls: {80: DISABLE}` lets sleep.legacy reach httpbin on that port).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.engine.decide import ALLOW_UNMATCHED, DENY_MATCHED, NO_POLICY, STRICT_MTLS, decide
from conformance.engine.mtls import ConvertedPolicy, convert, sidecar_mtls, ztunnel_mtls
from conformance.engine.policy import compile_peer_authentication
from conformance.mesh.local.ztunnel import peer_authentication_policies
from conformance.model import DENIED_L4, DENIED_L7, MeshConfig
from tests.engine_world import BACKEND, FRONTEND, OUTSIDER, ROGUE, V130, ap, pa, policies, probe, state, why
from tests.mesh.rbac_rs import Peer, matches

GOLDEN = Path(__file__).resolve().parent / "data" / "istio-golden" / "ambient"
MESH = MeshConfig()
ALLOW_FRONTEND = ap("allow-frontend", {"rules": [{"from": [{"source": {
    "principals": ["cluster.local/ns/default/sa/frontend"]}}]}]})


# -- sidecar: DISABLE --------------------------------------------------------------------------------------


def test_disable_takes_identity_away_from_in_mesh_clients() -> None:
    # filterchain_options.go: DISABLE = plaintext chain only; mtls_checker.go: the client's auto-mTLS sends
    # plaintext to a DISABLE port. So the ALLOW by principal that admits frontend under PERMISSIVE denies it
    # (research istio-authn-custom-gateways.md §7: "identity ALLOW → 403 RBAC: access denied").
    assert decide(state(ALLOW_FRONTEND), probe(FRONTEND), "sidecar", V130).verdict == "allow"
    d = decide(state(ALLOW_FRONTEND + pa("off", "DISABLE")), probe(FRONTEND), "sidecar", V130)
    assert (d.verdict, d.outcome, d.reason) == ("deny", DENIED_L7, ALLOW_UNMATCHED)
    tcp = decide(state(ALLOW_FRONTEND + pa("off", "DISABLE")), probe(FRONTEND, port=9000), "sidecar", V130)
    assert (tcp.verdict, tcp.outcome) == ("deny", DENIED_L4)


def test_disable_makes_not_principals_deny_match_everyone() -> None:
    # TestAuthz_DenyPlaintext's DENY notPrincipals ["*"] denies plaintext; under DISABLE every client is plaintext.
    deny_plain = ap("deny-plaintext", {"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]})
    assert decide(state(deny_plain), probe(FRONTEND), "sidecar", V130).verdict == "allow"
    d = decide(state(deny_plain + pa("off", "DISABLE")), probe(FRONTEND), "sidecar", V130)
    assert (d.verdict, d.reason, d.policy) == ("deny", DENY_MATCHED, "default/deny-plaintext")


def test_disable_accepts_plaintext_from_outside_the_mesh() -> None:
    d = decide(state(pa("off", "DISABLE")), probe(OUTSIDER), "sidecar", V130)
    assert (d.verdict, d.reason) == ("allow", NO_POLICY)


def test_disable_sends_no_sni() -> None:
    # connection.sni is the client sidecar's mTLS SNI; a plaintext connection has none.
    sni = ap("by-sni", {"rules": [{"when": [{"key": "connection.sni", "values": ["*"]}]}]})
    assert decide(state(sni), probe(FRONTEND), "sidecar", V130).verdict == "allow"
    assert decide(state(sni + pa("off", "DISABLE")), probe(FRONTEND), "sidecar", V130).verdict == "deny"


def test_disable_explain_names_the_step() -> None:
    d = why(state(ALLOW_FRONTEND + pa("off", "DISABLE")), probe(FRONTEND))
    text = "\n".join(d.trace)
    assert "PeerAuthentication mode on port 8080: DISABLE (from default/off)" in text
    assert "auto-mTLS sends plaintext" in text and "no principal, namespace or serviceAccount can match" in text


# -- sidecar: portLevelMtls --------------------------------------------------------------------------------


def test_port_level_disable_under_strict_is_the_authn_policy_task() -> None:
    # istio.io authn-policy task: workload STRICT, portLevelMtls {80: DISABLE} (httpbin's workload port):
    # sleep.legacy gets 200 on that port; STRICT elsewhere resets it (exit 56).
    s = state(pa("httpbin", "STRICT", selector={"app": "backend"}, ports={80: "DISABLE"}))
    assert decide(s, probe(OUTSIDER, port=80), "sidecar", V130).verdict == "allow"
    d = decide(s, probe(OUTSIDER, port=8080), "sidecar", V130)
    assert (d.verdict, d.outcome, d.reason, d.policy) == ("deny", DENIED_L4, STRICT_MTLS, "default/httpbin")
    assert "its portLevelMtls entry for port 80" in "\n".join(why(s, probe(OUTSIDER, port=80)).trace)


def test_port_level_unset_inherits_the_composed_mode() -> None:
    # ComposePeerAuthentication: "UNSET port-level config will be replaced with config from workload-level",
    # which itself inherits the namespace's STRICT.
    s = state(pa("ns", "STRICT") + pa("wl", None, selector={"app": "backend"}, ports={80: "UNSET", 9000: "PERMISSIVE"}))
    pas = s.peer_authentications
    assert sidecar_mtls(pas, BACKEND, MESH, 80).mode == "STRICT"
    assert sidecar_mtls(pas, BACKEND, MESH, 9000).mode == "PERMISSIVE"
    assert sidecar_mtls(pas, BACKEND, MESH, 8080).mode == "STRICT"


def test_port_level_only_from_the_workload_policy_and_the_oldest() -> None:
    # ComposePeerAuthentication: the oldest workload-level policy (first listed here) is the only one read.
    s = state(pa("first", "PERMISSIVE", selector={"app": "backend"})
              + pa("second", "STRICT", selector={"app": "backend"}, ports={80: "DISABLE"}))
    assert sidecar_mtls(s.peer_authentications, BACKEND, MESH, 80).mode == "PERMISSIVE"


# -- ztunnel ------------------------------------------------------------------------------------------------


def test_ambient_disable_changes_nothing_for_in_mesh_clients() -> None:
    # HBONE is always mTLS; TestAmbientIndex_Policy "Change the workload policy to DISABLE": the workload is
    # only referred to its AuthorizationPolicies (the static strict policy goes away, nothing else comes).
    s = state(ALLOW_FRONTEND + pa("off", "DISABLE"))
    assert decide(s, probe(FRONTEND), "ambient", V130).verdict == "allow"
    assert decide(s, probe(ROGUE), "ambient", V130).verdict == "deny"
    assert ztunnel_mtls(s.peer_authentications, BACKEND, MESH).policies == ()


def test_ambient_strict_with_a_disable_port() -> None:
    # golden peer-authn-strict-and-disable-port-mtls: DENY [notPrincipals presence] AND [notDestinationPorts 9090].
    s = state(pa("wl", "STRICT", selector={"app": "backend"}, ports={80: "DISABLE"}))
    assert decide(s, probe(OUTSIDER, port=80), "ambient", V130).verdict == "allow"
    d = decide(s, probe(OUTSIDER, port=8080), "ambient", V130)
    assert (d.verdict, d.outcome, d.layer, d.reason, d.policy) == ("deny", DENIED_L4, "ztunnel", STRICT_MTLS,
                                                                   "default/wl")
    assert "DENY default/converted_peer_authentication_wl matches" in "\n".join(why(s, probe(OUTSIDER, port=8080),
                                                                                      "ambient").trace)
    assert decide(s, probe(FRONTEND, port=8080), "ambient", V130).verdict == "allow"


def test_ambient_quirk_disable_port_under_inherited_strict_stays_strict() -> None:
    # authorization.go convertedSelectorPeerAuthentications, workload mode UNSET and an effective STRICT: only
    # PERMISSIVE ports (isMtlsModePermissive) lift the static strict policy; a DISABLE port does not.
    s = state(pa("ns", "STRICT") + pa("wl", None, selector={"app": "backend"}, ports={80: "DISABLE"}))
    assert decide(s, probe(OUTSIDER, port=80), "sidecar", V130).verdict == "allow"
    assert decide(s, probe(OUTSIDER, port=80), "ambient", V130).reason == STRICT_MTLS
    s2 = state(pa("ns", "STRICT") + pa("wl", None, selector={"app": "backend"}, ports={80: "PERMISSIVE"}))
    assert decide(s2, probe(OUTSIDER, port=80), "ambient", V130).verdict == "allow"
    assert decide(s2, probe(OUTSIDER, port=8080), "ambient", V130).reason == STRICT_MTLS


def test_ambient_quirk_strict_port_dropped_under_mesh_strict() -> None:
    # convertPeerAuthentication's skip condition for a STRICT port is `strict(pa) || (unset(pa) && strict(ns))
    # || ((ns nil or unset) && strict(root))`: under a STRICT mesh policy and no namespace one, the STRICT port
    # of a PERMISSIVE workload policy is skipped, nothing is built, and ztunnel skips the unknown name.
    s = state(pa("mesh", "STRICT", ns="istio-system")
              + pa("wl", "PERMISSIVE", selector={"app": "backend"}, ports={8080: "STRICT"}))
    assert decide(s, probe(OUTSIDER, port=8080), "sidecar", V130).reason == STRICT_MTLS
    assert decide(s, probe(OUTSIDER, port=8080), "ambient", V130).verdict == "allow"
    # with a PERMISSIVE namespace policy in between the port is kept (TestAmbientIndex_Policy, 9090 STRICT)
    s2 = state(pa("mesh", "STRICT", ns="istio-system") + pa("ns", "PERMISSIVE")
               + pa("wl", "PERMISSIVE", selector={"app": "backend"}, ports={8080: "STRICT"}))
    assert decide(s2, probe(OUTSIDER, port=8080), "ambient", V130).reason == STRICT_MTLS
    assert decide(s2, probe(OUTSIDER, port=80), "ambient", V130).verdict == "allow"


def test_ambient_authorization_policy_deny_is_named_before_peer_authentication() -> None:
    # state.rs assert_rbac: namespace policies, global ones, then the workload's list, where workloads.go puts
    # the PeerAuthentication keys after the AuthorizationPolicies: the AuthorizationPolicy DENY is named.
    deny = ap("deny-outsider", {"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]})
    s = state(deny + pa("strict", "STRICT"))
    d = decide(s, probe(OUTSIDER), "ambient", V130)
    assert (d.reason, d.policy) == (DENY_MATCHED, "default/deny-outsider")
    assert decide(s, probe(OUTSIDER), "sidecar", V130).reason == STRICT_MTLS  # the chain is missing first


# -- istiod's golden conversions (TestRBACConvert) ------------------------------------------------------------


def _split(path: Path) -> tuple[Any, Any, Any]:
    """(policy, namespace policy, root policy) as TestRBACConvert picks them (ambientindex_test.go@1.30.3)."""
    docs = [compile_peer_authentication(m) for m in policies(_with_namespaces(path.read_text()))]
    if len(docs) == 1:
        return docs[0], None, None
    root = next((d for d in docs if d.namespace == "istio-system"), None)
    workload = next((d for d in docs if d.namespace != "istio-system" and d.selector is not None), None)
    ns = next((d for d in docs if d.namespace != "istio-system" and d.selector is None), None)
    return (ns, None, root) if workload is None else (workload, ns, root)


def _with_namespaces(text: str) -> str:
    """The golden inputs may omit metadata.namespace (""), which the test world's loader requires."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        d["metadata"].setdefault("namespace", "")
    return yaml.safe_dump_all(docs)


def _serialized(p: ConvertedPolicy | None) -> dict[str, Any] | None:
    if p is None:
        return None
    groups = []
    for group in p.groups:
        rules = []
        for m in group:
            match: dict[str, Any] = {}
            if m.ports:
                match["destinationPorts"] = list(m.ports)
            if m.not_ports:
                match["notDestinationPorts"] = list(m.not_ports)
            if m.no_principal:
                match["notPrincipals"] = [{"presence": {}}]
            rules.append({"matches": [match]})
        groups.append({"rules": rules})
    out: dict[str, Any] = {"action": "DENY", "groups": groups, "name": p.name, "scope": "WORKLOAD_SELECTOR"}
    if p.namespace:
        out["namespace"] = p.namespace
    return out


@pytest.mark.parametrize("case", sorted(p.name[:-8] for p in GOLDEN.glob("peer-authn-*-in.yaml")))
def test_engine_conversion_equals_istiod(case: str) -> None:
    policy, ns_policy, root_policy = _split(GOLDEN / f"{case}-in.yaml")
    want = yaml.safe_load((GOLDEN / f"{case}.yaml").read_text())
    assert _serialized(convert(policy, ns_policy, root_policy, "istio-system")) == want


# -- properties ----------------------------------------------------------------------------------------------

NAMESPACES = ("default", "istio-system")
MODES = ("STRICT", "PERMISSIVE", "DISABLE", "UNSET")


@st.composite
def peer_authentications(draw: st.DrawFn, port_level: bool = True) -> str:
    """0-4 PeerAuthentications at mesh, namespace and workload level (selectors with labels: an empty
    selector is read differently by the sidecar and ztunnel, see mtls.py), some with portLevelMtls."""
    out = ""
    for i in range(draw(st.integers(0, 4))):
        level = draw(st.sampled_from(["mesh", "namespace", "workload", "other-workload"]))
        mode = draw(st.sampled_from([*MODES, None]))
        ns = "istio-system" if level == "mesh" else "default"
        selector = {"workload": {"app": "backend"}, "other-workload": {"app": "frontend"}}.get(level)
        ports = None
        if selector and port_level and draw(st.booleans()):
            ports = draw(st.dictionaries(st.sampled_from([80, 8080, 9000]), st.sampled_from(MODES), min_size=1))
        out += pa(f"pa{i}", mode, ns=ns, selector=selector, ports=ports)
    return out


@settings(max_examples=300, deadline=None)
@given(peer_authentications(port_level=False), st.sampled_from([80, 8080, 9000]))
def test_without_port_levels_ztunnel_drops_plaintext_exactly_where_the_sidecar_is_strict(text: str, port: int) -> None:
    """Without portLevelMtls both data planes read one effective mode: ambient drops plaintext iff a sidecar
    would be STRICT (convertedSelectorPeerAuthentications mirrors ComposePeerAuthentication's levels)."""
    s = state(text)
    sidecar = decide(s, probe(OUTSIDER, port=port), "sidecar", V130)
    ambient = decide(s, probe(OUTSIDER, port=port), "ambient", V130)
    assert (sidecar.reason == STRICT_MTLS) is (ambient.reason == STRICT_MTLS)


@settings(max_examples=300, deadline=None)
@given(peer_authentications(), st.sampled_from([80, 8080, 9000]), st.sampled_from(["ambient", "waypoint"]))
def test_peer_authentication_never_stops_an_in_mesh_client_in_ambient(text: str, port: int, mode: Any) -> None:
    """HBONE always carries the client's (or the waypoint's) identity, and every DENY istiod derives from a
    PeerAuthentication requires `notPrincipals: [presence]`."""
    assert decide(state(text), probe(FRONTEND, port=port), mode, V130).verdict == "allow"


@settings(max_examples=300, deadline=None)
@given(peer_authentications(), st.sampled_from([80, 8080, 9000]))
def test_sidecar_disable_never_lets_an_identity_rule_match(text: str, port: int) -> None:
    """Whatever the composition, a port whose mode is DISABLE sees no principal: the ALLOW by principal denies
    the in-mesh client there, and admits it on every other port."""
    s = state(text + ALLOW_FRONTEND)
    disabled = sidecar_mtls(s.peer_authentications, BACKEND, MESH, port).mode == "DISABLE"
    assert (decide(s, probe(FRONTEND, port=port), "sidecar", V130).verdict == "deny") is disabled


@settings(max_examples=500, deadline=None)
@given(peer_authentications(), st.sampled_from([80, 8080, 9000, 9090]))
def test_engine_and_mesh_compiler_send_ztunnel_the_same_peer_authentication_denys(text: str, port: int) -> None:
    """The engine's port of authorization.go (mtls.py) and the local mesh's own (ztunnel.py, evaluated by
    tests/mesh/rbac_rs.py as ztunnel would) refer the workload to the same DENYs, and they deny the same
    plaintext connections."""
    manifests = policies(text)
    engine = ztunnel_mtls(state(text).peer_authentications, BACKEND, MESH)
    mesh = peer_authentication_policies(manifests, BACKEND.namespace, BACKEND.labels, MESH.root_namespace)
    assert [p.key for p in engine.policies] == [a.ref for a in mesh]
    plaintext = Peer("10.0.0.5", "10.0.0.1", port)
    denied_by_mesh = next((a.ref for a in mesh if matches(a, plaintext)), None)
    denied_by_engine = engine.denying(False, port)
    assert denied_by_mesh == (denied_by_engine.key if denied_by_engine else None)
    assert not any(matches(a, Peer("10.0.0.2", "10.0.0.1", port, "spiffe://cluster.local/ns/default/sa/frontend"))
                   for a in mesh)
