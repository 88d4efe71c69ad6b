"""The kind target without Docker: the exact command lines pytest-kind runs for us (a fake `kind` on
disk records them), the cluster naming, reuse rules, and teardown (also when creation is interrupted)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conformance.errors import TargetError, TargetUnavailable
from conformance.mesh.cluster import istioctl
from conformance.mesh.cluster.istioctl import Kubeconfig
from conformance.mesh.cluster.kind import KindTarget, cluster_name, istiod_version
from conformance.mesh.cluster.matrix import load
from conformance.mesh.cluster.options import ClusterSettings

M = load()
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: kind-x, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: kind-x, user: {token: t}}]
contexts: [{name: kind-x, context: {cluster: kind-x, user: kind-x}}]
current-context: kind-x
"""


def fake_kind(tmp_path: Path) -> tuple[Path, Path]:
    """A `kind` that logs its argv (JSON per line) and writes a kubeconfig where it is asked to."""
    log = tmp_path / "kind.log"
    kind = tmp_path / "kind"
    kind.write_text(f"""#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
open({str(log)!r}, "a").write(json.dumps(args) + "\\n")
for a in args:
    if a.startswith("--kubeconfig="):
        open(a.split("=", 1)[1], "w").write({KUBECONFIG!r})
""")
    kind.chmod(0o755)
    return kind, log


def test_cluster_names():
    assert cluster_name(None, "ambient", "1.30.3") == "authz-ambient-1-30-3"
    assert cluster_name("ci", "waypoint", "1.29.6") == "ci-waypoint-1-29-6"
    with pytest.raises(TargetUnavailable):
        cluster_name("x" * 60, "sidecar", "1.30.3")


def test_istiod_version_from_image():
    def dep(image: str) -> dict:
        return {"spec": {"template": {"spec": {"containers": [{"name": "discovery", "image": image}]}}}}

    assert istiod_version(dep("docker.io/istio/pilot:1.30.3")) == "1.30.3"
    assert istiod_version(dep("gcr.io/istio-release/pilot:1.29.6-distroless")) == "1.29.6"
    assert istiod_version(dep("registry/pilot:1.30.3@sha256:abc")) == "1.30.3"
    assert istiod_version(dep("nginx:1")) is None and istiod_version(None) is None


def test_what_pytest_kind_is_given(tmp_path):
    target = KindTarget(ClusterSettings("1.30", pytest_kind_options=True, kind_bin=str(tmp_path / "kind")))
    target._kind = str(tmp_path / "kind")
    args = target.kind_cluster_args("ambient")
    assert args == {"name": "authz-ambient-1-30-5",  # 1.30: the newest pinned 1.30 patch
                    "kubeconfig": Path(".pytest-kind/authz-ambient-1-30-5/kubeconfig"),
                    "image": M.node_image, "kind_path": tmp_path / "kind", "config_file": M.kind_config}
    own = KindTarget(ClusterSettings("1.29", cluster_name="ci", kubeconfig="/tmp/k", kind_image="img@sha256:1",
                                     kind_config=Path("/tmp/c.yaml")))
    assert own.kind_cluster_args("sidecar") == {"name": "ci-sidecar-1-29-6", "kubeconfig": Path("/tmp/k"),
                                                "image": "img@sha256:1", "kind_path": None,
                                                "config_file": Path("/tmp/c.yaml")}


def test_pytest_kind_command_lines_with_a_fake_kind(tmp_path, monkeypatch):
    pytest.importorskip("pytest_kind")
    kind, log = fake_kind(tmp_path)
    monkeypatch.chdir(tmp_path)  # pytest-kind makes ./.pytest-kind/<name>/
    kubeconfig = tmp_path / "kc"
    target = KindTarget(ClusterSettings("1.30", pytest_kind_options=True, kind_bin=str(kind),
                                        kubeconfig=str(kubeconfig)))
    target._kind = str(kind)
    installed: list[str] = []
    monkeypatch.setattr(target, "_install_istio", lambda cluster, mode, *_: installed.append(cluster.name))
    cluster = target._cluster("sidecar")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    name = "authz-sidecar-1-30-5"
    assert calls[0] == ["get", "clusters"]
    assert calls[1] == ["create", "cluster", f"--name={name}", f"--kubeconfig={kubeconfig}",
                        f"--image={M.node_image}", "--config", str(M.kind_config)]
    assert calls[2] == ["export", "kubeconfig", "--name", name, "--kubeconfig", str(kubeconfig)]
    assert installed == [name] and cluster.context == f"kind-{name}"
    assert not any("download" in " ".join(c) for c in calls)
    # sessions read a private copy, never the file kind rewrites when it makes another mode's cluster
    private = cluster.session_kubeconfig
    assert private is not None and private != kubeconfig and cluster.sessions_read == private
    assert private.read_bytes() == kubeconfig.read_bytes()
    target.close()
    assert not private.exists()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[-1] == ["delete", "cluster", f"--name={name}", f"--kubeconfig={kubeconfig}"]


