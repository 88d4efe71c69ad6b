"""Ingress gateways in the verdict engine and the loader (issue 12, deliverable 1).

Envoy's X-Forwarded-For rule (engine/xff.py) is pinned twice: by the reference table of
docs/ingress-gateways.md (§1.2, §8) and by a property test against a plain list-based reading of the same rule.
The rest checks what each enforcer on the gateway's path sees and which one decides (path.py ingress_route).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.engine import xff
from conformance.engine.decide import decide, explain, probe_route
from conformance.engine.path import INGRESS_TO_AMBIENT, INGRESS_TO_SIDECAR, INGRESS_TO_WAYPOINT
from conformance.engine.state import state_for_step
from conformance.model import DENIED_L7, DENIED_UPSTREAM
from conformance.scenario import check, load
from conformance.versions import IstioVersion

V = IstioVersion.parse("1.30")
POLICIES = Path(__file__).resolve().parent.parent / "policies"
PEER = "198.51.100.9"

# -- Envoy's XFF rule ---------------------------------------------------------------------------------------

# (X-Forwarded-For received or None, numTrustedProxies, what the gateway's remote_ip is): docs/ingress-gateways.md §1.2
GATEWAY_TABLE = [
    ("203.0.113.7", 1, "203.0.113.7"),
    ("10.0.0.1, 10.0.0.2", 1, "10.0.0.2"),
    ("10.0.0.1, 10.0.0.2", 2, "10.0.0.1"),
    ("10.0.0.1", 2, PEER),  # shorter than N: the peer
    (None, 1, PEER),  # no XFF
    ("203.0.113.7", 0, PEER),  # N = 0 ignores XFF
    ("unknown", 1, PEER),  # not an IP
    ("10.0.0.1,", 1, PEER),  # empty tail: the whole "10.0.0.1," is parsed, and fails
    ("56.5.6.7, 72.9.5.6, 98.1.2.3", 2, "72.9.5.6"),  # routing.go XFFGatewayCase
    ("10.0.0.1:80", 1, PEER),  # a port is no IP
    (" 2001:db8::1 ", 1, "2001:db8::1"),
]


@pytest.mark.parametrize(("received", "n", "remote"), GATEWAY_TABLE)
def test_gateway_remote_address_follows_the_notes_table(received: str | None, n: int, remote: str) -> None:
    assert xff.remote_address(received, PEER, use_remote_address=True, trusted_hops=n) == remote


@pytest.mark.parametrize(("received", "remote"), [("10.0.0.1, 10.0.0.2", "10.0.0.2"), (None, PEER),
                                                  ("10.0.0.1, garbage", PEER)])
def test_sidecar_remote_address_is_the_rightmost_ip_entry(received: str | None, remote: str) -> None:
    assert xff.remote_address(received, PEER, use_remote_address=False) == remote


def _reference(received: str | None, peer: str, n: int) -> str:
    """The rule as docs/ingress-gateways.md §1.2 words it, on a list: the N-th entry from the right, trimmed, if it
    is an IP."""
    if received is None or n == 0:
        return peer
    entries = received.split(",")
    if len(entries) < n:
        return peer
    return xff.parse_ip(entries[-n].strip(" \t\f\v\n\r")) or peer


_ENTRY = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
                   st.sampled_from(["", "unknown", "1.2.3.4:80", "01.2.3.4", "[::1]", "a,b"]))


@given(entries=st.lists(st.tuples(st.sampled_from(["", " ", "  "]), _ENTRY), max_size=5),
       n=st.integers(min_value=0, max_value=6), present=st.booleans())
def test_xff_rule_matches_the_reference(entries: list[tuple[str, str]], n: int, present: bool) -> None:
    received = ",".join(space + e for space, e in entries) if present else None
    assert xff.remote_address(received, PEER, True, n) == _reference(received, PEER, n)
    # behind the gateway, a sidecar's remote_ip is the entry the gateway appended: its peer
    assert xff.remote_address(xff.appended(received, PEER), "10.9.9.9", False) == PEER


# -- the loader -----------------------------------------------------------------------------------------------

_BASE = """apiVersion: authz-conformance/v1
kind: Scenario
metadata: {{name: s}}
spec:
  modes: [sidecar, ambient]
  workloads:
    - {{name: gw, namespace: ingress, kind: ingress-gateway, ports: [80], routes: [{{host: a.example.com, to: {to}}}]}}
    - {{name: a, namespace: apps, ports: [8080]}}
    - {{name: curl, namespace: apps}}
    - {{name: internet, namespace: outside, mesh: false}}
  steps: [{{name: s, policies: [], expect: [{expect}]}}]
