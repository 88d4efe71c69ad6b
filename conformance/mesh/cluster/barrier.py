"""The propagation barrier: before probing a step, wait until its policies reached the enforcing proxies.

On a cluster a policy is enforced when istiod has pushed it and the proxy has taken it (istiod debounces
100 ms to 10 s, pilot/pkg/features/tuning.go), not when the API server accepted it. Probing before that
measures the push, not the policy. So after applying a step the target waits until every enforcing
proxy's own configuration holds exactly the step's policies:

- a sidecar or a waypoint: the policy ids istiod writes into Envoy's RBAC filters,
  `ns[<ns>]-policy[<name>]-rule[<i>]` (builder.go `policyName`; in 1.29.6 and 1.30.3 a policy without rules
  gets an explicit never-matching `rule[0]`, so every ALLOW and DENY policy is visible), read from the proxy's
  config dump (`pilot-agent request GET config_dump?resource=dynamic_listeners`);
- ztunnel: `istioctl ztunnel-config policies <ztunnel pod> -o json`, which lists `{name, namespace}`;
- a CUSTOM policy: the rule names of the shadow RBAC istiod puts in front of its ext_authz filter,
  `istio-ext-authz-<provider>-ns[..]-policy[..]-rule[i]` (builder.go `policyName` with IsCustomBuilder),
  waited for as `custom:ns/name`; when its provider is not in the mesh config istiod makes the rule an RBAC
  DENY with `-deny-due-to-bad-CUSTOM-action` appended, `custom-bad:ns/name`. So the barrier also proves the
  mesh config's providers reached istiod (meshconfig.py). ztunnel never gets CUSTOM (ambient
  authorization.go: "ztunnel does not support the CUSTOM action");
- a RequestAuthentication: each jwtRule's issuer in the JWT filter istiod configures
  (envoy.filters.http.jwt_authn JwtAuthentication `providers[*].issuer`, pilot/pkg/security/authn
  policy_applier.go), waited for as `jwt:<issuer>`, on HTTP chains only (ztunnel does no JWT).

Which proxy must hold which policy follows plain Kubernetes scoping: the policy's namespace (or the
root namespace) and its `matchLabels` against the pod's labels for sidecars and ztunnel; its
`targetRefs` for waypoints. An ingress gateway (issue 12) is attached to as any workload with labels
(istiod's `WorkloadPolicyMatcher.ShouldAttachPolicy`, pilot/pkg/model/policyattachment.go@1.30.3 l.126-200):
by selector, and by `targetRefs` to a Gateway only when its pod carries gateway.networking.k8s.io/gateway-name
(then a policy without targetRefs still attaches by selector: ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY, on by
default). What cannot be observed by name is not waited for (PeerAuthentication,
AUDIT, dry-run policies at ztunnel, ALLOW rules on a TCP-only sidecar, which istiod skips, a CUSTOM policy
of an HTTP provider on a TCP-only sidecar, which gets no filter at all).
The barrier records how long it took; if it times out the run goes on (convergence still decides) and
the report names what never showed up: a slow push is a finding, not a reason to hide the step.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from conformance.model import Manifest
from conformance.names import DRY_RUN_ANNOTATION, GATEWAY_API_GROUP, GATEWAY_NAME_LABEL, WAYPOINT_GATEWAY_CLASS

ProxyKind = Literal["sidecar", "waypoint", "ztunnel", "gateway"]
_POLICY_ID = re.compile(r"(istio-ext-authz-[^\"\s]*?)?ns\[([^\]]*)\]-policy\[([^\]]*)\]-rule\[\d+\]"
                        r"(-deny-due-to-bad-CUSTOM-action)?")
CUSTOM_ID = "custom:"  # a CUSTOM policy whose provider istiod found: its ext_authz filter is in force
BAD_CUSTOM_ID = "custom-bad:"  # a CUSTOM policy whose provider istiod did not find: an RBAC DENY instead
JWT_ID = "jwt:"  # an issuer in the JWT filter
_JWT_AUTHN_TYPE = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"


@dataclass(frozen=True)
class Proxy:
    """One enforcing proxy: a sidecar (per destination pod), an ingress gateway, a waypoint, or a ztunnel (per
    node)."""

    kind: ProxyKind
    name: str  # pod name
    namespace: str  # cluster namespace of the pod
    labels: Mapping[str, str] = field(default_factory=dict)  # the workload pod's labels (sidecar, gateway)
    http: bool = True  # the workload serves at least one HTTP port (sidecar)
    gateway: str = ""  # waypoint: the Gateway's name
    serves_namespaces: frozenset[str] = frozenset()  # waypoint: namespaces that use it

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Expectation:
    proxy: Proxy
    present: frozenset[str]  # "ns/name" (cluster names) that must be in the proxy's config
    absent: frozenset[str]  # ... and those that must be gone
    # With scenarios side by side (schedule.py): the mesh root namespace, in which the proxy may hold no policy
    # but `present` and `allowed` (what was there before the run). Another scenario's mesh-wide policy
    # withdrawn at its close may linger in this scenario's proxies (that close waited for its own proxies
    # only): this step waits until it is gone. Review finding.
    foreign_root: str | None = None
    allowed: frozenset[str] = frozenset()

    def foreign(self, names: set[str]) -> list[str]:
        """Root-namespace policies the proxy holds that are not this step's nor the cluster's own."""
        if self.foreign_root is None:
            return []
        prefix = self.foreign_root + "/"
        mine = {policy_of(n) for n in self.present} | set(self.allowed)
        # names with "_" are istiod's own (istio_converted_static_strict, converted_peer_authentication_*:
        # pilot/pkg/serviceregistry/ambient/authorization.go@1.30.3), never a Kubernetes object's name
        return sorted(n for n in names if policy_of(n).startswith(prefix) and "_" not in policy_of(n)[len(prefix):]
                      and policy_of(n) not in mine)


@dataclass
class BarrierResult:
    seconds: float
    reached: bool
    pending: list[str] = field(default_factory=list)  # "proxy: missing ns/name" / "...: stale ns/name"
    polls: int = 0


def policy_of(policy_id: str) -> str:
    """The `ns/name` a barrier id names (`custom:ns/name` -> `ns/name`); a `jwt:` id names none (itself)."""
    for kind in (CUSTOM_ID, BAD_CUSTOM_ID):
        if policy_id.startswith(kind):
            return policy_id[len(kind):]
    return policy_id


def policy_ids_in(config_dump: str) -> set[str]:
    """The barrier ids of every RBAC policy id in an Envoy config dump: `ns/name` (ALLOW, DENY, AUDIT),
    `custom:ns/name` (a CUSTOM policy's shadow rules), `custom-bad:ns/name` (its RBAC DENY stand-in)."""
    out = set()
    for m in _POLICY_ID.finditer(config_dump):
        ref = f"{m.group(2)}/{m.group(3)}"
        out.add(ref if m.group(1) is None else (BAD_CUSTOM_ID if m.group(4) else CUSTOM_ID) + ref)
    return out


def jwt_issuers_in(config: Any) -> set[str]:
    """`jwt:<issuer>` for every provider of every JWT filter config nested in `config` (parsed JSON)."""
    out: set[str] = set()
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if str(node.get("@type", "")).endswith(_JWT_AUTHN_TYPE) and isinstance(node.get("providers"), dict):
                out |= {JWT_ID + str(p["issuer"]) for p in node["providers"].values()
                        if isinstance(p, dict) and p.get("issuer")}
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def active_policy_ids(config_dump: str) -> set[str] | None:
    """`ns/name` of the RBAC policy ids in the listeners Envoy is serving with, or None if unreadable.

    `config_dump?resource=dynamic_listeners` gives one DynamicListener per listener, each with an
    `active_state` and possibly a `warming_state`, `draining_state` and `error_state` (envoy
    api/envoy/admin/v3/config_dump_shared.proto ListenersConfigDump.DynamicListener): a rejected or
    warming listener must not count as in force, nor a draining one as still enforcing.
    """
    try:
        dump = json.loads(config_dump)
    except ValueError:
        return None
    configs = dump.get("configs") if isinstance(dump, dict) else None
    if not isinstance(configs, list):
        return None
    out: set[str] = set()
    for entry in configs:
        if isinstance(entry, dict):
            active = entry.get("active_state") or {}
            out |= policy_ids_in(json.dumps(active)) | jwt_issuers_in(active)
    return out


def ztunnel_policies(json_text: Any) -> set[str]:
    """`ns/name` of every policy in `istioctl ztunnel-config policies -o json` output (a list)."""
    if not isinstance(json_text, list):
        return set()
    return {f"{p.get('namespace')}/{p.get('name')}" for p in json_text if isinstance(p, dict)}


def _selector(doc: Mapping[str, Any]) -> Mapping[str, str] | None:
    spec = doc.get("spec") or {}
    sel = spec.get("selector") if isinstance(spec, Mapping) else None
    if isinstance(sel, Mapping):
        labels = sel.get("matchLabels")
        return labels if isinstance(labels, Mapping) else {}
    return None


def _target_refs(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = doc.get("spec") or {}
    if not isinstance(spec, Mapping):
        return []
    refs = [r for r in spec.get("targetRefs") or [] if isinstance(r, Mapping)]
    if isinstance(spec.get("targetRef"), Mapping):
        refs.append(spec["targetRef"])
    return refs


def _action(m: Manifest) -> str:
    return str((m.spec.get("action") or "ALLOW") if isinstance(m.spec, Mapping) else "ALLOW")


def observable(m: Manifest) -> bool:
    """Whether some proxy's configuration names `m` (an ALLOW, DENY or CUSTOM AuthorizationPolicy, a
    RequestAuthentication with an issuer), so the barrier can wait for it to arrive or to go; anything else
    (PeerAuthentication, AUDIT) is applied unobserved."""
    if m.kind == "RequestAuthentication":
        return bool(_issuers(m))
    return m.kind == "AuthorizationPolicy" and _action(m) in ("ALLOW", "DENY", "CUSTOM")


def _issuers(m: Manifest) -> set[str]:
    rules = m.spec.get("jwtRules") if isinstance(m.spec, Mapping) else None
    return {str(r["issuer"]) for r in rules or [] if isinstance(r, Mapping) and r.get("issuer")}


def ids_of(m: Manifest, providers: Mapping[str, str] | None = None) -> set[str]:
    """The barrier ids `m` puts into a proxy that enforces it (`providers`: the mesh config's provider names
    and kinds, "http" or "grpc": which decide a CUSTOM policy's form)."""
    if m.kind == "RequestAuthentication":
        return {JWT_ID + issuer for issuer in _issuers(m)}
    if _action(m) == "CUSTOM":
        provider = m.spec.get("provider") if isinstance(m.spec, Mapping) else None
        name = provider.get("name") if isinstance(provider, Mapping) else None
        return {(CUSTOM_ID if name in (providers or {}) else BAD_CUSTOM_ID) + m.ref}
    return {m.ref}


def _has_rules(m: Manifest) -> bool:
    return bool(m.spec.get("rules"))


def applies_to(m: Manifest, proxy: Proxy, root_namespace: str, providers: Mapping[str, str] | None = None) -> bool:
    """Whether `proxy` enforces `m` (its configuration must name it)."""
    if not observable(m):
        return False
    http_only = m.kind == "RequestAuthentication" or (
        _action(m) == "CUSTOM" and ids_of(m, providers) != {BAD_CUSTOM_ID + m.ref}
        and (providers or {}).get(_provider_name(m)) != "grpc")
    if proxy.kind == "ztunnel" and (m.kind == "RequestAuthentication" or _action(m) == "CUSTOM"):
        return False  # ztunnel does no JWT and no CUSTOM (ambient authorization.go@1.30.3)
    refs = _target_refs(m.body)
    if proxy.kind == "waypoint":
        for ref in refs:
            kind, name = ref.get("kind"), ref.get("name")
            ns = ref.get("namespace") or m.namespace
            if kind == "Gateway" and name == proxy.gateway and ns == proxy.namespace:
                return True
            if kind == "Service" and ns in proxy.serves_namespaces:
                return True
            if kind == "GatewayClass" and name == WAYPOINT_GATEWAY_CLASS and m.namespace == root_namespace:
                return True
        return False
    if proxy.kind == "gateway" and GATEWAY_NAME_LABEL in proxy.labels:
        if refs:  # policyattachment.go l.150-197: a Gateway of the label's name, the policy in the pod's namespace
            return m.namespace == proxy.namespace and any(
                ref.get("kind") == "Gateway" and ref.get("group") == GATEWAY_API_GROUP
                and ref.get("name") == proxy.labels[GATEWAY_NAME_LABEL]
                and (ref.get("namespace") or m.namespace) == proxy.namespace for ref in refs)
    elif refs:
        return False
    if proxy.kind == "ztunnel":
        return m.annotations.get(DRY_RUN_ANNOTATION, "").lower() != "true"
    if m.namespace not in (proxy.namespace, root_namespace):
        return False
    selector = _selector(m.body)
    if selector and any(proxy.labels.get(k) != v for k, v in selector.items()):
        return False
    if http_only:  # the JWT filter, and an HTTP provider's ext_authz filter, exist on HTTP chains only
        return proxy.http
    return proxy.http or not (_has_rules(m) and _action(m) == "ALLOW")


def _provider_name(m: Manifest) -> str | None:
    provider = m.spec.get("provider") if isinstance(m.spec, Mapping) else None
    return provider.get("name") if isinstance(provider, Mapping) else None


def expectations(proxies: Sequence[Proxy], in_force: Iterable[Manifest], removed: Iterable[Manifest],
                 root_namespace: str, ztunnel_namespaces: frozenset[str] = frozenset(),
                 root_baseline: frozenset[str] | None = None, providers: Mapping[str, str] | None = None
                 ) -> list[Expectation]:
    """What each proxy's configuration must show once the step's policies (cluster names) are in force.

    A ztunnel is expected to hold the policies of the ambient namespaces (and the root namespace). With
    `root_baseline` (scenarios side by side), every proxy must also hold no root-namespace policy but the
    step's own and those in the baseline (`Expectation.foreign`).
    """
    in_force = list(in_force)
    removed = [m for m in removed if observable(m)]
    # A removed policy's ids are expected gone from the proxies it applied to: the ids of every form it may have
    # had (a CUSTOM policy's provider may have been there or not)
    def gone(m: Manifest) -> set[str]:
        if m.kind == "AuthorizationPolicy" and _action(m) == "CUSTOM":
            return {CUSTOM_ID + m.ref, BAD_CUSTOM_ID + m.ref}
        return ids_of(m, providers)

    # the step's own root-namespace policies are never foreign, also where `applies_to` does not predict them
    # in a proxy (AUDIT rules are named in sidecar RBAC too; review finding)
    own_root = frozenset(m.ref for m in in_force if m.namespace == root_namespace)
    out = []
    for proxy in proxies:
        present: set[str] = set()
        for m in in_force:
            if not applies_to(m, proxy, root_namespace, providers):
                continue
            if proxy.kind == "ztunnel" and m.namespace not in ztunnel_namespaces | {root_namespace}:
                continue
            present |= ids_of(m, providers)
        absent = {i for m in removed for i in gone(m)} - present
        if root_baseline is not None:
            out.append(Expectation(proxy, frozenset(present), frozenset(absent), root_namespace,
                                   root_baseline | own_root))
        elif present or absent:
            out.append(Expectation(proxy, frozenset(present), frozenset(absent)))
    return out


def wait(expected: Sequence[Expectation], read: Callable[[Proxy], set[str] | None], timeout: float = 30.0,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         interval: float = 0.25, max_interval: float = 2.0) -> BarrierResult:
    """Poll each proxy until it holds what it must; `read` returns None when the config is unreadable."""
    start = clock()
    pending = list(expected)
    polls = 0
    delay = interval
    problems: list[str] = []
    while True:
        polls += 1
        still: list[Expectation] = []
        problems = []
        for exp in pending:
            names = read(exp.proxy)
            if names is None:
                still.append(exp)
                problems.append(f"{exp.proxy.label}: configuration not readable")
                continue
            missing = sorted(exp.present - names)
            stale = sorted(exp.absent & names)
            foreign = exp.foreign(names)
            if missing or stale or foreign:
                still.append(exp)
                problems += [f"{exp.proxy.label}: missing {n}" for n in missing]
                problems += [f"{exp.proxy.label}: still has {n}" for n in stale]
                problems += [f"{exp.proxy.label}: still has another scenario's mesh-wide {n}" for n in foreign]
        pending = still
        elapsed = clock() - start
        if not pending:
            return BarrierResult(elapsed, True, [], polls)
        if elapsed >= timeout:
            return BarrierResult(elapsed, False, problems, polls)
        sleep(min(delay, max(0.0, timeout - elapsed)))
        delay = min(delay * 2, max_interval)
