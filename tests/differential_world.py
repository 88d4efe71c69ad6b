"""Generated scenarios for the differential test: worlds, policies and probes (hypothesis strategies).

Why a module of its own: the differential test (tests/test_differential.py) is only as good as what it
generates, so the generator is kept readable and reviewable here, separate from the machinery that runs
meshes. It generates *valid* Istio (every policy passes `conformance.validation.validate_manifest` with
no error or "not supported yet" finding) built from the world's own names, labels, addresses, ports
and authorities, so that most generated values can match some probe and both the match and the
no-match branches of each field are exercised.

Worlds (workloads) are few and fixed per pytest parameter, because a mesh is started once per world and
mode and reused across examples (apply() is declarative and acknowledged); everything else (policies,
PeerAuthentications, probes) is drawn by hypothesis for each example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from conformance.engine.matchers import pattern_kind
from conformance.model import Manifest, MeshConfig, Port, Probe, Request, Scenario, Step, Waypoint, Workload

ROOT = "istio-system"
TD = "cluster.local"
GATEWAY_GROUP = "gateway.networking.k8s.io"


def _wl(ref: str, *ports: int | tuple[int, str], sa: str | None = None, labels: Mapping[str, str] | None = None,
        mesh: bool = True) -> Workload:
    ns, name = ref.split("/")
    return Workload(
        name=name, namespace=ns, service_account=sa or name, labels=dict(labels or {"app": name}),
        ports=tuple(Port(p) if isinstance(p, int) else Port(p[0], p[1]) for p in ports),  # type: ignore[arg-type]
        in_mesh=mesh,
    )


@dataclass(frozen=True)
class World:
    """The workloads of a generated scenario; one mesh per world and mode is reused across examples."""

    name: str
    workloads: tuple[Workload, ...]
    waypoint_mode: bool  # whether this world also runs in waypoint mode
    mesh: MeshConfig = field(default_factory=lambda: MeshConfig(ROOT, TD))

    @property
    def root(self) -> str:
        return self.mesh.root_namespace

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w.namespace for w in self.workloads))

    @property
    def servers(self) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.ports)

    @property
    def waypoints(self) -> tuple[Waypoint, ...]:
        """One waypoint per namespace with in-mesh servers, as a scenario without `waypoints` gets."""
        return tuple(Waypoint("waypoint", ns) for ns in dict.fromkeys(w.namespace for w in self.servers if w.in_mesh))

    def scenario(self, steps: tuple[Step, ...] = ()) -> Scenario:
        modes = ("sidecar", "ambient", "waypoint") if self.waypoint_mode else ("sidecar", "ambient")
        return Scenario(
            name=f"differential-{self.name}", description="generated", path=f"<differential {self.name}>",
            modes=modes, mesh=self.mesh, workloads=self.workloads, waypoints=self.waypoints,
            steps=steps,
        )

    def identities(self) -> list[str]:
        td = self.mesh.trust_domain
        return sorted({w.identity(td) for w in self.workloads if w.in_mesh} | {w.identity(td) for w in self.waypoints})


# Hand-shaped so that every world has: 2-3 namespaces with workloads plus an out-of-mesh client in its own
# namespace, HTTP and TCP ports, port 80 (remapped locally), a client-only in-mesh workload, two workloads
# sharing a label (selectors that pick several), a shared service-account name across namespaces, and
# namespace names where one is a prefix of another (prefix / suffix forms on namespaces).
WORLDS: tuple[World, ...] = (
    World("shop-bank", (
        _wl("shop/web", 80, labels={"app": "web", "tier": "front"}),
        _wl("shop/api", 8080, (9000, "TCP"), labels={"app": "api", "tier": "back"}),
        _wl("bank/ledger", 8080, sa="default", labels={"app": "ledger", "tier": "back"}),
        _wl("bank/teller", sa="default", labels={"app": "teller"}),
        _wl("legacy/outsider", mesh=False),
    ), waypoint_mode=True),
    World("team-teamb-ops", (
        _wl("team/frontend", 8080, labels={"app": "frontend", "version": "v1"}),
        _wl("team-b/backend", 80, (5432, "TCP"), sa="backend-sa", labels={"app": "backend", "version": "v1"}),
        _wl("ops/db", (3306, "TCP"), labels={"app": "db", "version": "v2"}),
        _wl("ops/curl", labels={"app": "curl"}),
        _wl("outside/stranger", mesh=False),
    ), waypoint_mode=True),
    World("one-server", (
        _wl("default/backend", 80, 8080, (9000, "TCP"), labels={"app": "backend", "tier": "back"}),
        _wl("default/frontend", labels={"app": "frontend", "tier": "front"}),
        _wl("finance/frontend", sa="frontend", labels={"app": "frontend"}),
        _wl("legacy/outsider", mesh=False),
    ), waypoint_mode=False),
    # A mesh that is not Istio's default: its own trust domain and root namespace.
    World("corp-td", (
        _wl("payments/gateway", 80, (7000, "TCP"), sa="gw", labels={"app": "gateway", "tier": "edge"}),
        _wl("payments/ledger", 8443, labels={"app": "ledger", "tier": "core"}),
        _wl("ops/probe", labels={"app": "probe", "tier": "edge"}),
        _wl("outside/visitor", mesh=False),
    ), waypoint_mode=True, mesh=MeshConfig("mesh-root", "corp.example")),
)


# ---------------------------------------------------------------------------------------------------
# Value pools: every string field in its four forms (exact, prefix*, *suffix, * presence).


def forms(values: Sequence[str]) -> st.SearchStrategy[str]:
    """A value from `values`, or a prefix / suffix / presence pattern derived from one (API string match)."""
    exact = st.sampled_from(sorted(values))

    def prefix(v: str) -> st.SearchStrategy[str]:
        return st.integers(1, max(1, len(v) - 1)).map(lambda n: v[:n] + "*")

    def suffix(v: str) -> st.SearchStrategy[str]:
        return st.integers(1, max(1, len(v) - 1)).map(lambda n: "*" + v[-n:])

    return st.one_of(exact, exact.flatmap(prefix), exact.flatmap(suffix), st.just("*"))


# The API's four string forms, only to label coverage events (the engine's classifier, not a verdict).
form_of = pattern_kind


def _values(strategy: st.SearchStrategy[str], max_size: int = 2) -> st.SearchStrategy[list[str]]:
    return st.lists(strategy, min_size=1, max_size=max_size, unique=True)


@dataclass(frozen=True)
class Pools:
    """What generated policies and probes draw from, derived from one world."""

    world: World

    @property
    def identities(self) -> list[str]:
        # plus values that match nothing: a foreign trust domain, a never-seen service account, the
        # `spiffe://` form (principals are written without it), and a `*` in the middle (literal)
        ids = self.world.identities()
        td = self.world.mesh.trust_domain
        out = [*ids, "other.domain/ns/shop/sa/web", f"{td}/ns/nowhere/sa/ghost", f"spiffe://{ids[0]}",
               f"{td}/ns/*/sa/default"]
        if td != TD:
            # `cluster.local/...` means the mesh's own trust domain to Envoy (trustdomain/bundle.go
            # ReplaceTrustDomainAliases) but is compared literally by ztunnel (istio/ztunnel#1260)
            out += [TD + i[len(td):] for i in ids[:3]]
        return out

    @property
    def namespaces(self) -> list[str]:
        # a `*` inside a namespace is a glob for Envoy (every `*` becomes `.*`) but literal for ztunnel
        # (validation only warns): both implementations must still agree with the real proxies
        mid = [f"{ns[0]}*{ns[-1]}" for ns in self.world.namespaces[:1]]
        return [*self.world.namespaces, self.world.root, "nowhere", *mid]

    @property
    def trust_domains(self) -> list[str]:
        """`trustDomains` / `source.trustDomain` (Istio 1.30.2+): Envoy only; ztunnel ignores them."""
        return sorted({self.world.mesh.trust_domain, TD, "other.td"})

    @property
    def service_accounts(self) -> list[str]:
        """`ns/sa` and bare `sa` forms (a bare name means the policy's namespace; no wildcards allowed)."""
        refs = {f"{w.namespace}/{w.service_account}" for w in self.world.workloads if w.in_mesh}
        refs |= {f"{w.namespace}/{w.service_account}" for w in self.world.waypoints}
        bare = {w.service_account for w in self.world.workloads if w.in_mesh}
        return sorted(refs | bare | {"ghost"})

    def ip_blocks(self) -> st.SearchStrategy[str]:
        """`${ip:ns/name}` (filled with the target's address), as a bare address, a /32 or the /24 that
        holds every workload; or a block that holds none."""
        # waypoints have addresses only in waypoint mode; the /24 of any workload holds them too
        refs = [w.ref for w in self.world.workloads]
        return st.one_of(
            st.sampled_from(refs).flatmap(lambda r: st.sampled_from([f"${{ip:{r}}}", f"${{ip:{r}}}/32",
                                                                     f"${{ip:{r}}}/24"])),
            st.just("10.0.0.0/8"),
        )

    @property
    def ports(self) -> list[str]:
        return sorted({str(p.number) for w in self.world.servers for p in w.ports} | {"1234"})

    @property
    def hosts(self) -> list[str]:
        out = set()
        for w in self.world.servers:
            for p in w.ports:
                base = f"{w.name}.{w.namespace}"
                out.add(base if p.number == 80 else f"{base}:{p.number}")
        out.add("WEB.SHOP")  # hosts match case-insensitively (HostMatcher ignore_case)
        return sorted(out)

    @property
    def sni(self) -> list[str]:
        return sorted({f"outbound_.{p.number}_._.{w.name}.{w.namespace}.svc.cluster.local"
                       for w in self.world.servers for p in w.ports})


METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
POLICY_PATHS = ["/", "/admin", "/admin/x", "/api/v1/data", "/api/v2/data", "/public/x", "/healthz"]
PATH_TEMPLATES = ["/api/{*}/data", "/public/{**}", "/admin/{**}"]
HEADER_VALUES = ["a", "b", "team-a", "team-b"]
PROBE_PATHS = [
    "/", "/admin", "/admin/x", "/api/v1/data", "/api/v2/data", "/public/x", "/healthz",
    "/api/v1/data?debug=true", "/admin?x=1",  # the query is not part of the matched path
    "/public/../admin/x", "/public/./x", "/api/v1/../v2/data", "/public/%2e%2e/admin",  # dot segments
    "/Admin", "/api//v1/data",
]


# ---------------------------------------------------------------------------------------------------
# Policies.


@st.composite
def source(draw: st.DrawFn, pools: Pools) -> dict[str, Any]:
    """One `from.source`: 1-2 fields, positive and/or `not` forms; serviceAccounts never together with
    principals or namespaces (validation.go rejects it)."""
    families: dict[str, Callable[[], st.SearchStrategy[list[str]]]] = {
        "principals": lambda: _values(forms(pools.identities)),
        "namespaces": lambda: _values(forms(pools.namespaces)),
        "serviceAccounts": lambda: _values(st.sampled_from(pools.service_accounts)),
        "ipBlocks": lambda: _values(pools.ip_blocks()),
        "trustDomains": lambda: _values(forms(pools.trust_domains)),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(families)), min_size=1, max_size=2, unique=True))
    if "serviceAccounts" in chosen and len(chosen) > 1:
        chosen = [c for c in chosen if c not in ("principals", "namespaces")] or ["serviceAccounts"]
    out: dict[str, Any] = {}
    for name in chosen:
        which = draw(st.sampled_from(["pos", "neg", "both"]))
        neg = "not" + name[0].upper() + name[1:]
        if which in ("pos", "both"):
            out[name] = draw(families[name]())
        if which in ("neg", "both"):
            out[neg] = draw(families[name]())
    return out


