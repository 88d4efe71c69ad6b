"""The existing-cluster target over the real `kubernetes` client and the test API server (apiserver.py):
it detects the installed Istio from what a cluster serves, runs a session, and its `close` (the plugin's
end of run, or `atexit` after a Ctrl-C that skipped the teardown) removes what a session left open, the
root-namespace policies included: on someone's cluster nothing of a run may outlive it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.errors import TargetError
from conformance.mesh.cluster.existing import ExistingClusterTarget, detect
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.options import ClusterSettings
from conformance.mesh.cluster.session import IstioAnalyzeWarning
from conformance.scenario import load
from conformance.versions import IstioVersion
from tests.cluster.test_session_apiserver import ROOT_NAMESPACE, World, good, mesh_deny_all

pytest.importorskip("kubernetes")
ROOT = Path(__file__).resolve().parents[2]
V130 = IstioVersion.parse("1.30.3")

FAKE_ISTIOCTL = """#!/bin/sh
# analyze: no findings (JSON); nothing else is asked of istioctl in sidecar mode
echo '[]'
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[World, ClusterSettings]]:
    world = World(tmp_path, "sidecar")
    api = world.api.start()
    api.put({"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "istiod", "namespace": ROOT_NAMESPACE, "labels": {"app": "istiod"}},
             "spec": {"template": {"spec": {"containers": [{"name": "discovery",
                                                            "image": "docker.io/istio/pilot:1.30.3"}]}}}})
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": ROOT_NAMESPACE},
             "data": {"mesh": "trustDomain: cluster.local\nrootNamespace: istio-system\n"}})
    istioctl = tmp_path / "istioctl"
    istioctl.write_text(FAKE_ISTIOCTL)
    istioctl.chmod(0o755)
    settings = ClusterSettings("1.30.3", istioctl=str(istioctl), kubeconfig=str(api.kubeconfig(tmp_path)),
                               kube_context="fake", allow_mesh_wide=True, namespace_prefix="azex")
    yield world, settings
    api.stop()
    world.close()


def test_detect_reads_the_installed_istio_over_the_api(cluster):
    world, settings = cluster
    kube = Kube(settings.kubeconfig, settings.kube_context)
    try:
        found = detect(kube)
    finally:
        kube.close()
    assert (found.version, found.revision, found.default_injection, found.modes()) == (
        "1.30.3", "default", True, ("sidecar",))
    paths = [r.path for r in world.api.made("GET")]
    assert "/apis/apps/v1/namespaces/istio-system/deployments" in paths
    assert "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-revision-tag-default" in paths
    assert "/api/v1/namespaces/istio-system/configmaps/istio" in paths


def test_the_targets_close_removes_what_an_open_session_applied_in_the_root_namespace(cluster):
    world, settings = cluster
    target = ExistingClusterTarget(settings)
    assert target.unavailable("sidecar") is None
    assert "no ztunnel DaemonSet" in (target.unavailable("ambient") or "")
    scenario = good()
    session = target.start(scenario, "sidecar")  # never closed by its owner: a Ctrl-C skipped the teardown
    assert session.nsmap.prefix == "azex1-"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        session.apply((mesh_deny_all(),))
    assert world.api.policies({ROOT_NAMESPACE})
    target.close()
    assert session.closed and world.api.policies() == []
    assert not [k for k in world.api.objects if k[1].startswith("azex")]


def test_the_target_refuses_a_root_policy_without_allow_mesh_wide(cluster):
    from dataclasses import replace

    from conformance.model import Step

    world, settings = cluster
    target = ExistingClusterTarget(replace(settings, allow_mesh_wide=False))
    scenario = good()
    scenario = replace(scenario, steps=(*scenario.steps, Step("mesh", (mesh_deny_all(),), ())))
    with pytest.raises(TargetError, match="--allow-mesh-wide"):
        target.start(scenario, "sidecar")
    assert not world.api.made("PATCH")  # refused before anything was applied
    target.kube.close()


def test_detect_finds_ztunnel_by_the_labels_istios_chart_gives_its_daemonset(cluster):
    """The ztunnel DaemonSet carries `app.kubernetes.io/name: ztunnel` and the chart's istio.labels, never
    `app: ztunnel` (only its pods do): istio/istio@1.30.3 manifests/charts/ztunnel/templates/daemonset.yaml.
    Found by review: a selector on `app=ztunnel` saw no ambient mode on any real cluster."""
    world, settings = cluster
    world.api.put({"apiVersion": "apps/v1", "kind": "DaemonSet",
                   "metadata": {"name": "ztunnel", "namespace": ROOT_NAMESPACE,
                                "labels": {"app.kubernetes.io/name": "ztunnel", "app.kubernetes.io/part-of": "istio",
                                           "app.kubernetes.io/managed-by": "Helm"}},
                   "spec": {"selector": {"matchLabels": {"app": "ztunnel"}},
                            "template": {"metadata": {"labels": {"app": "ztunnel"}}}}})
    kube = Kube(settings.kubeconfig, settings.kube_context)
    try:
        found = detect(kube)
    finally:
        kube.close()
    assert "ambient" in found.modes()


def test_jwt_and_custom_scenarios_are_skipped_on_clusters_with_the_reason(cluster):
    """Issue 11: JWT and CUSTOM run on the engine and the local mesh; the cluster targets refuse them before
    anything is applied (a skip naming what is missing), never apply a RequestAuthentication with ${jwks:...}."""
    from conformance.errors import TargetUnavailable

    world, settings = cluster
    target = ExistingClusterTarget(settings)
    scenario = load(ROOT / "tests" / "data" / "jwt" / "jwt-custom.yaml", V130)
    with pytest.raises(TargetUnavailable, match=r"uses JWT .*RequestAuthentication, CUSTOM .*do not run yet"):
        target.start(scenario, "sidecar")
    assert not world.api.made("PATCH")
    target.kube.close()
