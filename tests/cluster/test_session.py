"""A cluster session end to end against a fake cluster on this machine: the real rendering, namespace
mapping, server-side-apply bookkeeping, propagation barrier, analyze warnings, the real probe script run
by /bin/sh with real curl against the real app (a `curl` shim only resolves Service names to local
ports, as cluster DNS would), the shared classifier, and proofs read from (fake) proxy logs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conformance.errors import TargetError
from conformance.mesh.cluster.istioctl import Kubeconfig, Result
from conformance.mesh.cluster.kube import ExecResult, PodInfo
from conformance.mesh.cluster.session import (
    BarrierWarning,
    ClusterContext,
    ClusterSession,
    IstioAnalyzeWarning,
    Timeouts,
    check_shared_cluster,
)
from conformance.mesh.local.app import EchoServer
from conformance.model import ALLOWED, DENIED_L7, Manifest
from conformance.probe import DENY_POLICY, PROBE_HEADER
from conformance.scenario import load
from conformance.versions import IstioVersion
from tests.cluster.envoy_dump import listeners_dump

ROOT = Path(__file__).resolve().parents[2]
CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")

SHIM = """#!{python}
import json, os, sys
routes = json.load(open({routes!r}))
args = sys.argv[1:]
for i, a in enumerate(args):
    if a.startswith("http://"):
        rest = a[len("http://"):]
        hostport, _, path = rest.partition("/")
        host = hostport if ":" in hostport else hostport + ":80"
        if host in routes:
            args[i] = "http://127.0.0.1:%d/%s" % (routes[host], path)
            args[i:i] = ["-H", "host: " + hostport]
os.execv({curl!r}, [{curl!r}, *args])
"""


def kubelet_stamp(seconds: float) -> str:
    """The kubelet's RFC3339Nano timestamp in front of a log line read with timestamps=True."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Forbidden(BaseHTTPRequestHandler):
    """A destination whose (pretend) sidecar denies: 403 RBAC, and an access-log record naming the probe,
    stamped when it was written (`records`: namespace -> [(time, record)]; `local` is filled in by the
    fake's logs(), with the IP of the pod whose log it is)."""

    protocol_version = "HTTP/1.1"
    records: ClassVar[dict[str, list[tuple[float, dict[str, Any]]]]] = {}
    policy = "ns[{ns}]-policy[deny-all]-rule[0]"
    silent = False  # the proxy writes nothing (a record lost, or one that never existed)

    def do_GET(self) -> None:
        body = b"RBAC: access denied"
        self.send_response(403)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if Forbidden.silent:
            return
        ns = self.server.namespace  # type: ignore[attr-defined]
        Forbidden.records.setdefault(ns, []).append((time.time(), {
            "type": "DownstreamEnd", "method": "GET", "code": 403, "probe": self.headers.get(PROBE_HEADER),
            "details": f"rbac_access_denied_matched_policy[{self.server.policy_id}]",  # type: ignore[attr-defined]
            "src": "10.0.0.2:5555", "x-request-id": self.headers.get("x-request-id")}))

    def log_message(self, *args: object) -> None:
        pass


ZTUNNEL_POD = PodInfo("ztunnel-n1", "istio-system", "10.0.99.1", "node1", {"app": "ztunnel"}, True,
                      running=frozenset({"istio-proxy"}), restarts={"istio-proxy": 0}, uid="uid-ztunnel")