@st.composite
def operation(draw: st.DrawFn, pools: Pools) -> dict[str, Any]:
    families: dict[str, Callable[[], st.SearchStrategy[list[str]]]] = {
        "hosts": lambda: _values(forms(pools.hosts)),
        "methods": lambda: _values(forms(METHODS)),
        "paths": lambda: _values(st.one_of(forms(POLICY_PATHS), st.sampled_from(PATH_TEMPLATES))),
        "ports": lambda: _values(st.sampled_from(pools.ports)),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(families)), min_size=1, max_size=2, unique=True))
    out: dict[str, Any] = {}
    for name in chosen:
        which = draw(st.sampled_from(["pos", "neg", "pos", "neg", "both"]))
        neg = "not" + name[0].upper() + name[1:]
        if which in ("pos", "both"):
            out[name] = draw(families[name]())
        if which in ("neg", "both"):
            out[neg] = draw(families[name]())
    return out


WHEN_KEYS = ["request.headers[x-team]", "source.ip", "source.namespace", "source.principal",
             "source.serviceAccount", "source.trustDomain", "destination.ip", "destination.port", "connection.sni"]


@st.composite
def condition(draw: st.DrawFn, pools: Pools) -> dict[str, Any]:
    key = draw(st.sampled_from(WHEN_KEYS))
    values: st.SearchStrategy[str] = {
        "request.headers[x-team]": forms(HEADER_VALUES),
        "source.ip": pools.ip_blocks(),
        "source.namespace": forms(pools.namespaces),
        "source.principal": forms(pools.identities),
        "source.serviceAccount": st.sampled_from(pools.service_accounts),
        "source.trustDomain": forms(pools.trust_domains),
        "destination.ip": pools.ip_blocks(),
        "destination.port": st.sampled_from(pools.ports),
        "connection.sni": forms(pools.sni),
    }[key]
    out: dict[str, Any] = {"key": key}
    which = draw(st.sampled_from(["pos", "neg", "both"]))
    if which in ("pos", "both"):
        out["values"] = draw(_values(values))
    if which in ("neg", "both"):
        out["notValues"] = draw(_values(values))
    return out


