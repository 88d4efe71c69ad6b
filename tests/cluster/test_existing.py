"""The existing-cluster target: what it detects about the installed Istio, and when it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.errors import TargetUnavailable
from conformance.mesh.cluster.existing import ExistingClusterTarget, detect
from conformance.mesh.cluster.options import ClusterSettings


def istiod(image: str, rev: str | None = None) -> dict[str, Any]:
    labels = {"app": "istiod", **({"istio.io/rev": rev} if rev else {})}
    return {"metadata": {"labels": labels}, "spec": {"template": {"spec": {"containers": [{"image": image}]}}}}


class Kube:
    def __init__(self, istiods: list, ztunnel: bool = False, gateway: bool = False, tag_rev: str | None = None,
                 mesh: str = ""):
        self.istiods, self.ztunnel, self.gateway, self.tag_rev, self.mesh = istiods, ztunnel, gateway, tag_rev, mesh

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None):
        if kind == "Deployment":
            return self.istiods
        if kind == "DaemonSet":  # labelled as Istio's ztunnel chart labels it (daemonset.yaml: no `app` label)
            ds = {"metadata": {"name": "ztunnel", "labels": {"app.kubernetes.io/name": "ztunnel"}}}
            key, _, value = (label_selector or "").partition("=")
            return [ds] if self.ztunnel and ds["metadata"]["labels"].get(key) == value else []
        return []

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None):
        if kind == "MutatingWebhookConfiguration":
            return {"metadata": {"labels": {"istio.io/rev": self.tag_rev}}} if self.tag_rev else None
        if kind in ("CustomResourceDefinition", "GatewayClass"):
            return {} if self.gateway else None
        if kind == "ConfigMap":
            return {"data": {"mesh": self.mesh}}
        return None


def test_no_istio_is_a_clear_refusal():
    with pytest.raises(TargetUnavailable, match="no Istio control plane"):
        detect(Kube([]))


def test_detects_version_modes_and_mesh_settings():
    found = detect(Kube([istiod("docker.io/istio/pilot:1.30.3")], ztunnel=True, gateway=True,
                        mesh="trustDomain: corp.example\nrootNamespace: istio-config\n"))
    assert (found.version, found.revision, found.default_injection) == ("1.30.3", "default", True)
    assert found.modes() == ("sidecar", "ambient", "waypoint", "mixed")  # mixed: sidecars and ztunnel on one install
    assert (found.trust_domain, found.root_namespace) == ("corp.example", "istio-config")
    sidecar_only = detect(Kube([istiod("docker.io/istio/pilot:1.29.6")]))
    assert sidecar_only.modes() == ("sidecar",) and sidecar_only.trust_domain == "cluster.local"


def test_after_a_canary_upgrade_the_default_tag_decides():
    kube = Kube([istiod("docker.io/istio/pilot:1.29.6"), istiod("docker.io/istio/pilot:1.30.3", "1-30-3")],
                ztunnel=True, tag_rev="1-30-3")
    found = detect(kube)
    assert (found.version, found.revision, found.default_injection) == ("1.30.3", "1-30-3", True)
    revision_only = detect(Kube([istiod("docker.io/istio/pilot:1.30.3", "1-30-3")]))
    assert revision_only.default_injection is False  # namespaces join with istio.io/rev=1-30-3


def target(kube: Kube, version: str = "1.30", tmp_path=None) -> ExistingClusterTarget:
    t = ExistingClusterTarget(ClusterSettings(version, kube_context="ctx", istioctl="/bin/sh"), kube=kube)  # type: ignore[arg-type]
    t._env = {"PATH": ""}
    return t


def test_unavailable_reasons():
    pytest.importorskip("kubernetes")
    kube = Kube([istiod("docker.io/istio/pilot:1.30.5")])
    t = target(kube)
    assert t.unavailable("sidecar") is None
    assert "cannot run the ambient mode: no ztunnel DaemonSet" in t.unavailable("ambient")
    assert "waypoints need ambient" in t.unavailable("waypoint")
    other = target(kube, "1.29")
    assert "runs Istio 1.30.5 but --istio-version is 1.29.6" in other.unavailable("sidecar")
    missing = target(Kube([]))
    assert "no Istio control plane" in missing.unavailable("sidecar")