def test_kept_clusters_are_not_deleted_and_interrupted_creation_is(tmp_path, monkeypatch):
    pytest.importorskip("pytest_kind")
    kind, log = fake_kind(tmp_path)
    monkeypatch.chdir(tmp_path)
    kept = KindTarget(ClusterSettings("1.30", pytest_kind_options=True, keep_cluster=True, kind_bin=str(kind)))
    kept._kind = str(kind)
    monkeypatch.setattr(kept, "_install_istio", lambda cluster, mode, *_: None)
    kept._cluster("ambient")
    kept.close()
    assert not any(json.loads(line)[0] == "delete" for line in log.read_text().splitlines())

    broken = KindTarget(ClusterSettings("1.30", pytest_kind_options=True, kind_bin=str(kind)))
    broken._kind = str(kind)

    def interrupted(cluster, mode, *_):
        raise KeyboardInterrupt

    monkeypatch.setattr(broken, "_install_istio", interrupted)
    with pytest.raises(KeyboardInterrupt):
        broken._cluster("ambient")
    broken.close()
    assert json.loads(log.read_text().splitlines()[-1])[:2] == ["delete", "cluster"]


def test_istioctl_command_lines():
    kc = Kubeconfig("/k", "kind-x")
    overlay = M.modes["ambient"].overlay
    assert istioctl.install_argv("istioctl", kc, "ambient", overlay) == [
        "istioctl", "install", "-y", "--kubeconfig", "/k", "--context", "kind-x", "-f", str(overlay),
        "--set", "profile=ambient", "--readiness-timeout", "300s"]
    assert istioctl.install_argv("i", Kubeconfig(None, None), "default", overlay, revision="1-30-3")[-2:] == [
        "--set", "revision=1-30-3"]
    assert istioctl.analyze_argv("i", kc, "ns") == ["i", "analyze", "--kubeconfig", "/k", "--context", "kind-x",
                                                    "-n", "ns", "-o", "json"]
    assert istioctl.ztunnel_policies_argv("i", kc, "ztunnel-abc") == [
        "i", "ztunnel-config", "policies", "ztunnel-abc.istio-system", "-o", "json", "--kubeconfig", "/k",
        "--context", "kind-x"]
    assert istioctl.ztunnel_policies_argv("i", kc, "ztunnel-abc", "kube-system")[3] == "ztunnel-abc.kube-system"
    assert istioctl.tag_set_argv("i", kc, "1-30-3") == ["i", "tag", "set", "default", "--revision", "1-30-3",
                                                        "--overwrite", "-y", "--kubeconfig", "/k", "--context",
                                                        "kind-x"]
    assert istioctl.uninstall_revision_argv("i", kc, "default")[:5] == ["i", "uninstall", "--revision", "default",
                                                                         "-y"]


def test_istioctl_output_parsing():
    msgs = istioctl.parse_analyze(json.dumps([
        {"code": "IST0102", "level": "Info", "message": "The namespace is not enabled for Istio injection.",
         "origin": "Namespace x"},
        {"code": "IST0101", "level": "Error", "message": "Referenced selector not found",
         "origin": "AuthorizationPolicy a/b"},
    ]))
    assert [m.level for m in msgs] == ["Info", "Error"]
    assert str(msgs[1]) == "Error [IST0101] (AuthorizationPolicy a/b): Referenced selector not found"
    assert istioctl.parse_analyze("") == []
    with pytest.raises(TargetError):
        istioctl.parse_analyze("✔ No validation issues found")


def test_run_reports_failures_and_timeouts(tmp_path):
    assert istioctl.run(["sh", "-c", "echo hi"], timeout=10).stdout == "hi\n"
    assert istioctl.run(["sh", "-c", "exit 79"], timeout=10, ok=(0, 79)).returncode == 79
    with pytest.raises(TargetError, match=r"exited 3: .*boom"):
        istioctl.run(["sh", "-c", "echo boom >&2; exit 3"], timeout=10)
    with pytest.raises(TargetError, match="did not finish within"):
        istioctl.run(["sleep", "5"], timeout=0.2)
    with pytest.raises(TargetError, match="cannot be run"):
        istioctl.run([str(tmp_path / "missing")], timeout=1)


