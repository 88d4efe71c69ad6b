"""`authz-conformance snapshot`: `init`'s scenario, from what a live cluster holds today.

Why: a platform team's cluster already holds the truth (issue 13, deliverable 3). One command turns it into a
regression gate: the workloads, their Services and namespaces' data planes, and the security.istio.io policies,
read strictly read-only (GET and LIST only: the suite never writes to someone's cluster to look at it), handed to
the same derivation and writer `init` uses (init.write_scenario, manifests.derive): nothing is derived twice.

What is read, per namespace (every namespace but Kubernetes' and Istio's own when no --namespace names them):
the Namespace (its labels give the data plane), Deployments, StatefulSets and DaemonSets (pod owners: a workload
each, as in rendered manifests), bare Pods (no ownerReference; a ReplicaSet's or Job's pods are its owner's),
Services (ports and protocols as istiod reads them), ServiceAccounts (to say when a workload's is missing), and
AuthorizationPolicies, PeerAuthentications and RequestAuthentications (security.istio.io/v1, v1beta1 when v1 is
not served; a kind not served at all is named in the header) in those namespaces and in the mesh root namespace
(the `istio` ConfigMap's mesh `rootNamespace`, default istio-system), whose policies apply mesh-wide.
Deployments an Istio controller makes for gateways and waypoints are not application workloads and are left out.

Every object is stripped of what the API server adds (status, managedFields, resourceVersion, uid,
creationTimestamp, generation, ownerReferences, kubectl's last-applied-configuration and the Deployment
controller's revision annotation, a Service's allocated cluster IPs): what is left is what a repository would
hold, so two snapshots of an unchanged cluster are the same text.

Where the objects go: with `-o OUT`, into `<OUT stem>.manifests.yaml` beside OUT, and the scenario refers to it
(`workloadsFrom` and the step's policy `file:`), exactly as `init --from` refers to a rendered file. Chosen over
inline because (1) the scenario stays the size of its probe matrix and the reviewer reads verdicts, not pod
templates; (2) the manifests file is a plain multi-document YAML of the cluster's objects that `kubectl diff -f`
and `git diff` of the next snapshot read directly: what changed in the cluster shows up there, what changed in
behaviour in the verdicts; (3) the policies stay whole documents (init references a file whose policies are all
kept unchanged) and the loader derives workloads, ports and data planes from it the same way at every run.
Without -o (stdout) there is no place for a second file, so everything is written inline (init's `--from -`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from conformance.errors import ConformanceError, TargetError, UsageError
from conformance.manifests import POD_TEMPLATES
from conformance.model import Mode
from conformance.versions import IstioVersion

if TYPE_CHECKING:
    from conformance.mesh.cluster.kube import Kube

# Namespaces that hold no application: Kubernetes' own and kind's storage provisioner (why each is skipped)
SYSTEM_NAMESPACES: Mapping[str, str] = {
    "kube-system": "Kubernetes' own", "kube-public": "Kubernetes' own", "kube-node-lease": "Kubernetes' own",
    "local-path-storage": "kind's storage provisioner",
}
ISTIO_NAMESPACE = "istio-system"  # istiod's namespace by default, and the default mesh root namespace
ISTIOD_SELECTOR = "app=istiod"  # the istiod chart's Deployment label (every revision)
MESH_CONFIGMAP = "istio"  # the default revision's mesh config (`istio-<rev>` for another revision)
DEFAULT_TRUST_DOMAIN = "cluster.local"
WORKLOAD_KINDS = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"), ("v1", "Pod"))
POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")
POLICY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")  # v1 from Istio 1.22; v1beta1 before
# Pod-template labels of Deployments Istio's controllers make (a waypoint's or a gateway's Envoy), not applications
GATEWAY_LABELS: Mapping[str, frozenset[str] | None] = {
    "gateway.networking.k8s.io/gateway-name": None,  # any value: istiod's gateway deployment controller
    "istio": frozenset({"ingressgateway", "egressgateway"}),  # the istio/gateway chart's classic gateways
}
SERVER_METADATA = ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink",
                   "ownerReferences", "deletionTimestamp", "deletionGracePeriodSeconds", "generateName")
SERVER_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration", "deployment.kubernetes.io/revision")
SERVICE_ALLOCATED = ("clusterIP", "clusterIPs")  # allocated by the API server, different on every cluster
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every Namespace by the API server (Kubernetes 1.21+)


@dataclass
class Snapshot:
    """What was read from one kube context: the stripped objects, in the order they are written (Namespaces, then
    per namespace its workloads and Services, then policies by kind, the root namespace's first), and what the
    header says about them."""

    context: str
    server: str
    namespaces: list[str]
    root_namespace: str = ISTIO_NAMESPACE
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    documents: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "kube-system (Kubernetes' own)"
    notes: list[str] = field(default_factory=list)

    @property
    def workloads(self) -> int:
        return sum(1 for d in self.documents if d.get("kind") in POD_TEMPLATES)

    def mesh(self) -> dict[str, str]:
        """`spec.mesh` for what differs from Istio's defaults (the scenario then names the same root namespace and
        identities as the cluster)."""
        out: dict[str, str] = {}
        if self.root_namespace != ISTIO_NAMESPACE:
            out["rootNamespace"] = self.root_namespace
        if self.trust_domain != DEFAULT_TRUST_DOMAIN:
            out["trustDomain"] = self.trust_domain
        return out


def read(kube: Kube, context: str, only: Sequence[str] | None = None) -> Snapshot:
    """Everything the module docstring lists, from `kube` with GET and LIST requests only. Any failure (context,
    connection, permission) is a TargetError of one line naming the context and what failed."""
    what = f"kube context '{context}'"
    try:
        server = str(kube.api.configuration.host)
    except ConformanceError as exc:
        raise TargetError(f"snapshot: {what}: {_cause(exc)}") from exc
    try:
        kube.resource("v1", "Namespace")  # discovery: the first request, so an unreachable server is said so
    except ConformanceError as exc:
        raise TargetError(f"snapshot: {what}: the API server at {server} did not answer: {_cause(exc)}") from exc
    snap = Snapshot(context, server, [])
    where = f"{what} ({server})"
    try:
        istiod = _istiod_namespaces(kube, snap)
        namespaces = _namespaces(kube, snap, only, istiod)
        _mesh_config(kube, snap, istiod)
        for ns in namespaces:
            _workloads(kube, snap, ns)
        _policies(kube, snap, [snap.root_namespace, *(n for n in snap.namespaces if n != snap.root_namespace)])
    except ConformanceError as exc:
        hint = ""
        if "forbidden" in str(exc).lower() and only is None:
            hint = " (an identity limited to some namespaces: name them with --namespace)"
        raise TargetError(f"snapshot: {where}: {_cause(exc)}{hint}") from exc
    return snap


def _istiod_namespaces(kube: Kube, snap: Snapshot) -> dict[str, list[str]]:
    """Where istiod runs, each namespace with its revisions (their mesh ConfigMaps): istio-system when none is
    found, or when listing Deployments across namespaces is not allowed (then said in the header)."""
    found: dict[str, list[str]] = {}
    try:
        for d in kube.list("apps/v1", "Deployment", None, ISTIOD_SELECTOR):
            meta = _map(d.get("metadata"))
            rev = str(_map(meta.get("labels")).get("istio.io/rev") or "default")
            found.setdefault(str(meta.get("namespace") or ISTIO_NAMESPACE), []).append(rev)
    except ConformanceError as exc:
        snap.notes.append(f"istiod not looked for across namespaces ({_cause(exc)}): assumed in {ISTIO_NAMESPACE}")
    return found or {ISTIO_NAMESPACE: ["default"]}


def _namespaces(kube: Kube, snap: Snapshot, only: Sequence[str] | None,
                istiod: Mapping[str, Sequence[str]]) -> list[str]:
    """The namespaces read: `only` as given (each must exist), else every one but Kubernetes' and Istio's own
    (recorded in `snap.skipped`). Their Namespace objects are written, for their data-plane labels."""
    if only:
        found = []
        for name in dict.fromkeys(only):
            obj = kube.get("v1", "Namespace", name)
            if obj is None:
                raise TargetError(f"namespace '{name}' not found (--namespace)")
            found.append(obj)
    else:
        found = []
        istio_own = {ISTIO_NAMESPACE, *istiod}
        for obj in kube.list("v1", "Namespace"):
            name = str(_map(obj.get("metadata")).get("name") or "")
            if name in SYSTEM_NAMESPACES:
                snap.skipped.append(f"{name} ({SYSTEM_NAMESPACES[name]})")
            elif name in istio_own:
                snap.skipped.append(f"{name} (Istio's own" + (": istiod runs there)" if name in istiod else ")"))
            else:
                found.append(obj)
    for obj in found:
        doc = clean(obj, "v1", "Namespace")
        snap.namespaces.append(str(doc["metadata"]["name"]))
        snap.documents.append(doc)
    return list(snap.namespaces)


def _mesh_config(kube: Kube, snap: Snapshot, istiod: Mapping[str, Sequence[str]]) -> None:
    """The mesh root namespace and trust domain from istiod's mesh ConfigMap (`istio`, else `istio-<rev>`); not
    readable: Istio's defaults, said in the header."""
    for ns, revisions in sorted(istiod.items(), key=lambda kv: kv[0] != ISTIO_NAMESPACE):
        names = [MESH_CONFIGMAP, *(f"{MESH_CONFIGMAP}-{r}" for r in revisions if r != "default")]
        for name in names:
            try:
                cm = kube.get("v1", "ConfigMap", name, ns)
            except ConformanceError as exc:
                snap.notes.append(f"mesh config {ns}/{name} not read ({_cause(exc)}): Istio's defaults assumed "
                                  f"(root namespace {ISTIO_NAMESPACE}, trust domain {DEFAULT_TRUST_DOMAIN})")
                return
            if cm is None:
                continue
            try:
                mesh = yaml.safe_load(str(_map(cm.get("data")).get("mesh") or "")) or {}
            except yaml.YAMLError:
                mesh = {}
            mesh = _map(mesh)
            snap.root_namespace = str(mesh.get("rootNamespace") or ISTIO_NAMESPACE)
            snap.trust_domain = str(mesh.get("trustDomain") or DEFAULT_TRUST_DOMAIN)
            snap.notes.append(f"mesh config {ns}/{name}: root namespace {snap.root_namespace}, trust domain "
                              f"{snap.trust_domain}")
            return
    snap.notes.append(f"no mesh config ConfigMap found: Istio's defaults assumed (root namespace {ISTIO_NAMESPACE})")


