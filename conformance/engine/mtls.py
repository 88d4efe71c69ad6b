"""PeerAuthentication: which mTLS mode each data plane applies to a workload port, as istiod computes it.

Why a module of its own: the sidecar and ztunnel read the same PeerAuthentications in two different ways,
and both ways decide what identity an AuthorizationPolicy can see, so each is kept here as the port of the
istiod function that computes it (istio/istio@1.30.3):

- **Sidecars** (`pilot/pkg/security/authn/policy_applier.go` ComposePeerAuthentication and
  GetMutualTLSModeForPort): one mesh-level (root namespace, no selector labels), one namespace-level and one
  workload-level (selector labels, never in the root namespace) policy, the oldest of each; PERMISSIVE by
  default, then mesh < namespace < workload, UNSET inheriting; the workload policy's `portLevelMtls` entry
  for a *workload* port overrides (UNSET inherits the composed mode). The server's inbound listener has the
  filter chains of that mode (`pilot/pkg/networking/core/filterchain_options.go` getFilterChainMatchOptions:
  STRICT → TLS only, PERMISSIVE → TLS and plaintext, DISABLE → plaintext only). The client side computes the
  same mode for the endpoint port (`pilot/pkg/xds/endpoints/mtls_checker.go` checkMtlsEnabled, via
  `authn.NewMtlsPolicy` on the same composition): with no DestinationRule (the suite has none) auto-mTLS
  sends plaintext to a DISABLE port. So under DISABLE even an in-mesh client arrives without a peer
  certificate: no principal, namespace or service account, and no SNI, for RBAC to see.
- **ztunnel** (`pilot/pkg/serviceregistry/ambient/authorization.go` convertedSelectorPeerAuthentications and
  convertPeerAuthentication, `policies.go` PeerAuthDerivedPolicies, `workloads.go` buildWorkloadPolicies):
  ztunnel has no modes. istiod refers the workload to the static DENY `<root>/istio_converted_static_strict`
  (`notPrincipals: [presence]`) when its effective mode is STRICT, and, for a workload-level policy with
  `portLevelMtls`, to a DENY `<ns>/converted_peer_authentication_<name>` built from the port modes. HBONE is
  always mTLS (an in-mesh client always has an identity), so these DENYs only ever stop plaintext from
  outside the mesh; DISABLE and PERMISSIVE are the same to ztunnel. The code, not the API reference, is
  followed here, quirks included (each is pinned by a test in tests/test_engine_mtls.py):
  * a DISABLE port under an UNSET workload mode and a STRICT namespace or mesh policy stays STRICT: the
    reference decision looks only for PERMISSIVE ports there (`isMtlsModePermissive(portMtls)`), so the
    static strict policy stays referenced and denies plaintext on every port;
  * a STRICT port of a PERMISSIVE or DISABLE workload policy is dropped when the mesh policy is STRICT and
    the namespace has none or an UNSET one (Go precedence in convertPeerAuthentication: the third case of
    the skip condition is not guarded by "workload mode UNSET"), so that port accepts plaintext;
  * a non-STRICT port under an UNSET workload mode and an UNSET namespace policy (mesh STRICT) is skipped
    (`nsCfg != nil && !isMtlsModeStrict(nsCfg)`) while the reference decision drops the static strict
    policy: the whole workload accepts plaintext;
  * the namespace and mesh policies convertPeerAuthentication merges are the oldest with no `selector` at
    all (`PeerAuthByNamespace`), while the reference decision counts a `selector` without labels as
    namespace-wide, as the sidecar does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from conformance.engine.policy import PeerAuthentication
from conformance.model import MeshConfig, Workload

STATIC_STRICT = "istio_converted_static_strict"  # ambient authorization.go staticStrictPolicyName
CONVERTED_PREFIX = "converted_peer_authentication_"  # model/authentication.go GetAmbientPolicyConfigName


def _subset(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- sidecar -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SidecarMtls:
    """The mode of one inbound port of a sidecar, and the PeerAuthentication that set it (None: the default)."""

    mode: str  # "STRICT" | "PERMISSIVE" | "DISABLE"
    decided_by: PeerAuthentication | None
    port_level: bool = False  # the workload policy's portLevelMtls entry for this port set it


@dataclass(frozen=True)
class _Levels:
    mesh: PeerAuthentication | None
    namespace: PeerAuthentication | None
    workload: PeerAuthentication | None


def _levels(policies: Sequence[PeerAuthentication], workload: Workload, mesh: MeshConfig) -> _Levels:
    """authentication.go GetPeerAuthenticationsForWorkload (the root namespace and the workload's own; a
    selector must be a subset of the workload's labels) + ComposePeerAuthentication's levels (no selector
    labels: mesh in the root namespace, else namespace; labels outside the root namespace: workload). With
    several at a level Istio takes the oldest; a scenario has no creation times, so the first listed wins."""
    mesh_pa = ns_pa = wl_pa = None
    for pa in policies:
        if pa.namespace not in (workload.namespace, mesh.root_namespace):
            continue
        if pa.selector and not _subset(pa.selector, workload.labels):
            continue
        if not pa.selector:
            if pa.namespace == mesh.root_namespace:
                mesh_pa = mesh_pa or pa
            else:
                ns_pa = ns_pa or pa
        elif pa.namespace != mesh.root_namespace:
            wl_pa = wl_pa or pa
    return _Levels(mesh_pa, ns_pa, wl_pa)


def sidecar_mtls(policies: Sequence[PeerAuthentication], workload: Workload, mesh: MeshConfig,
                 port: int) -> SidecarMtls:
    """ComposePeerAuthentication + GetMutualTLSModeForPort for `workload`'s port `port`."""
    levels = _levels(policies, workload, mesh)
    mode, decided_by = "PERMISSIVE", None
    for pa in (levels.mesh, levels.namespace, levels.workload):
        if pa is not None and pa.mode != "UNSET":
            mode, decided_by = pa.mode, pa
    wl = levels.workload
    if wl is not None:
        for number, port_mode in wl.port_level:
            if number == port:
                # "UNSET port-level config will be replaced with config from workload-level"
                return SidecarMtls(mode if port_mode == "UNSET" else port_mode,
                                   decided_by if port_mode == "UNSET" else wl, port_mode != "UNSET")
    return SidecarMtls(mode, decided_by)


# -- ztunnel -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortMatch:
    """One `istio.security.Match` of a converted PeerAuthentication: its fields are ANDed."""

    no_principal: bool = False  # notPrincipals: [presence]: the connection has no peer identity
    ports: tuple[int, ...] = ()  # destinationPorts
    not_ports: tuple[int, ...] = ()  # notDestinationPorts

    def matches(self, has_identity: bool, port: int) -> bool:
        """ztunnel rbac.rs: every set field must hold; `not_principals` with no identity holds."""
        if self.no_principal and has_identity:
            return False
        if self.ports and port not in self.ports:
            return False
        return not (self.not_ports and port in self.not_ports)


@dataclass(frozen=True)
class ConvertedPolicy:
    """A DENY istiod sends ztunnel for PeerAuthentication: groups ORed, a group's rules ANDed, a rule's
    matches ORed (one match per rule here, as istiod builds them)."""

    namespace: str
    name: str
    groups: tuple[tuple[PortMatch, ...], ...]
    source: PeerAuthentication | None  # the PeerAuthentication it stands for

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def denies(self, has_identity: bool, port: int) -> bool:
        return any(all(m.matches(has_identity, port) for m in group) for group in self.groups)


@dataclass(frozen=True)
class ZtunnelMtls:
    """The PeerAuthentication DENYs a workload's ztunnel applies (in the order the workload lists them)."""

    policies: tuple[ConvertedPolicy, ...]
    notes: tuple[str, ...] = ()

    def denying(self, has_identity: bool, port: int) -> ConvertedPolicy | None:
        return next((p for p in self.policies if p.denies(has_identity, port)), None)


def _strict(pa: PeerAuthentication | None) -> bool:
    return pa is not None and pa.mode == "STRICT"


def _unset(pa: PeerAuthentication | None) -> bool:
    return pa is None or pa.mode == "UNSET"


def convert(pa: PeerAuthentication, ns_pa: PeerAuthentication | None, root_pa: PeerAuthentication | None,
            root_namespace: str) -> ConvertedPolicy | None:
    """convertPeerAuthentication@1.30.3, line by line: None when istiod sends nothing for `pa`."""
    if pa.namespace == root_namespace or pa.selector is None or not pa.port_level:
        return None
    mode = pa.mode
    rules: list[PortMatch] = []
    groups: list[tuple[PortMatch, ...]] = []
    if mode == "STRICT":
        rules.append(PortMatch(no_principal=True))
    found_non_strict = False
    for port, port_mode in sorted(pa.port_level):  # maps.SeqStable: ascending ports
        if port_mode == "STRICT":
            # Go precedence: `strict(pa) || (unset(pa) && strict(ns)) || ((ns nil or unset) && strict(root))`
            if mode == "STRICT" or (mode == "UNSET" and _strict(ns_pa)) or (_unset(ns_pa) and _strict(root_pa)):
                continue
            groups.append((PortMatch(no_principal=True, ports=(port,)),))
        elif port_mode in ("PERMISSIVE", "DISABLE"):
            if mode in ("PERMISSIVE", "DISABLE"):
                continue
            if mode == "UNSET" and ((ns_pa is not None and not _strict(ns_pa))
                                    or (ns_pa is None and root_pa is not None and not _strict(root_pa))
                                    or (ns_pa is None and root_pa is None)):
                continue
            found_non_strict = True
            rules.append(PortMatch(not_ports=(port,)))
    if mode == "STRICT" and not found_non_strict:
        return None
    if not rules and not groups:
        return None
    merge = (_strict(root_pa) and (ns_pa is None or _unset(ns_pa) or _strict(ns_pa))) or _strict(ns_pa)
    if merge and found_non_strict:
        rules.append(PortMatch(no_principal=True))
    if rules:
        groups.append(tuple(rules))
    return ConvertedPolicy(pa.namespace, CONVERTED_PREFIX + pa.name, tuple(groups), pa)


def ztunnel_mtls(policies: Sequence[PeerAuthentication], workload: Workload, mesh: MeshConfig) -> ZtunnelMtls:
    """What the workload's ztunnel applies for PeerAuthentication: workloads.go buildWorkloadPolicies appends
    convertedSelectorPeerAuthentications' keys to the workload's policy list (the derived policies are not
    selected by labels: the workload's list comes from AuthzDerivedPolicies only, ambientindex.go), and
    ztunnel looks each key up (state.rs assert_rbac; a key istiod never built is skipped)."""
    root = mesh.root_namespace
    # workloads.go fetchPeerAuthentications: root-namespace ones without a selector, and the workload's own
    # namespace's whose selector (if any) is a subset of its labels
    applicable = [pa for pa in policies
                  if (pa.namespace == root and pa.selector is None)
                  or (pa.namespace == workload.namespace
                      and (pa.selector is None or _subset(pa.selector, workload.labels)))]
    mesh_pa = ns_pa = wl_pa = None
    for pa in applicable:
        if not pa.selector:
            if pa.namespace == root:
                mesh_pa = mesh_pa or pa
            else:
                ns_pa = ns_pa or pa
        elif pa.namespace != root:
            wl_pa = wl_pa or pa
    notes: list[str] = []
    strict_by: PeerAuthentication | None = mesh_pa if _strict(mesh_pa) else None
    effective_strict = _strict(mesh_pa)
    if ns_pa is not None and not _unset(ns_pa):
        effective_strict, strict_by = _strict(ns_pa), ns_pa if _strict(ns_pa) else None
    derived_key: PeerAuthentication | None = None
    if wl_pa is not None:
        if wl_pa.mode == "STRICT":
            effective_strict, strict_by = True, wl_pa
        elif wl_pa.mode in ("PERMISSIVE", "DISABLE"):
            effective_strict, strict_by = False, None
        if wl_pa.port_level:  # `PortLevelMtls != nil` (validation rejects an empty map)
            modes = [m for _, m in wl_pa.port_level]
            if wl_pa.mode == "STRICT":
                if any(m in ("PERMISSIVE", "DISABLE") for m in modes):
                    derived_key, effective_strict = wl_pa, False
            elif wl_pa.mode in ("PERMISSIVE", "DISABLE"):
                if "STRICT" in modes:
                    derived_key = wl_pa
            elif effective_strict:
                if "PERMISSIVE" in modes:
                    derived_key, effective_strict = wl_pa, False
                elif "DISABLE" in modes:
                    notes.append(f"{wl_pa.ref}: its DISABLE ports do not lift the inherited STRICT at ztunnel: "
                                 "istiod looks only for PERMISSIVE ports under an UNSET workload mode "
                                 "(authorization.go convertedSelectorPeerAuthentications), so the static strict "
                                 "policy stays")
            elif "STRICT" in modes:
                derived_key = wl_pa
    out: list[ConvertedPolicy] = []
    if effective_strict:
        out.append(ConvertedPolicy(root, STATIC_STRICT, ((PortMatch(no_principal=True),),), strict_by))
    if derived_key is not None:
        # policies.go PeerAuthDerivedPolicies: the oldest namespace and root policies with no selector at all
        ns_nil = next((p for p in policies if p.namespace == derived_key.namespace and p.selector is None), None)
        root_nil = next((p for p in policies if p.namespace == root and p.selector is None), None)
        converted = convert(derived_key, ns_nil, root_nil, root)
        if converted is None:
            notes.append(f"{derived_key.ref}: the workload refers to {derived_key.namespace}/{CONVERTED_PREFIX}"
                         f"{derived_key.name}, but istiod builds no such policy for these modes "
                         "(convertPeerAuthentication returns nil); ztunnel skips the unknown name")
        else:
            out.append(converted)
    # sets.SortedList: the keys in the workload's list are sorted ("<ns>/converted_..." vs "<root>/istio_...")
    out.sort(key=lambda p: p.key)
    return ZtunnelMtls(tuple(out), tuple(notes))
