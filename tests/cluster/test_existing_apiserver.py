"""The existing-cluster target over the real `kubernetes` client and the test API server (apiserver.py):
it detects the installed Istio from what a cluster serves, runs a session, and its `close` (the plugin's
end of run, or `atexit` after a Ctrl-C that skipped the teardown) removes what a session left open, the
root-namespace policies included: on someone's cluster nothing of a run may outlive it."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conformance.errors import TargetError
from conformance.mesh.cluster.existing import ExistingClusterTarget, detect
from conformance.mesh.cluster.kube import Kube
from conformance.mesh.cluster.meshconfig import MeshConfigAccess
from conformance.mesh.cluster.options import ClusterSettings
from conformance.mesh.cluster.session import BarrierWarning, IstioAnalyzeWarning
from conformance.scenario import load
from conformance.versions import IstioVersion
from tests.cluster.test_session_apiserver import ROOT_NAMESPACE, World, good, mesh_deny_all
from tests.cluster.test_session_jwt_custom_apiserver import MESH, MeshWorld, PretendIstiod, mesh_of, providers_of
from tests.cluster.test_session_jwt_custom_apiserver import SCENARIO as JWT_CUSTOM

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


def test_a_scenario_with_extension_providers_needs_allow_mesh_config_update_and_nothing_is_written(cluster):
    """Issue 11 on clusters: a scenario whose CUSTOM policies need meshConfig.extensionProviders would change
    istiod's mesh config on someone's cluster: refused (a skip naming the option and the ConfigMap) before
    anything is applied, unless --allow-mesh-config-update."""
    from conformance.errors import TargetUnavailable

    world, settings = cluster
    target = ExistingClusterTarget(settings)
    for path in (JWT_CUSTOM, ROOT / "tests" / "data" / "jwt" / "jwt-custom.yaml"):
        with pytest.raises(TargetUnavailable, match=r"extensionProviders .*ConfigMap istio-system/istio.*"
                                                    r"--allow-mesh-config-update"):
            target.start(load(path, V130), "sidecar")
    assert not world.api.made("PATCH") and not world.api.made("PUT")
    assert not [k for k in world.api.objects if k[1].startswith("azex")]
    target.kube.close()


def mesh_cluster(tmp_path: Path, revisions: tuple[str, ...], tag: str | None,
                 allow_mesh_config_update: bool) -> tuple[MeshWorld, ClusterSettings]:
    """A cluster with istiods of `revisions` (each with its mesh ConfigMap and a pretend /debug/mesh), the default
    revision tag pointing at `tag` when given."""
    world = MeshWorld(tmp_path)
    api = world.api.start()
    pods = {api.install_istiod(rev, mesh=MESH)["metadata"]["name"]: "istio" if rev == "default" else f"istio-{rev}"
            for rev in revisions}
    if tag is not None:  # istioctl tag set default --revision <tag>
        api.put({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                 "metadata": {"name": "istio-revision-tag-default",
                              "labels": {"istio.io/rev": tag, "istio.io/tag": "default"}}})
    world.istiod = PretendIstiod(api, pods)
    api.proxy_handler = world.istiod
    istioctl = tmp_path / "istioctl"
    istioctl.write_text(FAKE_ISTIOCTL)
    istioctl.chmod(0o755)
    return world, ClusterSettings("1.30.3", istioctl=str(istioctl), kubeconfig=str(api.kubeconfig(tmp_path)),
                                  kube_context="fake", namespace_prefix="azex",
                                  allow_mesh_config_update=allow_mesh_config_update)


def test_a_jwt_scenario_without_providers_runs_without_the_opt_in(tmp_path):
    """JWT needs nothing of the mesh config: the RequestAuthentication is applied with the run's JWKS and the
    barrier sees its issuer in the sidecar; the mesh config is neither writable nor written."""
    world, settings = mesh_cluster(tmp_path, ("default",), None, allow_mesh_config_update=False)
    target = ExistingClusterTarget(settings)
    try:
        scenario = load(ROOT / "policies" / "jwt-authz-task.yaml", V130)
        session = target.start(scenario, "sidecar")
        assert session.ctx.mesh_config is None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IstioAnalyzeWarning)
            warnings.simplefilter("error", BarrierWarning)
            session.apply(scenario.steps[0].policies)
        assert session.barriers[-1].reached
        ra = world.api.objects[("RequestAuthentication", "azex1-foo", "jwt-example")]
        assert json.loads(ra["spec"]["jwtRules"][0]["jwks"])["keys"]
        target.close()
        assert not world.api.made("PUT") and mesh_of(world.api) == yaml.safe_load(MESH)
        assert not [k for k in world.api.objects if k[1].startswith("azex")]
    finally:
        target.close()
        world.api.stop()
        world.close()


@pytest.mark.parametrize(("revisions", "tag", "configmap", "revision"), [
    (("default",), None, "istio", "default"),
    # a canary upgrade's state: the default tag moved to the canary revision, the old istiod still running
    (("default", "canary"), "canary", "istio-canary", "canary"),
])
def test_with_allow_mesh_config_update_the_providers_go_into_the_mesh_configmap_of_the_revision_in_use(
        tmp_path, revisions, tag, configmap, revision):
    world, settings = mesh_cluster(tmp_path, revisions, tag, allow_mesh_config_update=True)
    api = world.api
    target = ExistingClusterTarget(settings)
    try:
        session = target.start(load(JWT_CUSTOM, V130), "sidecar")
        assert session.ctx.mesh_config == MeshConfigAccess(ROOT_NAMESPACE, (configmap,),
                                                           f"app=istiod,istio.io/rev={revision}")
        assert {"azex1-ext-authz-http", "azex1-ext-authz-qualified"} <= set(providers_of(api, configmap))
        assert providers_of(api, configmap)["azex1-ext-authz-http"]["envoyExtAuthzHttp"]["service"] == \
            "ext-authz.azex1-ext-authz.svc.cluster.local"
        (put,) = api.made("PUT")
        assert put.path == f"/api/v1/namespaces/{ROOT_NAMESPACE}/configmaps/{configmap}"
        asked = {r.path.split("/pods/")[1].split(":")[0] for r in api.made("GET", "/proxy/debug/mesh")}
        assert asked == {n for n, cm in world.istiod.pods.items() if cm == configmap}  # only the revision's istiod
        target.close()  # the end of the run (or atexit): the providers out again
        assert session.closed
        for name in {"istio", configmap}:
            assert mesh_of(api, name) == yaml.safe_load(MESH)
        assert not [k for k in api.objects if k[1].startswith("azex")]
    finally:
        target.close()
        api.stop()
        world.close()
