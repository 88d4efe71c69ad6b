"""Properties of Istio's algorithm that hold for every policy set, checked on generated ones (hypothesis).

- Adding a DENY policy never turns a deny into an allow (API algorithm: DENY is consulted first and
  can only deny; research note §1).
- An ALLOW `rules: [{}]` policy never denies when no DENY applies (API: "An empty rule is always matched").
- Sidecar and ambient agree on policies that only use what ztunnel enforces (principals, namespaces,
  ipBlocks, ports and ztunnel's L4 `when` keys), in the default trust domain, without dry-run: the two
  data planes differ only where the research note says they do (§5.3, §3.2, §5.4).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine_world import ADDRESSES, BACKEND, WORKLOADS, ap, probe, state, verdict

CLIENTS = [w for w in WORKLOADS if w is not BACKEND]
IDS = [w.identity("cluster.local") for w in WORKLOADS if w.in_mesh]
NAMESPACES = [*sorted({w.namespace for w in WORKLOADS}), "other"]


def _pattern(values: list[str]) -> st.SearchStrategy[str]:
    exact = st.sampled_from(values)
    return st.one_of(
        exact,
        exact.map(lambda v: v[: max(1, len(v) // 2)] + "*"),
        exact.map(lambda v: "*" + v[len(v) // 2:]),
        st.just("*"),
    )


def _values(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(strategy, min_size=1, max_size=3, unique=True)


ips = st.sampled_from(sorted(ADDRESSES.values())).flatmap(
    lambda ip: st.sampled_from([ip, f"{ip}/32", ip.rsplit(".", 1)[0] + ".0/24", "10.0.0.0/30"]))
ports = st.sampled_from(["80", "8080", "9000", "1234"])

L4_SOURCE_FIELDS = {
    "principals": _values(_pattern(IDS)),
    "notPrincipals": _values(_pattern(IDS)),
    "namespaces": _values(_pattern(NAMESPACES)),
    "notNamespaces": _values(_pattern(NAMESPACES)),
    "ipBlocks": _values(ips),
    "notIpBlocks": _values(ips),
}
L4_WHEN = {
    "source.principal": _pattern(IDS),
    "source.namespace": _pattern(NAMESPACES),
    "source.ip": ips,
    "destination.ip": ips,
    "destination.port": ports,
}


@st.composite
def l4_rule(draw: st.DrawFn) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        sources = []
        for _ in range(draw(st.integers(1, 2))):
            keys = draw(st.lists(st.sampled_from(sorted(L4_SOURCE_FIELDS)), min_size=1, max_size=2, unique=True))
            sources.append({"source": {k: draw(L4_SOURCE_FIELDS[k]) for k in keys}})
        rule["from"] = sources
    if draw(st.booleans()):
        op_key = draw(st.sampled_from(["ports", "notPorts"]))
        rule["to"] = [{"operation": {op_key: draw(_values(ports))}}]
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(L4_WHEN)))
        cond: dict[str, Any] = {"key": key}
        if draw(st.booleans()):
            cond["values"] = draw(_values(L4_WHEN[key]))
        else:
            cond["notValues"] = draw(_values(L4_WHEN[key]))
        rule["when"] = [cond]
    return rule


@st.composite
def l4_policy(draw: st.DrawFn, action: str | None = None) -> str:
    name = f"p{draw(st.integers(0, 10_000))}"
    spec: dict[str, Any] = {"action": action or draw(st.sampled_from(["ALLOW", "DENY"]))}
    scope = draw(st.sampled_from(["namespace", "selector", "root", "root-selector", "elsewhere"]))
    ns = {"root": "istio-system", "root-selector": "istio-system", "elsewhere": "finance"}.get(scope, "default")
    if scope in ("selector", "root-selector"):
        spec["selector"] = {"matchLabels": {"app": draw(st.sampled_from(["backend", "frontend"]))}}
    shape = draw(st.sampled_from(["rules", "empty-rule", "no-rules"]))
    if shape == "rules":
        spec["rules"] = draw(st.lists(l4_rule(), min_size=1, max_size=3))
    elif shape == "empty-rule":
        spec["rules"] = [{}]
    if spec["action"] == "DENY" and "rules" not in spec:
        spec["rules"] = [{}]  # validation.go: DENY without rules is rejected
    return ap(name, spec, ns=ns)


def _unique(policies: list[str]) -> str:
    """Name the policies p0, p1, ...: names are unique per namespace in Istio (and in a scenario step)."""
    return "".join(text.replace("name: p", f"name: q{i}-p", 1) for i, text in enumerate(policies))


policy_sets = st.lists(l4_policy(), max_size=4).map(_unique)
probes = st.builds(lambda c, port: probe(c, port=port), st.sampled_from(CLIENTS), st.sampled_from([80, 8080, 9000]))


@settings(max_examples=300, deadline=None)
@given(policy_sets, l4_policy(action="DENY"), probes, st.sampled_from(["sidecar", "ambient"]))
def test_adding_a_deny_never_turns_deny_into_allow(policies: str, deny: str, p: Any, mode: str) -> None:
    before = verdict(state(policies), p, mode)  # type: ignore[arg-type]
    after = verdict(state(policies + deny.replace("name: p", "name: added-p", 1)), p, mode)  # type: ignore[arg-type]
    assert not (before == "deny" and after == "allow")


@settings(max_examples=300, deadline=None)
@given(st.lists(l4_policy(action="ALLOW"), max_size=4).map(_unique), probes, st.sampled_from(["sidecar", "ambient"]))
def test_allow_all_never_denies_without_deny(policies: str, p: Any, mode: str) -> None:
    s = state(policies + ap("allow-all", {"rules": [{}]}))
    assert verdict(s, p, mode) == "allow"  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(policy_sets, probes)
def test_sidecar_and_ambient_agree_on_l4_only_policies(policies: str, p: Any) -> None:
    s = state(policies)
    assert verdict(s, p, "sidecar") == verdict(s, p, "ambient")