def _workloads(kube: Kube, snap: Snapshot, ns: str) -> None:
    """One namespace's pod owners (and bare Pods), then its Services oldest first (istiod gives a target port the
    oldest Service's protocol, and the derivation takes the first: manifests._service)."""
    accounts = {str(_map(sa.get("metadata")).get("name")) for sa in kube.list("v1", "ServiceAccount", ns)}
    for api_version, kind in WORKLOAD_KINDS:
        for obj in kube.list(api_version, kind, ns):
            meta = _map(obj.get("metadata"))
            if kind == "Pod" and meta.get("ownerReferences"):
                continue  # its owner (a ReplicaSet's Deployment, a Job...) is the workload
            template = obj if kind == "Pod" else _map(_map(obj.get("spec")).get("template"))
            labels = _map(_map(template.get("metadata")).get("labels"))
            made_by = next((k for k, values in GATEWAY_LABELS.items()
                            if k in labels and (values is None or labels[k] in values)), None)
            if made_by is not None:
                snap.notes.append(f"{kind} {ns}/{meta.get('name')} left out: an Istio gateway or waypoint "
                                  f"({made_by}={labels[made_by]}), not an application workload")
                continue
            spec = _map(template.get("spec"))
            sa = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
            if sa not in accounts:
                snap.notes.append(f"{kind} {ns}/{meta.get('name')}: its ServiceAccount {ns}/{sa} does not exist "
                                  "(its pods cannot start)")
            snap.documents.append(clean(obj, api_version, kind))
    services = kube.list("v1", "Service", ns)
    services.sort(key=lambda s: (str(_map(s.get("metadata")).get("creationTimestamp") or ""),
                                 str(_map(s.get("metadata")).get("name"))))
    snap.documents.extend(clean(s, "v1", "Service") for s in services)