class ResettingZtunnel:
    """A destination behind a (pretend) ztunnel that refuses every connection by policy: the connection is
    reset, and the node's ztunnel log gets what istio/ztunnel@1.30.3 writes (src/proxy/metrics.rs): for a
    plaintext client one inbound record whose src.addr is curl's own address (inbound_passthrough.rs); for
    an HBONE client the source ztunnel's outbound record of curl's connection ("http status: 401
    Unauthorized", h2/client.rs) and the destination's inbound record from the pooled HBONE connection."""

    def __init__(self, kube: FakeKube, ns: str, name: str, port: int, hbone_source: str | None, error: str):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.server_address = self.sock.getsockname()
        self.kube, self.ns, self.name, self.port = kube, ns, name, port
        self.hbone_source, self.error = hbone_source, error  # the in-mesh client's pod IP, or None: plaintext
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            conn.recv(4096)  # the request arrived (curl then sees the reset on receiving: exit 56)
            ip = self.kube.ip_of(self.ns, self.name)
            dst = f"{ip}:{self.port}"
            curl = f"{peer[0]}:{peer[1]}"
            base = f'dst.service="{self.name}.{self.ns}.svc.cluster.local" bytes_sent=0 bytes_recv=0 duration="0ms"'
            if self.hbone_source:
                self.kube.ztunnel_log(f'src.addr={curl} dst.addr={ip}:15008 dst.hbone_addr={dst} '
                                      f'direction="outbound" {base} error="http status: 401 Unauthorized"')
                self.kube.ztunnel_log(f'src.addr={self.hbone_source}:15008 dst.addr={ip}:15008 '
                                      f'dst.hbone_addr={dst} direction="inbound" {base} error="{self.error}"')
            else:
                self.kube.ztunnel_log(f'src.addr={curl} dst.addr={dst} direction="inbound" {base} '
                                      f'error="{self.error}"')
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def shutdown(self) -> None:
        self.sock.close()


