"""`Kube` through the real `kubernetes` client (37.0.2), over real HTTP and a real websocket, against the
test API server (apiserver.py): the request shapes the client really sends, and how `Kube` surfaces the
answers. The shapes are those of kubernetes/dynamic/client.py (`server_side_apply`, `delete`, `request`),
kubernetes/client/api/core_v1_api.py (`connect_get_namespaced_pod_exec`, `read_namespaced_pod_log`) and
kubernetes/stream/ws_client.py (`create_websocket` offers `v5.channel.k8s.io,v4.channel.k8s.io`)."""

from __future__ import annotations

import glob
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.errors import TargetError
from conformance.mesh.cluster.kube import FIELD_MANAGER, ExecLost, Kube
from conformance.mesh.cluster.manifests.render import RenderSettings, enrollment_labels, render_workloads
from conformance.mesh.cluster.naming import NamespaceMap
from conformance.scenario import load
from conformance.versions import IstioVersion
from tests.cluster.apiserver import TOKEN, V4, V5, ExecAnswer, FakeApiServer

pytest.importorskip("kubernetes")
ROOT = Path(__file__).resolve().parents[2]


class Execs:
    """The exec handler: answers queued per container, every call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, list[str]]] = []
        self.answers: list[ExecAnswer] = []

    def __call__(self, namespace: str, pod: str, container: str, command: list[str]) -> ExecAnswer:
        self.calls.append((namespace, pod, container, command))
        return self.answers.pop(0)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Kube, Execs]]:
    execs = Execs()
    server = FakeApiServer(exec_handler=execs).start()
    kube = Kube(str(server.kubeconfig(tmp_path)), "fake", request_timeout=10)
    yield server, kube, execs
    kube.close()
    server.stop()


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def test_server_side_apply_is_a_forced_apply_patch_with_our_field_manager(api):
    server, kube, _ = api
    doc = namespace("az1-accounts", {"istio-injection": "enabled"})
    out = kube.apply(doc)
    assert out["metadata"]["name"] == "az1-accounts" and out["metadata"]["managedFields"][0]["manager"] == FIELD_MANAGER
    (patch,) = server.made("PATCH")
    assert patch.path == "/api/v1/namespaces/az1-accounts"
    assert patch.headers["content-type"] == "application/apply-patch+yaml"
    assert (patch.param("fieldManager"), patch.param("force")) == (FIELD_MANAGER, "true")
    assert patch.headers["authorization"] == f"Bearer {TOKEN}"
    assert patch.json() == doc  # JSON is YAML: the client serializes the dict with json.dumps (rest.py)
    # discovery first, as the DynamicClient does it (LazyDiscoverer): /version, /apis, then the group's list
    paths = [r.path for r in server.requests]
    assert paths.index("/apis") < paths.index("/api/v1") < paths.index("/api/v1/namespaces/az1-accounts")

    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "deny-all", "namespace": "az1-accounts"}, "spec": {}}
    kube.apply(policy)
    assert server.made("PATCH")[-1].path == \
        "/apis/security.istio.io/v1/namespaces/az1-accounts/authorizationpolicies/deny-all"
    assert server.objects[("AuthorizationPolicy", "az1-accounts", "deny-all")]["spec"] == {}


def test_apply_takes_over_fields_another_manager_owns_because_it_forces(api):
    from kubernetes.dynamic.exceptions import ConflictError

    server, kube, _ = api
    server.put({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "shared", "managedFields": [{"manager": "kubectl", "operation": "Apply"}]}})
    res = kube.resource("v1", "Namespace")
    with pytest.raises(ConflictError):  # what an unforced apply gets: 409
        kube.dynamic.server_side_apply(res, body=namespace("shared"), field_manager=FIELD_MANAGER,
                                       force_conflicts=False)
    assert server.made("PATCH")[-1].param("force") == "false"
    kube.apply(namespace("shared", {"a": "b"}))
    assert server.objects[("Namespace", "", "shared")]["metadata"]["managedFields"][0]["manager"] == FIELD_MANAGER


def test_a_409_and_a_404_are_surfaced_with_the_servers_message(api):
    server, kube, _ = api
    kube.apply(namespace("az1-accounts"))
    server.fail_next("PATCH", "/deny-all", 409, "Conflict",
                     'Operation cannot be fulfilled on authorizationpolicies "deny-all": the object has been modified')
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "deny-all", "namespace": "az1-accounts"}, "spec": {}}
    with pytest.raises(TargetError, match=r"server-side apply of AuthorizationPolicy az1-accounts/deny-all failed: "
                                          r"Operation cannot be fulfilled .* the object has been modified"):
        kube.apply(policy)
    other = dict(policy, metadata={"name": "x", "namespace": "nowhere"})
    with pytest.raises(TargetError, match='namespaces "nowhere" not found'):
        kube.apply(other)
    assert kube.get("security.istio.io/v1", "AuthorizationPolicy", "deny-all", "az1-accounts") is None  # 404
    assert kube.list("security.istio.io/v1", "AuthorizationPolicy", "az1-accounts") == []
    server.fail_next("GET", "/namespaces/az1-accounts", 500, "InternalError", "etcdserver: request timed out")
    with pytest.raises(TargetError, match="etcdserver: request timed out"):
        kube.get("v1", "Namespace", "az1-accounts")
    with pytest.raises(TargetError, match="does not serve Widget"):
        kube.resource("example.com/v1", "Widget")


def test_delete_asks_for_background_propagation_and_a_404_means_already_gone(api):
    server, kube, _ = api
    kube.apply(namespace("az1-accounts"))
    kube.apply({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "az1-accounts"}, "spec": {"mtls": {"mode": "STRICT"}}})
    assert kube.delete("security.istio.io/v1beta1", "PeerAuthentication", "default", "az1-accounts") is True
    (delete,) = server.made("DELETE")
    assert delete.path == "/apis/security.istio.io/v1beta1/namespaces/az1-accounts/peerauthentications/default"
    assert delete.param("propagationPolicy") == "Background"
    assert kube.delete("security.istio.io/v1beta1", "PeerAuthentication", "default", "az1-accounts") is False
    assert kube.delete("v1", "Namespace", "az1-accounts") is True
    assert server.made("DELETE")[-1].path == "/api/v1/namespaces/az1-accounts"


@pytest.mark.parametrize("mode, expected", [
    ("sidecar", {"istio-injection": "enabled"}),
    ("ambient", {"istio.io/dataplane-mode": "ambient"}),
    ("waypoint", {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}),
])
def test_namespaces_are_created_with_the_data_plane_labels_the_session_sets(api, mode, expected):
    server, kube, _ = api
    name = "waypoint-getting-started.yaml" if mode == "waypoint" else "peer-authentication-strict.yaml"
    scenario = load(ROOT / "policies" / name, IstioVersion.parse("1.30"))
    nsmap = NamespaceMap.for_scenario(scenario, "az1-")
    docs = render_workloads(scenario, nsmap, RenderSettings(mode, "c@sha256:1", "a@sha256:2", "az1",
                                                            enrollment_labels(mode)))
    for doc in docs:
        kube.apply(doc)
    in_mesh = {nsmap.cluster_namespace(w.namespace) for w in scenario.workloads if w.in_mesh}
    seen = {}
    for ns in in_mesh:
        got = kube.get("v1", "Namespace", ns)
        assert got is not None
        seen[ns] = {k: v for k, v in got["metadata"]["labels"].items() if k.startswith("istio")}
    if mode == "waypoint":
        assert seen["az1-default"] == expected
    else:
        assert set(seen) >= {"az1-foo", "az1-bar"} and all(v == expected for v in seen.values())
        legacy = kube.get("v1", "Namespace", "az1-legacy")
        assert legacy is not None and not any(k.startswith("istio") for k in legacy["metadata"]["labels"])
    # what the PATCH carried is what the session rendered: the labels went over the wire as they were
    sent = {r.path.rsplit("/", 1)[1]: r.json() for r in server.made("PATCH", "/api/v1/namespaces/")
            if r.path.count("/") == 4}
    assert all(sent[ns]["metadata"]["labels"] == kube.get("v1", "Namespace", ns)["metadata"]["labels"]  # type: ignore[index]
               for ns in in_mesh)


def test_rollouts_and_pods_are_read_from_their_status(api):
    server, kube, _ = api
    scenario = load(ROOT / "tests" / "data" / "good.yaml", IstioVersion.parse("1.30"))
    nsmap = NamespaceMap.for_scenario(scenario, "az1-")
    for doc in render_workloads(scenario, nsmap, RenderSettings("sidecar", "c@sha256:1", "a@sha256:2", "az1",
                                                                enrollment_labels("sidecar"))):
        kube.apply(doc)
    assert kube.wait_rollout("Deployment", "accounts", "az1-accounts", timeout=5) >= 0
    (pod,) = kube.pods("az1-accounts", "app=accounts")
    assert server.made("GET", "/api/v1/namespaces/az1-accounts/pods")[-1].param("labelSelector") == "app=accounts"
    assert pod.ready and pod.ip.startswith("10.244.") and pod.node == "node1" and not pod.deleting
    assert "istio-proxy" in pod.containers and "istio-proxy" in pod.running and pod.restarts["istio-proxy"] == 0
    assert pod.uid and pod.labels["app"] == "accounts"
    (outsider,) = kube.pods("az1-legacy", None)  # out of the mesh: its namespace is not enrolled
    assert "istio-proxy" not in outsider.containers
    assert {p.namespace for p in kube.pods(None, None)} == {"az1-accounts", "az1-finance", "az1-legacy", "az1-rogue"}
    assert server.made("GET", "/api/v1/pods")  # every namespace: the cluster-wide list


def test_exec_over_the_v5_websocket_reads_stdout_stderr_and_the_exit_code(api):
    server, kube, execs = api
    execs.answers = [ExecAnswer(b"line one\nline two\n", b"warning: x\n", 0),
                     ExecAnswer(b"", b"curl: (56) Recv failure\n", 56, close_signal=True)]
    out = kube.exec("az1-finance", "curl-abc", "curl", ["sh", "-c", "echo 'a b'; exit 0"], timeout=10)
    assert (out.stdout, out.stderr, out.returncode) == ("line one\nline two\n", "warning: x\n", 0)
    assert execs.calls[0] == ("az1-finance", "curl-abc", "curl", ["sh", "-c", "echo 'a b'; exit 0"])
    request = server.made("GET", "/exec")[0]
    assert request.path == "/api/v1/namespaces/az1-finance/pods/curl-abc/exec"
    assert request.query["command"] == ["sh", "-c", "echo 'a b'; exit 0"]  # one `command` per argv item
    assert {k: request.param(k) for k in ("container", "stdin", "stdout", "stderr", "tty")} == {
        "container": "curl", "stdin": "false", "stdout": "true", "stderr": "true", "tty": "false"}
    assert request.headers["sec-websocket-protocol"] == f"{V5},{V4}"
    assert request.headers["upgrade"].lower() == "websocket"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    failed = kube.exec("az1-finance", "curl-abc", "curl", ["false"], timeout=10)
    assert (failed.returncode, failed.stderr) == (56, "curl: (56) Recv failure\n")  # details.causes[ExitCode]
    assert any(op == 0x8 for op, _ in server.ws_frames)  # the client closed the websocket properly


def test_a_large_output_arrives_whole(api):
    _server, kube, execs = api
    body = "".join(f"@@authz {i:06d} " + "x" * 90 + "\n" for i in range(2000)).encode()  # > 64 KiB: several frames
    execs.answers = [ExecAnswer(body, b"", 0)]
    assert kube.exec("ns", "p", "curl", ["sh"], timeout=10).stdout.encode() == body


def test_an_exec_without_a_status_is_lost_not_an_outcome(api):
    _server, kube, execs = api
    execs.answers = [ExecAnswer(b"@@authz partial", b"", None)]
    with pytest.raises(ExecLost, match="without a status"):
        kube.exec("ns", "p", "curl", ["sh"], timeout=10)


def test_logs_are_read_with_kubelet_timestamps_since_a_number_of_seconds(api):
    server, kube, _ = api
    server.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ztunnel-a", "namespace": "istio-system"}})
    now = server.clock()
    server.log("istio-system", "ztunnel-a", "istio-proxy", "old line", when=now - 100)
    server.log("istio-system", "ztunnel-a", "istio-proxy", '{"probe": "n-0"}', when=now - 1.25)
    text = kube.logs("istio-system", "ztunnel-a", "istio-proxy", since_seconds=10)
    (line,) = text.splitlines()
    from conformance.mesh.cluster.logs import k8s_timestamp, strip_k8s_timestamp

    assert strip_k8s_timestamp(line) == '{"probe": "n-0"}'
    assert abs((k8s_timestamp(line) or 0) - (now - 1.25)) < 1e-6
    request = server.made("GET", "/log")[-1]
    assert request.path == "/api/v1/namespaces/istio-system/pods/ztunnel-a/log"
    assert {k: request.param(k) for k in ("container", "timestamps", "sinceSeconds")} == {
        "container": "istio-proxy", "timestamps": "true", "sinceSeconds": "10"}
    with pytest.raises(TargetError, match=r'reading logs of istio-system/gone \(istio-proxy\) failed: pods "gone" '
                                          "not found"):
        kube.logs("istio-system", "gone", "istio-proxy")


def test_the_client_leaves_no_discovery_cache_behind(api):
    server, kube, _ = api
    kube.apply(namespace("az1-x"))
    kube.invalidate()
    kube.apply(namespace("az1-y"))
    import hashlib

    name = f"osrcp-{hashlib.md5(server.url.encode(), usedforsecurity=False).hexdigest()}.json"
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), name))
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "authz-conformance-no-discovery-cache-*"))
    assert [r.path for r in server.made("GET")].count("/apis") == 2  # a fresh discovery after invalidate()


def test_stop_closes_the_server_and_its_threads(tmp_path):
    server = FakeApiServer().start()
    url = server.url
    kube = Kube(str(server.kubeconfig(tmp_path)), "fake", request_timeout=5)
    kube.apply(namespace("az1-x"))
    kube.close()
    server.stop()
    assert not any(t.name == "fake-apiserver" for t in threading.enumerate())
    import socket

    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert json.loads(json.dumps(server.objects[("Namespace", "", "az1-x")]))["metadata"]["name"] == "az1-x"


def test_a_ctrl_c_while_the_exec_connects_stays_a_ctrl_c(api, monkeypatch):
    """ws_client.websocket_call wraps even KeyboardInterrupt in ApiException(status=0); Kube unwraps it."""
    from kubernetes.stream import ws_client

    _server, kube, _ = api

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ws_client.WSClient, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kube.exec("ns", "p", "curl", ["sh"], timeout=10)

    def refused(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(ws_client.WSClient, "__init__", refused)
    with pytest.raises(ExecLost, match="Connection refused"):
        kube.exec("ns", "p", "curl", ["sh"], timeout=10)