def _policies(kube: Kube, snap: Snapshot, namespaces: Sequence[str]) -> None:
    """Each security kind at the first version the cluster serves (v1, else v1beta1), in every namespace read and
    the root namespace; a kind served at neither version is named in the header (no policy of it can exist)."""
    for kind in POLICY_KINDS:
        served = None
        for api_version in POLICY_VERSIONS:
            try:
                kube.resource(api_version, kind)
            except ConformanceError:
                continue
            served = api_version
            break
        if served is None:
            snap.notes.append(f"{kind}: not served by this cluster (security.istio.io/v1 or v1beta1): none read")
            continue
        if served != POLICY_VERSIONS[0]:
            snap.notes.append(f"{kind}: {POLICY_VERSIONS[0]} not served, read as {served}")
        for ns in namespaces:
            snap.documents.extend(clean(p, served, kind) for p in kube.list(served, kind, ns))


def clean(obj: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """`obj` as a repository would hold it: apiVersion and kind set (a LIST's items of built-in types carry neither),
    without what the API server adds (the module docstring lists it; and a Namespace's finalizers and
    `kubernetes.io/metadata.name` label); empty annotations and labels dropped."""
    out: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status") or value is None:
            continue
        out[key] = value
    meta = {k: v for k, v in _map(obj.get("metadata")).items() if k not in SERVER_METADATA and v is not None}
    annotations = {k: v for k, v in _map(meta.get("annotations")).items() if k not in SERVER_ANNOTATIONS}
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    out["metadata"] = meta
    spec = _map(out.get("spec"))
    if kind == "Namespace":
        out.pop("spec", None)  # only `finalizers: [kubernetes]`, which the API server adds
        labels = {k: v for k, v in _map(meta.get("labels")).items() if k != NAMESPACE_NAME_LABEL}
        meta.pop("labels", None)
        if labels:
            meta["labels"] = labels
    elif kind == "Service":
        out["spec"] = {k: v for k, v in spec.items() if k not in SERVICE_ALLOCATED}
    elif kind in POD_TEMPLATES and kind != "Pod":
        template = _map(spec.get("template"))
        tmeta = {k: v for k, v in _map(template.get("metadata")).items() if k not in SERVER_METADATA}
        if template:
            out["spec"] = {**spec, "template": {**template, "metadata": tmeta}}
    return out


def manifests_text(snap: Snapshot) -> str:
    """The objects as one multi-document YAML file, under a comment saying where they came from."""
    head = (f"# Read by `authz-conformance snapshot` from kube context '{snap.context}' (GET/LIST only), server-side "
            "fields stripped.\n"
            f"# Namespaces: {', '.join(snap.namespaces)}; policies also from the mesh root namespace "
            f"{snap.root_namespace}.\n")
    return head + "".join("---\n" + yaml.safe_dump(d, sort_keys=False, default_flow_style=False, width=120)
                          for d in snap.documents)


def manifests_path(out: Path) -> Path:
    """`gate.yaml` -> `gate.manifests.yaml`, beside it."""
    return out.with_name(f"{out.stem}.manifests.yaml")


def write(snap: Snapshot, out: Path | None, modes: Sequence[Mode] | None, version: IstioVersion,
          name: str | None = None, command: str | None = None) -> str:
    """The scenario's text for `snap` (init.write_scenario): with `out`, the manifests are written to
    `manifests_path(out)` first and referred to; without, inline. A failure leaves no manifests file behind."""
    from conformance.init import write_scenario

    if snap.workloads == 0:
        raise UsageError(f"snapshot: kube context '{snap.context}': no workload (Deployment, StatefulSet, DaemonSet "
                         f"or bare Pod) in {', '.join(snap.namespaces) or 'any namespace read'}")
    command = command or f"authz-conformance snapshot --kube-context {shlex.quote(snap.context)}"
    notes = [f"Read from kube context '{snap.context}' ({snap.server}): namespaces {', '.join(snap.namespaces)}; "
             f"policies also from the mesh root namespace {snap.root_namespace}."]
    if snap.skipped:
        notes.append(f"Namespaces skipped: {', '.join(snap.skipped)}.")
    if snap.notes:
        notes += ["What the snapshot noticed:", *(f"  - {n}" for n in snap.notes)]
    text = manifests_text(snap)
    default_name = name or f"snapshot-{snap.context}"
    if out is None:
        return write_scenario(["-"], modes, version, None, default_name, text, written_by=command, notes=notes,
                              mesh=snap.mesh())
    target = manifests_path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    existed = target.exists()
    target.write_text(text, encoding="utf-8")
    try:
        return write_scenario([str(target)], modes, version, out, name, written_by=command,
                              notes=[*notes, f"The objects read are in {target.name} (workloadsFrom, policies)."],
                              mesh=snap.mesh())
    except BaseException:
        if not existed:
            target.unlink(missing_ok=True)
        raise


def snapshot(context: str, kubeconfig: str | None, namespaces: Sequence[str] | None, out: Path | None,
             modes: Sequence[Mode] | None, version: IstioVersion, name: str | None = None) -> tuple[str, Snapshot]:
    """`authz-conformance snapshot`: read the cluster (`read`), then the scenario's text (`write`)."""
    from conformance.mesh.cluster.kube import Kube

    kube = Kube(kubeconfig, context)
    try:
        snap = read(kube, context, namespaces)
    finally:
        kube.close()
    parts = ["authz-conformance", "snapshot", "--kube-context", context]
    for ns in namespaces or ():
        parts += ["--namespace", ns]
    return write(snap, out, modes, version, name, " ".join(shlex.quote(p) for p in parts)), snap


def _cause(exc: BaseException) -> str:
    """One line of why: the TargetError's own text, with a connection error's object repr left out
    (`<urllib3.connection.HTTPConnection object at 0x..>: Failed to establish...` -> `Failed to establish...`)."""
    text = " ".join(str(exc).split())
    if "Max retries exceeded" in text or "NewConnectionError" in text:
        inner = exc.__cause__
        reason = getattr(inner, "reason", None)
        if reason is not None:
            text = str(reason)
        text = text.split(">: ", 1)[-1].rstrip("')\"")
        text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def _map(value: object) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}