@st.composite
def rule(draw: st.DrawFn, pools: Pools) -> dict[str, Any]:
    shape = draw(st.sampled_from(["empty", "from", "to", "when", "from+to", "from+when", "to+when", "all"]))
    out: dict[str, Any] = {}
    if shape == "empty":
        return out
    if "from" in shape or shape == "all":
        out["from"] = [{"source": draw(source(pools))} for _ in range(draw(st.integers(1, 2)))]
    if "to" in shape or shape == "all":
        out["to"] = [{"operation": draw(operation(pools))} for _ in range(draw(st.integers(1, 2)))]
    if "when" in shape or shape == "all":
        out["when"] = [draw(condition(pools)) for _ in range(draw(st.integers(1, 2)))]
    return out


@st.composite
def authorization_policy(draw: st.DrawFn, pools: Pools, name: str) -> Manifest:
    world = pools.world
    scope = draw(st.sampled_from(["namespace", "selector", "root", "root-selector", "targetRefs", "selector"]))
    # mostly where servers are (policies elsewhere select nothing, which a few examples cover enough)
    server_namespaces = sorted({w.namespace for w in world.servers if w.in_mesh})
    namespace = world.root if scope.startswith("root") else draw(
        st.sampled_from([*server_namespaces, *server_namespaces, *server_namespaces, *world.namespaces]))
    spec: dict[str, Any] = {}
    if scope in ("selector", "root-selector"):
        labels = sorted({(k, v) for w in world.workloads for k, v in w.labels.items()} | {("app", "nothing")})
        chosen = draw(st.lists(st.sampled_from(labels), min_size=1, max_size=2, unique_by=lambda kv: kv[0]))
        spec["selector"] = {"matchLabels": dict(chosen)}
    elif scope == "targetRefs":
        kind = draw(st.sampled_from(["Gateway", "Service", "GatewayClass"]))
        if kind == "GatewayClass":
            namespace = world.root
            spec["targetRefs"] = [{"group": GATEWAY_GROUP, "kind": "GatewayClass", "name": "istio-waypoint"}]
        elif kind == "Gateway":
            namespace = draw(st.sampled_from([w.namespace for w in world.waypoints]))
            spec["targetRefs"] = [{"group": GATEWAY_GROUP, "kind": "Gateway", "name": "waypoint"}]
        else:
            service = draw(st.sampled_from([w for w in world.servers if w.in_mesh]))
            namespace = service.namespace
            spec["targetRefs"] = [{"group": "", "kind": "Service", "name": service.name}]

    shape = draw(st.sampled_from(["rules", "rules", "rules", "rules", "no-rules", "empty-rule"]))
    action = draw(st.sampled_from(["ALLOW", "ALLOW", "DENY", "DENY", "AUDIT"]))
    if shape == "no-rules" and action == "DENY":
        action = "ALLOW"  # validation.go: DENY without rules is rejected
    if action != "ALLOW" or draw(st.booleans()):
        spec["action"] = action
    if shape == "empty-rule":
        spec["rules"] = [{}]
    elif shape == "rules":
        spec["rules"] = [draw(rule(pools)) for _ in range(draw(st.integers(1, 2)))]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if action != "AUDIT" and draw(st.integers(0, 7)) == 0:  # validation.go: dry-run only for ALLOW/DENY
        metadata["annotations"] = {"istio.io/dry-run": "true"}
    api = draw(st.sampled_from(["security.istio.io/v1", "security.istio.io/v1beta1"]))
    body = {"apiVersion": api, "kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec}
    return Manifest("AuthorizationPolicy", api, name, namespace, body, f"generated {name}")


@st.composite
def peer_authentication(draw: st.DrawFn, pools: Pools, name: str) -> Manifest:
    world = pools.world
    level = draw(st.sampled_from(["mesh", "namespace", "workload"]))
    mode = draw(st.sampled_from(["STRICT", "STRICT", "PERMISSIVE", "UNSET"]))
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    namespace = world.root
    if level != "mesh":
        namespace = draw(st.sampled_from([w.namespace for w in world.servers if w.in_mesh]))
    if level == "workload":
        target = draw(st.sampled_from([w for w in world.servers if w.namespace == namespace]))
        spec["selector"] = {"matchLabels": {"app": target.labels["app"]}}
    body = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return Manifest("PeerAuthentication", "security.istio.io/v1", name, namespace, body, f"generated {name}")


@st.composite
def policy_set(draw: st.DrawFn, pools: Pools) -> tuple[Manifest, ...]:
    """0-4 AuthorizationPolicies and 0-1 PeerAuthentications, unique names."""
    count = draw(st.sampled_from([1, 2, 2, 3, 3, 4, 0]))  # rarely none: the baseline is cheap to cover
    out = [draw(authorization_policy(pools, f"p{i}")) for i in range(count)]
    if draw(st.integers(0, 3)) == 0:
        out.append(draw(peer_authentication(pools, "pa")))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# Probes.


@st.composite
def request(draw: st.DrawFn) -> Request:
    headers: list[tuple[str, str]] = []
    if draw(st.booleans()):
        # header names are case-insensitive: `request.headers[x-team]` must match X-Team too
        headers.append((draw(st.sampled_from(["x-team", "X-Team"])), draw(st.sampled_from(HEADER_VALUES))))
    return Request(draw(st.sampled_from(METHODS)), draw(st.sampled_from(PROBE_PATHS)), tuple(headers))


@st.composite
def probes(draw: st.DrawFn, world: World) -> tuple[Probe, ...]:
    """A batch: every source to every server port, each with a random request, plus a few more
    random requests; duplicates removed (a truth-table key is the whole probe)."""
    targets = [(dst, port) for dst in world.servers for port in dst.ports]
    out = [Probe(src, dst, port, draw(request())) for src in world.workloads for dst, port in targets]
    for _ in range(draw(st.integers(0, 4))):
        dst, port = draw(st.sampled_from(targets))
        out.append(Probe(draw(st.sampled_from(world.workloads)), dst, port, draw(request())))
    return tuple(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------------
# Coverage: what one example's policies and probes exercise, as labels for hypothesis.event().


def _policy_features(m: Manifest, root: str) -> set[str]:
    spec, out = m.spec, set()
    action = str(spec.get("action", "ALLOW"))
    out.add(f"action: {action}")
    if spec.get("targetRefs"):
        out.add(f"scope: targetRefs {spec['targetRefs'][0]['kind']}")
    elif spec.get("selector"):
        out.add("scope: root-namespace selector" if m.namespace == root else "scope: selector")
    else:
        out.add("scope: mesh-wide (root namespace)" if m.namespace == root else "scope: namespace-wide")
    if m.annotations.get("istio.io/dry-run") == "true":
        out.add(f"policy: dry-run {action}")
    rules = spec.get("rules")
    if rules is None:
        out.add("policy: spec: {}" if set(spec) <= {"action"} else f"policy: {action} without rules")
    for r in rules or []:
        if not r:
            out.add(f"policy: {action} rules: [{{}}]")
        for block, key in (("from", "source"), ("to", "operation")):
            for entry in r.get(block) or []:
                for name, values in entry[key].items():
                    out.add(f"field: {key}.{name}")
                    if not name.lower().endswith(("ports", "ipblocks", "serviceaccounts")):
                        out.update(f"match form: {form_of(v)}" for v in values)
        for cond in r.get("when") or []:
            for part in ("values", "notValues"):
                if part in cond:
                    out.add(f"field: when {cond['key']} {part}")
                    if cond["key"] not in ("source.ip", "destination.ip", "destination.port",
                                           "source.serviceAccount"):
                        out.update(f"match form: {form_of(v)}" for v in cond[part])
    return out


def features(policies: Sequence[Manifest], batch: Sequence[Probe], root: str = ROOT) -> set[str]:
    """Labels for what this example covers: fields and not-forms, match forms, scopes, actions, special
    policy shapes, PeerAuthentication levels, and probe traits."""
    out: set[str] = set()
    actions = set()
    for m in policies:
        if m.kind == "PeerAuthentication":
            level = "workload" if m.spec.get("selector") else "mesh" if m.namespace == root else "namespace"
            out.add(f"PeerAuthentication: {level} {m.spec['mtls']['mode']}")
            continue
        actions.add(str(m.spec.get("action", "ALLOW")))
        out |= _policy_features(m, root)
    if {"ALLOW", "DENY"} <= actions:
        out.add("policies: ALLOW and DENY together")
    if {"ALLOW", "DENY", "AUDIT"} <= actions:
        out.add("policies: ALLOW, DENY and AUDIT together")
    if not policies:
        out.add("policies: none")
    for p in batch:
        if not p.source.in_mesh:
            out.add("probe: plaintext client (out of mesh)")
        if p.source == p.destination:
            out.add("probe: workload calls its own service")
        out.add(f"probe: {p.port.protocol} port{' 80' if p.port.number == 80 else ''}")
        if any(seg in p.request.path for seg in ("/../", "/./", "%2e")):
            out.add("probe: path with dot segments")
        if "?" in p.request.path:
            out.add("probe: path with a query")
        if p.request.headers:
            out.add("probe: with x-team header")
    return out