class FakeKube:
    """Just enough of `Kube` for a session: objects in a dict, pods per Deployment, exec run locally."""

    def __init__(self, tmp: Path, deny: set[str]):
        self.tmp = tmp
        self.deny = deny  # cluster namespaces whose server "denies"
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, str, str]] = []
        self.deleted: list[tuple[str, str, str]] = []
        self.servers: list[Any] = []
        self.routes: dict[str, int] = {}
        self.bindir = tmp / "bin"
        self.bindir.mkdir()
        self.lock = threading.Lock()
        self.proxy_state: dict[str, dict[str, Any]] = {}  # pod name -> PodInfo overrides (running, restarts)
        self.log_failures: dict[str, int] = {}  # pod name -> how many more log reads fail
        self.log_reads: list[tuple[str, str, str]] = []
        self.ambient_deny: dict[tuple[str, int], tuple[str | None, str]] = {}  # (ns, port) -> ResettingZtunnel args
        self.ztunnel_lines: list[str] = []

    def ztunnel_log(self, fields: str) -> None:
        now = time.time()
        with self.lock:
            self.ztunnel_lines.append(f"{kubelet_stamp(now)} {kubelet_stamp(now)}\terror\taccess\tconnection "
                                      f"complete\t{fields}")

    def apply(self, doc: dict[str, Any], field_manager: str = "") -> dict[str, Any]:
        meta = doc["metadata"]
        key = (doc["kind"], meta.get("namespace", ""), meta["name"])
        self.objects[key] = doc
        self.applied.append(key)
        if doc["kind"] == "Service":
            ns, name = meta["namespace"], meta["name"]
            for port in doc["spec"]["ports"]:
                if (ns, port["port"]) in self.ambient_deny:
                    srv = ResettingZtunnel(self, ns, name, port["port"], *self.ambient_deny[(ns, port["port"])])
                    self.servers.append(srv)
                    self.routes[f"{name}.{ns}:{port['port']}"] = srv.server_address[1]
                    continue
                if ns in self.deny:
                    srv = ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
                    srv.policy_id = Forbidden.policy.format(ns=ns)  # type: ignore[attr-defined]
                    srv.namespace = ns  # type: ignore[attr-defined]
                else:
                    srv = EchoServer(("127.0.0.1", 0), f"{ns}/{name}")
                threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
                self.servers.append(srv)
                self.routes[f"{name}.{ns}:{port['port']}"] = srv.server_address[1]
        return doc

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        self.deleted.append((kind, namespace or "", name))
        return self.objects.pop((kind, namespace or "", name), None) is not None

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None):
        if kind == "Pod":  # istio-cni's mark of an ambient-enrolled pod
            return {"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}}
        return self.objects.get((kind, namespace or "", name))

    def wait_rollout(self, *args: Any, **kw: Any) -> float:
        return 0.0

    def pods(self, namespace: str | None, label_selector: str | None = None) -> list[PodInfo]:
        if label_selector == "app=ztunnel" or namespace == "istio-system":
            return [ZTUNNEL_POD]
        out = []
        for (kind, ns, name), doc in self.objects.items():
            if kind != "Deployment" or ns != namespace:
                continue
            labels = doc["spec"]["template"]["metadata"]["labels"]
            key, _, value = (label_selector or "").partition("=")
            if label_selector and labels.get(key) != value:
                continue
            pod = f"{name}-abc"
            state = {"running": frozenset({"istio-proxy", "curl", "app"}), "restarts": {"istio-proxy": 0},
                     "uid": f"uid-{pod}", **self.proxy_state.get(pod, {})}
            out.append(PodInfo(pod, ns, self.ip_of(ns, name), "node1", labels, True, **state))
        return out

    def ip_of(self, ns: str, name: str) -> str:
        names = sorted(n for (k, n_ns, n) in self.objects if k == "Deployment" and n_ns == ns)
        return f"10.0.{names.index(name)}.{len(name)}"

    def exec(self, namespace: str, pod: str, container: str, argv: list[str], timeout: float) -> ExecResult:
        if container == "istio-proxy":  # config dump: every applied policy's id, as istiod would push it
            ids = [f"ns[{ns}]-policy[{n}]-rule[0]" for (k, ns, n) in self.objects if k == "AuthorizationPolicy"]
            return ExecResult(listeners_dump(ids), "", 0, 0.01)
        with self.lock:  # execs run in parallel (one per source pod): write the shim once, atomically
            routes = self.tmp / "routes.json"
            if not routes.exists() or json.loads(routes.read_text()) != self.routes:
                tmp = self.tmp / "routes.json.tmp"
                tmp.write_text(json.dumps(self.routes))
                tmp.replace(routes)
            shim = self.bindir / "curl"
            if not shim.exists():
                tmp = self.tmp / "curl.tmp"
                tmp.write_text(SHIM.format(python=sys.executable, routes=str(routes), curl=CURL))
                tmp.chmod(0o755)
                tmp.replace(shim)
        env = {"PATH": f"{self.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        return ExecResult(proc.stdout, proc.stderr, proc.returncode, 0.1)

    def logs(self, namespace: str, pod: str, container: str, since_seconds: int | None = None,
             tail_lines: int | None = None) -> str:
        self.log_reads.append((namespace, pod, container))
        if self.log_failures.get(pod, 0) > 0:
            self.log_failures[pod] -= 1
            raise TargetError(f"reading logs of {namespace}/{pod} ({container}) failed: 500 Internal Server Error")
        if pod == ZTUNNEL_POD.name:
            with self.lock:
                return "\n".join(self.ztunnel_lines)
        local = self.ip_of(namespace, pod.rsplit("-", 1)[0]) + ":8080"
        return "\n".join(f"{kubelet_stamp(t)} " + json.dumps({**r, "local": local})
                         for t, r in Forbidden.records.get(namespace, []))

    def close(self) -> None:
        for srv in self.servers:
            srv.shutdown()


def analyze_stub(argv: list[str], timeout: float, ok: tuple[int, ...] = (0,)) -> Result:
    ns = argv[argv.index("-n") + 1]
    out = json.dumps([{"code": "IST0118", "level": "Warning", "message": "Port name x is not following convention",
                       "origin": f"Service {ns}/accounts"}])
    return Result(tuple(argv), 0, out, "", 0.1)  # -o json: findings never exit 79 (istioctl analyze.go@1.30.3)


@pytest.fixture
def world(tmp_path):
    Forbidden.records = {}
    Forbidden.silent = False
    Forbidden.policy = "ns[{ns}]-policy[deny-all]-rule[0]"
    scenario = load(ROOT / "tests" / "data" / "good.yaml", IstioVersion.parse("1.30"))
    kube = FakeKube(tmp_path, deny=set())
    ctx = ClusterContext(kube=kube, kubeconfig=Kubeconfig(None, "ctx"), istioctl="istioctl",  # type: ignore[arg-type]
                         version=IstioVersion.parse("1.30"), curl_image="c@sha256:1", app_image="a@sha256:2",
                         prefix="azt3st00-", enrollment={"istio-injection": "enabled"},
                         timeouts=Timeouts(barrier=0.6, canary=10.0, probe=10.0, connect=5.0, proof_grace=0.5),
                         observations_out=tmp_path / "obs.jsonl", run_command=analyze_stub,
                         sleep=lambda _s: None)
    yield scenario, kube, ctx
    kube.close()


def test_session_deploys_probes_applies_and_cleans_up(world):
    scenario, kube, ctx = world
    session = ClusterSession(scenario, "sidecar", ctx).start()
    kinds = [k for k, _, _ in kube.applied]
    assert kinds[0] == "Namespace" and "Deployment" in kinds and "Service" in kinds
    assert session.addresses["accounts/accounts"].startswith("10.0.")
    assert session.namespace_map == [("accounts", "azt3st00-accounts"), ("finance", "azt3st00-finance"),
                                     ("legacy", "azt3st00-legacy"), ("rogue", "azt3st00-rogue")]

    step = scenario.steps[1]  # deny-all in accounts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        applied = session.apply(step.policies)
    assert applied.created == ("azt3st00-accounts/deny-all",) and applied.seconds >= 0
    assert ("AuthorizationPolicy", "azt3st00-accounts", "deny-all") in kube.objects
    assert session.barriers[-1].reached
    assert any(issubclass(w.category, IstioAnalyzeWarning) and "IST0118" in str(w.message) for w in caught)
    assert session.analysis[-1][1][0].code == "IST0118"

    probes = [e.probe for e in scenario.steps[2].expectations]
    observations = session.probe(probes)
    assert [o.outcome for o in observations] == [ALLOWED] * len(probes), [o.evidence for o in observations]
    first = observations[0]
    assert first.evidence.body.startswith("azt3st00-accounts/accounts responding")
    assert '"x-team": "a"' in first.evidence.body
    assert "kubectl exec -n azt3st00-finance curl-abc -c curl -- curl -sS" in first.evidence.command
    records = [json.loads(line) for line in ctx.observations_out.read_text().splitlines()]
    assert {r["scenario"] for r in records} == {"good"} and records[0]["step"] == 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        applied = session.apply(scenario.steps[0].policies)  # back to no policy: the old one is deleted
    assert applied.deleted == ("azt3st00-accounts/deny-all",)
    assert ("AuthorizationPolicy", "azt3st00-accounts", "deny-all") in kube.deleted
    session.close()
    assert {ns for k, _, ns in kube.deleted if k == "Namespace"} == {
        "azt3st00-accounts", "azt3st00-finance", "azt3st00-legacy", "azt3st00-rogue"}


def test_a_denial_is_proved_by_the_proxy_record_and_mapped_back(world):
    scenario, kube, ctx = world
    kube.deny.add("azt3st00-accounts")
    session = ClusterSession(scenario, "sidecar", ctx)
    session._canary = lambda: None  # type: ignore[method-assign]  # the "denying" fake would fail it
    session.start()
    probe = scenario.steps[1].expectations[0].probe
    (obs,) = session.probe([probe])
    assert obs.outcome == DENIED_L7
    assert obs.proof is not None and obs.proof.denied
    assert obs.proof.policy == "accounts/deny-all" and obs.proof.proxy == "sidecar:accounts/accounts"
    session.close()


def test_a_broken_mesh_fails_at_start_not_as_a_denial(world):
    scenario, kube, ctx = world
    kube.deny.add("azt3st00-accounts")
    from dataclasses import replace

    ctx.timeouts = replace(ctx.timeouts, canary=0.5)
    with pytest.raises(TargetError, match="the mesh does not work"):
        ClusterSession(scenario, "sidecar", ctx).start()
    assert any(k == "Namespace" for k, _, _ in kube.deleted)  # cleaned up after the failure


def test_a_slow_push_is_reported_not_hidden(world):
    scenario, kube, ctx = world
    session = ClusterSession(scenario, "sidecar", ctx).start()
    kube.exec_real = kube.exec

    def stale_config(namespace, pod, container, argv, timeout):
        if container == "istio-proxy":
            return ExecResult(listeners_dump([]), "", 0, 0.01)  # the listener without the new policy
        return kube.exec_real(namespace, pod, container, argv, timeout)

    kube.exec = stale_config  # type: ignore[method-assign]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.apply(scenario.steps[1].policies)
    assert not session.barriers[-1].reached
    assert any(issubclass(w.category, BarrierWarning) and "missing azt3st00-accounts/deny-all" in str(w.message)
               for w in caught)
    session.close()


def test_shared_cluster_refuses_mesh_wide_policies():
    scenario = load(ROOT / "policies" / "peer-authentication-strict.yaml", IstioVersion.parse("1.30"))
    root = [m for s in scenario.steps for m in s.policies if m.namespace == "istio-system"]
    if not root:
        pa = Manifest("PeerAuthentication", "security.istio.io/v1", "default", "istio-system",
                      {"spec": {"mtls": {"mode": "STRICT"}}}, "x.yaml: step s")
        from dataclasses import replace

        scenario = replace(scenario, steps=(replace(scenario.steps[0], policies=(pa,)),))
    with pytest.raises(TargetError, match="--allow-mesh-wide"):
        check_shared_cluster(scenario, "istio-system", allow=False)
    check_shared_cluster(scenario, "istio-system", allow=True)


def test_scenarios_the_cluster_cannot_honour_are_refused(world):
    scenario, kube, ctx = world
    from dataclasses import replace

    from conformance.model import MeshConfig

    other = replace(scenario, mesh=MeshConfig(trust_domain="example.org"))
    with pytest.raises(TargetError, match="trust domain"):
        ClusterSession(other, "sidecar", ctx).start()
    assert not kube.applied


def test_applied_reports_when_the_barrier_passed(world):
    scenario, _kube, ctx = world
    import time

    session = ClusterSession(scenario, "sidecar", ctx).start()
    before = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        applied = session.apply(scenario.steps[1].policies)
    assert applied.acknowledged_at is not None and before <= applied.acknowledged_at <= time.monotonic()
    assert ClusterSession.probes_during_apply  # the runner measures the enforcement gap on clusters
    session.close()


def test_the_shared_runner_drives_a_cluster_session(world):
    """run_step (prediction, apply, enforcement-gap loop, convergence, judging) over a cluster session."""
    from conformance.runner import run_step

    scenario, _kube, ctx = world
    session = ClusterSession(scenario, "sidecar", ctx).start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        result = run_step(session, scenario, scenario.steps[0], IstioVersion.parse("1.30"), required=2,
                          deadline=20)
    assert result.passed, [(r.probe.describe(), r.last) for r in result.table.rows]
    assert all(rec.converged_after == 2 for rec in result.convergence.records)
    session.close()


# -- proof per probe (issue 9) -------------------------------------------------------------------------
def denying_session(world, **ctx_changes: Any) -> tuple[Any, FakeKube, ClusterSession]:
    """A started sidecar session whose `accounts` destination "denies" every request (403 + a record)."""
    from dataclasses import replace

    scenario, kube, ctx = world
    kube.deny.add("azt3st00-accounts")
    session = ClusterSession(scenario, "sidecar", replace(ctx, **ctx_changes))
    session._canary = lambda: None  # type: ignore[method-assign]  # the "denying" fake would fail it
    session.start()
    return scenario, kube, session


def test_the_proof_says_what_decided_and_for_whom(world):
    scenario, _kube, session = denying_session(world)
    (obs,) = session.probe([scenario.steps[1].expectations[0].probe])
    assert obs.proof is not None and obs.proof.kind == DENY_POLICY
    assert (obs.proof.layer, obs.proof.serves) == ("sidecar", "accounts/accounts")
    assert obs.problem is None and obs.unconfirmed is None
    session.close()


def test_two_probes_with_the_same_scenario_request_id_each_get_their_own_record(world):
    from dataclasses import replace

    scenario, _kube, session = denying_session(world)
    base = scenario.steps[1].expectations[0].probe
    probe = replace(base, request=replace(base.request, headers=(("x-request-id", "same"),)))
    first, second = session.probe([probe, probe])
    assert first.proof is not None and second.proof is not None
    assert first.proof.line != second.proof.line
    assert json.loads(first.proof.line)["x-request-id"] == json.loads(second.proof.line)["x-request-id"] == "same"
    session.close()


def test_a_record_is_never_reused_by_a_later_round(world):
    scenario, _kube, session = denying_session(world)
    probe = scenario.steps[1].expectations[0].probe
    assert session.probe([probe])[0].proof is not None
    Forbidden.silent = True  # round 2: the proxy writes nothing; round 1's record is still in its log
    (obs,) = session.probe([probe])
    assert obs.outcome == DENIED_L7 and obs.proof is None
    assert obs.notes == ("no record of this probe at sidecar:accounts/accounts",)
    session.close()


def test_an_unreadable_log_is_an_infrastructure_problem(world):
    from conformance.verdicts import judge

    scenario, kube, session = denying_session(world)
    kube.log_failures["accounts-abc"] = 99
    row_probe = scenario.steps[1].expectations[0].probe
    (obs,) = session.probe([row_probe])
    assert obs.proof is None and obs.unconfirmed is None
    assert obs.problem is not None and "could not be read" in obs.problem and "500" in obs.problem
    assert kube.log_reads.count(("azt3st00-accounts", "accounts-abc", "istio-proxy")) == 3  # retried, bounded
    assert session.unconfirmed == []
    from conformance.truthtable import predict

    table = predict(scenario, scenario.steps[1], "sidecar", IstioVersion.parse("1.30"), session.addresses)
    judgement = judge("deny", table.rows[0].predicted, obs, row_probe)
    assert not judgement.passed and judgement.category == "infrastructure failure"
    session.close()


def test_a_log_read_that_fails_then_succeeds_is_retried(world):
    scenario, kube, session = denying_session(world)
    kube.log_failures["accounts-abc"] = 2
    (obs,) = session.probe([scenario.steps[1].expectations[0].probe])
    assert obs.proof is not None and obs.problem is None
    session.close()


def test_unconfirmed_only_with_the_users_opt_in_and_listed_on_the_session(world):
    scenario, kube, session = denying_session(world, accept_unconfirmed=True)
    kube.log_failures["accounts-abc"] = 99
    (obs,) = session.probe([scenario.steps[1].expectations[0].probe])
    assert obs.problem is None and obs.proof is None
    assert obs.unconfirmed is not None and "could not be read" in obs.unconfirmed
    assert len(session.unconfirmed) == 1 and "finance/curl" in session.unconfirmed[0]
    session.close()


@pytest.mark.parametrize("state, words", [
    ({"running": frozenset({"curl", "app"})}, "is not running"),
    ({"restarts": {"istio-proxy": 1}}, "restarted since the step started"),
    ({"uid": "uid-replaced"}, "restarted since the step started"),
])
def test_a_dead_or_restarted_enforcing_proxy_is_a_problem_not_a_verdict(world, state, words):
    scenario, kube, session = denying_session(world)
    kube.proxy_state["accounts-abc"] = state
    (obs,) = session.probe([scenario.steps[1].expectations[0].probe])
    assert obs.problem is not None and words in obs.problem and "the sidecar of accounts/accounts" in obs.problem
    session.close()


def test_a_restart_before_the_step_is_the_steps_baseline(world):
    scenario, kube, session = denying_session(world)
    kube.proxy_state["accounts-abc"] = {"restarts": {"istio-proxy": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session.apply(scenario.steps[1].policies)
    (obs,) = session.probe([scenario.steps[1].expectations[0].probe])
    assert obs.problem is None and obs.proof is not None
    session.close()


def test_ambient_denials_are_looked_for_at_the_destinations_ztunnel(world):
    """Which record each ambient denial needs: exact for a plaintext client, pooled for an HBONE one."""
    from conformance.mesh.cluster.execprobe import CurlCall
    from conformance.mesh.cluster.session import ProbeRun
    from conformance.model import DENIED_L4

    scenario, _kube, ctx = world
    session = ClusterSession(scenario, "ambient", ctx)
    pod = {w.ref: PodInfo(f"{w.name}-abc", f"azt3st00-{w.namespace}", f"10.0.0.{i}", "node1", {}, True)
           for i, w in enumerate(scenario.workloads)}
    session._pods = pod
    session._ztunnels = {"node1": PodInfo("ztunnel-x", "istio-system", "10.0.9.9", "node1", {}, True)}
    rogue, outsider = (e.probe for e in scenario.steps[2].expectations[1:])
    run = ProbeRun(CurlCall("p0", "u"), "10.0.0.2:40000", pod["rogue/rogue"], 1.0)
    hbone = session._wanted(0, rogue, DENIED_L4, run)
    assert not isinstance(hbone, str)
    assert (hbone.log, hbone.format, hbone.pooled, hbone.dst) == ("istio-system/ztunnel-x", "ztunnel",
                                                                  frozenset({"10.0.0.2"}), "10.0.0.0:8080")
    assert (hbone.layer, hbone.serves, hbone.proxy, hbone.after) == ("ztunnel", "accounts/accounts",
                                                                      "ztunnel:node1", 1.0)
    # the source's node has the same ztunnel: its outbound record of curl's connection ties the probe
    assert (hbone.src, hbone.link) == ("10.0.0.2:40000", "istio-system/ztunnel-x")
    plain = session._wanted(1, outsider, DENIED_L4, ProbeRun(CurlCall("p1", "u"), "10.0.0.3:40001",
                                                            pod["legacy/outsider"], 1.0))
    assert not isinstance(plain, str) and plain.src == "10.0.0.3:40001" and not plain.pooled
    assert plain.dst == "10.0.0.0:9000"
    session._ztunnels = {}
    assert session._wanted(0, rogue, DENIED_L4, ProbeRun(CurlCall("p0", "u"), None, pod["rogue/rogue"], 1.0)) == \
        "no ztunnel on node node1"
    assert session._ztunnel_problem("node1", {}) == "no ztunnel pod on node node1: nothing enforces L4 policy there"


def test_ambient_denials_are_proved_by_ztunnel_records_end_to_end(world):
    """Real script, real curl, the session's own wiring: an HBONE client's denial is tied to its connection
    through the source ztunnel's record; a plaintext client's through curl's local port; STRICT is its kind."""
    from conformance.model import DENIED_L4
    from conformance.probe import STRICT_MTLS

    scenario, kube, ctx = world
    rogue_ip = "10.0.0.5"  # ip_of("azt3st00-rogue", "rogue"): the only Deployment of its namespace
    kube.ambient_deny[("azt3st00-accounts", 8080)] = (
        rogue_ip, "connection closed due to policy rejection: explicitly denied by: azt3st00-accounts/deny-rogue")
    kube.ambient_deny[("azt3st00-accounts", 9000)] = (
        None, "connection closed due to policy rejection: explicitly denied by: istio-system/"
              "istio_converted_static_strict")
    session = ClusterSession(scenario, "ambient", ctx)
    session._canary = lambda: None  # type: ignore[method-assign]
    session.start()
    assert session._pods["rogue/rogue"].ip == rogue_ip
    rogue, outsider = (e.probe for e in scenario.steps[2].expectations[1:])
    first = session.probe([rogue, outsider])
    assert [o.outcome for o in first] == [DENIED_L4, DENIED_L4], [o.evidence for o in first]
    hbone, plain = first
    assert hbone.proof is not None and hbone.proof.kind == DENY_POLICY, hbone.notes
    assert (hbone.proof.policy, hbone.proof.layer, hbone.proof.serves) == ("accounts/deny-rogue", "ztunnel",
                                                                           "accounts/accounts")
    assert plain.proof is not None and plain.proof.kind == STRICT_MTLS, plain.notes
    assert ("istio-system", "ztunnel-n1", "istio-proxy") in kube.log_reads
    second = session.probe([rogue, rogue])  # two probes, one pooled key: two refusals, one each
    assert all(o.proof is not None and o.proof.policy == "accounts/deny-rogue" for o in second), \
        [o.notes for o in second]
    assert second[0].proof.line != second[1].proof.line  # type: ignore[union-attr]
    session.close()


@pytest.mark.parametrize("logged, passes", [
    ("none", True),  # `spec: {}` is an ALLOW that matches nothing: Envoy names no policy
    ("ns[{ns}]-policy[deny-all]-rule[0]", False),  # a record naming a DENY contradicts the engine's reason
])
def test_a_denial_passes_only_with_the_record_the_engine_predicts(world, logged, passes):
    """run_step over a denying sidecar: the pass is earned by the record's kind, layer and workload."""
    from conformance.runner import run_step

    scenario, kube, session = denying_session(world)
    Forbidden.policy = logged
    for srv in kube.servers:  # the fake's servers were made with the class default
        if hasattr(srv, "policy_id"):
            srv.policy_id = logged.format(ns=srv.namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IstioAnalyzeWarning)
        result = run_step(session, scenario, scenario.steps[1], IstioVersion.parse("1.30"), required=2, deadline=2)
    record = result.convergence.records[0]
    assert result.passed is passes, [j.message for j in record.judgements]
    if not passes:
        assert record.failing_judgement is not None and "the record says a DENY policy matched" in \
            record.failing_judgement.message
    session.close()


def test_mixed_denials_are_looked_for_where_each_crossing_decides(world):
    """Mode mixed (issue 12) on clusters: the enforcing proxy follows the destination's data plane and the client's
    (engine/path.py's crossings, from Istio's source): a sidecar client reaches an ambient pod over its own HBONE,
    around any waypoint, so the destination's ztunnel decides and counts its refusals by the client pod; a captured
    client's request to a sidecar carries the probe header into the sidecar's HBONE chain; a captured client
    meets a waypoint namespace's waypoint; what cannot be tied to its probe yet says so (never a silent pass)."""
    from conformance.mesh.cluster.execprobe import CurlCall
    from conformance.mesh.cluster.session import ProbeRun
    from conformance.model import DENIED_L4, DENIED_L7, DENIED_UPSTREAM, Probe, Request

    _scenario, _kube, ctx = world
    scenario = load(ROOT / "policies" / "mixed-migration.yaml", IstioVersion.parse("1.30"))
    session = ClusterSession(scenario, "mixed", ctx)
    pod = {w.ref: PodInfo(f"{w.name}-abc", f"azt3st00-{w.namespace}", f"10.0.0.{i}", "node1", {"x": w.name}, True)
           for i, w in enumerate(scenario.workloads)}
    session._pods = pod
    session._ztunnels = {"node1": PodInfo("ztunnel-x", "istio-system", "10.0.9.9", "node1", {}, True)}
    session._waypoint_pods = [PodInfo("waypoint-1", "azt3st00-pay", "10.0.8.8", "node1",
                                      {"gateway.networking.k8s.io/gateway-name": "waypoint"}, True)]
    w = {x.ref: x for x in scenario.workloads}

    def wanted(src: str, dst: str, port: int, outcome: str) -> object:
        probe = Probe(w[src], w[dst], w[dst].port(port), Request())  # type: ignore[arg-type]
        return session._wanted(0, probe, outcome, ProbeRun(CurlCall("p0", "u"), "10.0.0.1:40000", pod[src], 1.0))

    sidecar_to_ambient = wanted("legacy/curl", "shop/api", 9000, DENIED_L4)
    assert not isinstance(sidecar_to_ambient, str)
    assert (sidecar_to_ambient.log, sidecar_to_ambient.pooled, sidecar_to_ambient.link) == (
        "istio-system/ztunnel-x", frozenset({pod["legacy/curl"].ip}), None)
    upstream = wanted("legacy/curl", "shop/api", 8080, DENIED_UPSTREAM)  # its own sidecar's 503
    assert not isinstance(upstream, str) and upstream.format == "ztunnel"
    into_sidecar = wanted("shop/curl", "legacy/orders", 8080, DENIED_L7)
    assert not isinstance(into_sidecar, str)
    assert (into_sidecar.log, into_sidecar.probe_id, into_sidecar.local_host) == (
        f"azt3st00-legacy/{pod['legacy/orders'].name}", "p0", None)
    assert "does not tie that record to its probe yet" in str(wanted("shop/curl", "legacy/orders", 9000, DENIED_L4))
    at_waypoint = wanted("shop/curl", "pay/billing", 8080, DENIED_L7)
    assert not isinstance(at_waypoint, str) and at_waypoint.log == "waypoint:pay/waypoint"
    # a sidecar client goes around the waypoint: a 403 cannot come from it
    assert "no proxy here answers that way" in str(wanted("legacy/curl", "pay/billing", 8080, DENIED_L7))
    proxies, ambient_ns = session._proxies()
    kinds = sorted((p.kind, p.namespace) for p in proxies)
    assert kinds == [("sidecar", "azt3st00-legacy"), ("waypoint", "azt3st00-pay"), ("ztunnel", "istio-system")]
    assert ambient_ns == frozenset({"azt3st00-shop", "azt3st00-pay"})