"""


def _check(tmp_path: Path, to: str = "apps/a:8080",
           expect: str = "{from: outside/internet, to: ingress/gw:80, request: {headers: {host: a.example.com}}}",
           ) -> list[str]:
    path = tmp_path / "s.yaml"
    path.write_text(_BASE.format(to=to, expect=expect))
    return [p.message for p in check(path)[1] if p.severity == "error"]


def test_a_valid_gateway_scenario_loads(tmp_path: Path) -> None:
    assert _check(tmp_path) == []


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"to": "apps/a:9999"}, "does not serve port 9999"),
    ({"to": "apps/nobody:8080"}, "unknown workload 'apps/nobody'"),
    ({"expect": "{from: outside/internet, to: ingress/gw:80, request: {headers: {host: b.example.com}}}"},
     "no route for Host 'b.example.com'"),
    ({"expect": "{from: apps/curl, to: ingress/gw:80, request: {headers: {host: a.example.com}}}"},
     "not supported yet"),
    ({"expect": "{from: ingress/gw, to: apps/a:8080}"}, "no probe source"),
])
def test_gateway_errors_name_the_problem(tmp_path: Path, kwargs: dict[str, str], words: str) -> None:
    errors = _check(tmp_path, **kwargs)
    assert any(words in e for e in errors), errors


def test_routing_ignores_the_port_and_case_and_prefers_exact_hosts(tmp_path: Path) -> None:
    errors = _check(tmp_path, expect="{from: outside/internet, to: ingress/gw:80, "
                                     "request: {headers: {host: 'A.Example.com:8443'}}}")
    assert errors == []


# -- the engine -----------------------------------------------------------------------------------------------

def _decision(file: str, step: str, index: int, mode: str, trace: bool = False) -> Any:
    scenario = load(POLICIES / file, V)
    s = scenario.step(step)
    assert s is not None
    e = s.expectations[index]
    st_ = state_for_step(scenario, s)
    return (explain if trace else decide)(st_, e.probe, mode, V), e.probe, st_  # type: ignore[arg-type]


def test_a_gateway_denial_names_the_gateway_as_enforcer() -> None:
    d, probe, _ = _decision("ingress-gateway.yaml", "ingress-deny", 0, "ambient")
    assert (d.verdict, d.outcome, d.layer) == ("deny", DENIED_L7, "gateway")
    assert d.enforcer(probe) == "gateway:istio-ingress/istio-ingressgateway"
    assert d.policy == "istio-system/policy-b" and d.rule == 0


@pytest.mark.parametrize(("mode", "outcome", "enforcer"), [
    ("sidecar", DENIED_L7, "sidecar:apps/b"),  # the sidecar's 403, proxied
    ("ambient", DENIED_UPSTREAM, "ztunnel:apps/b"),  # ztunnel refuses the gateway's HBONE: the gateway's 503
    ("waypoint", DENIED_UPSTREAM, "ztunnel:apps/b"),  # the waypoint is bypassed
])
def test_behind_the_gateway_the_destination_decides_with_the_gateways_identity(mode: str, outcome: str,
                                                                                 enforcer: str) -> None:
    d, probe, _ = _decision("ingress-backends.yaml", "gateway-principal", 1, mode)
    assert (d.verdict, d.outcome, d.enforcer(probe)) == ("deny", outcome, enforcer)
    ok, probe, _ = _decision("ingress-backends.yaml", "gateway-principal", 0, mode)
    assert (ok.verdict, ok.policy, ok.enforcer(probe)) == ("allow", "apps/allow-gateway", enforcer)


def test_ingress_use_waypoint_routes_through_the_waypoint_else_bypasses_it() -> None:
    d, probe, st_ = _decision("ingress-to-waypoint.yaml", "deny-all-waypoint", 1, "waypoint")
    assert (d.verdict, d.outcome, d.enforcer(probe)) == ("deny", DENIED_L7, "waypoint:apps/waypoint")
    assert probe_route(st_, probe, "waypoint", V).crossing == INGRESS_TO_WAYPOINT
    bypass, probe, st_ = _decision("ingress-to-waypoint.yaml", "deny-all-waypoint", 0, "waypoint")
    assert bypass.verdict == "allow"
    r = probe_route(st_, probe, "waypoint", V)
    assert r.crossing == INGRESS_TO_AMBIENT and "bypassed" in r.why
    assert [h.proxy for h in r.deciders] == ["gateway", "ztunnel"]


def test_a_sidecar_behind_the_gateway_sees_the_gateway_as_source_ip_and_the_client_as_remote_ip() -> None:
    d, probe, st_ = _decision("ingress-backends.yaml", "addresses-behind-gateway", 0, "sidecar", trace=True)
    assert (d.verdict, d.policy, d.rule) == ("allow", "apps/by-address", 1)  # remoteIpBlocks, not ipBlocks
    assert probe_route(st_, probe, "sidecar", V).crossing == INGRESS_TO_SIDECAR
    assert any("right-most entry" in line for line in d.trace)


def test_explain_words_the_gateway_xff_reading() -> None:
    d, _, _ = _decision("ingress-remote-ip.yaml", "allow-remote-ip", 0, "sidecar", trace=True)
    assert d.verdict == "allow"
    assert any("numTrustedProxies is 2" in line and "72.9.5.6" in line for line in d.trace)


def test_targetrefs_attach_only_to_gateway_api_gateways(tmp_path: Path) -> None:
    text = """apiVersion: authz-conformance/v1