class RecordingKube:
    """What `apply_crds` and the CRD wait are given (no API server: the documents are what matters)."""

    def __init__(self) -> None:
        self.applied: list[dict] = []
        self.waited: list[str] = []

    def apply(self, doc: dict) -> dict:
        self.applied.append(doc)
        return doc

    def invalidate(self) -> None:
        pass

    def wait_crds_established(self, names, timeout: float) -> float:
        self.waited = list(names)
        return 0.0


def test_gateway_api_crds_come_from_the_vendored_pinned_copy(tmp_path, monkeypatch):
    """The waypoint mode's Gateway API CRDs: the vendored file of the release Istio was built with (v1.5.1 for
    1.30, v1.4.1 for 1.29), sha256 checked, nothing downloaded; `--gateway-api-crds` still overrides it."""
    import urllib.request

    from conformance.mesh.cluster.kind import KindCluster

    def no_network(*args, **kwargs):
        raise AssertionError("the Gateway API CRDs must not be downloaded")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    for version, gateway_api in (("1.30", "v1.5.1"), ("1.29", "v1.4.1")):
        target = KindTarget(ClusterSettings(version))
        kube = RecordingKube()
        target._install_gateway_api(KindCluster("c", tmp_path / "kc", None, kube))  # type: ignore[arg-type]
        assert "gateways.gateway.networking.k8s.io" in kube.waited
        assert "httproutes.gateway.networking.k8s.io" in kube.waited
        assert {d["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
                for d in kube.applied if d["kind"] == "CustomResourceDefinition"} == {gateway_api}
    own = tmp_path / "crds.yaml"
    own.write_text("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: x.y}\n")
    assert KindTarget(ClusterSettings("1.30", gateway_api_crds=own)).gateway_api_crds() == own.read_text()


def test_scenarios_starting_side_by_side_create_the_modes_cluster_once(tmp_path, monkeypatch):
    """The scheduler starts scenarios from worker threads (schedule.py): the first creates the mode's
    cluster, the others wait for it; a creation that failed is not retried by every scenario after it."""
    pytest.importorskip("pytest_kind")
    kind, log = fake_kind(tmp_path)
    monkeypatch.chdir(tmp_path)
    target = KindTarget(ClusterSettings("1.30.3", pytest_kind_options=True, kind_bin=str(kind)))
    target._kind = str(kind)
    monkeypatch.setattr(target, "_install_istio", lambda cluster, mode, *_: setattr(cluster, "istio_ready", True))
    with ThreadPoolExecutor(4) as pool:
        clusters = list(pool.map(lambda _: target._cluster("sidecar"), range(4)))
    assert len({id(c) for c in clusters}) == 1
    creates = [c for c in map(json.loads, log.read_text().splitlines()) if c[:2] == ["create", "cluster"]]
    assert len(creates) == 1
    target.close()

    broken = KindTarget(ClusterSettings("1.30.3", pytest_kind_options=True, kind_bin=str(kind)))
    broken._kind = str(kind)

    def fails(cluster, mode, *_):
        raise TargetError("istiod did not roll out")

    monkeypatch.setattr(broken, "_install_istio", fails)
    before = len(log.read_text().splitlines())
    with pytest.raises(TargetError, match="istiod did not roll out"):
        broken._cluster("ambient")
    with pytest.raises(TargetError, match="failed to come up earlier in this run"):
        broken._cluster("ambient")
    creates = [c for c in map(json.loads, log.read_text().splitlines()[before:]) if c[:2] == ["create", "cluster"]]
    assert len(creates) == 1
    broken.close()


def test_the_sigterm_handler_is_installed_on_the_main_thread_when_the_target_is_available(monkeypatch):
    """signal.signal only works on the main thread; clusters are created from worker threads, so the hook
    goes in when `unavailable()` (asked on the main thread before anything starts) says yes."""
    import signal

    target = KindTarget(ClusterSettings("1.30.3"))
    monkeypatch.setattr(target, "_check", lambda mode: None)
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)
    installed: list[int] = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.append(sig))
    monkeypatch.setattr("atexit.register", lambda fn: None)
    assert target.unavailable("sidecar") is None
    assert installed == [signal.SIGTERM]
    refused = KindTarget(ClusterSettings("1.30.3"))
    monkeypatch.setattr(refused, "_check", lambda mode: "no Docker")
    installed.clear()
    assert refused.unavailable("sidecar") == "no Docker" and installed == []