kind: Scenario
metadata: {name: s}
spec:
  modes: [sidecar]
  workloads:
    - {name: gw, namespace: ingress, kind: ingress-gateway, ports: [80], routes: [{host: "*", to: apps/a:8080}],
       labels: {LABELS}}
    - {name: a, namespace: apps, ports: [8080]}
    - {name: internet, namespace: outside, mesh: false}
  steps:
    - name: s
      policies:
        - apiVersion: security.istio.io/v1
          kind: AuthorizationPolicy
          metadata: {name: deny, namespace: ingress}
          spec:
            action: DENY
            targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]
            rules: [{}]
      expect: [{from: outside/internet, to: ingress/gw:80}]
"""
    verdicts = {}
    for name, labels in (("classic", "{app: gw}"), ("gateway-api", "{gateway.networking.k8s.io/gateway-name: gw}")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.replace("{LABELS}", labels))
        scenario = load(path, V)
        step = scenario.steps[0]
        verdicts[name] = decide(state_for_step(scenario, step), step.expectations[0].probe, "sidecar", V).verdict
    # policyattachment.go ShouldAttachPolicy: a classic gateway ignores targetRefs policies (l.133-134)
    assert verdicts == {"classic": "allow", "gateway-api": "deny"}


def test_the_ingress_scenarios_verdicts_are_the_engines() -> None:
    """Every cited verdict of the ingress scenarios is what the engine predicts (lint: no contradiction), in every
    mode each lists (the local mesh checks the same verdicts on real Envoys: `pytest policies`)."""
    from conformance.lint import contradictions

    files = sorted(POLICIES.glob("ingress-*.yaml"))
    assert len(files) == 4
    for f in files:
        scenario = load(f, V)
        assert list(contradictions(scenario, V)) == [], f
