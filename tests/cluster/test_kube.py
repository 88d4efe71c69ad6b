"""The kubernetes client wrapper's pure parts: exec status, rollout status, pod readiness, polling."""

from __future__ import annotations

import pytest

from conformance.errors import TargetError
from conformance.mesh.cluster.kube import ExecLost, exit_status, pod_info, poll_until, rollout_done


def test_exit_status():
    assert exit_status('{"metadata":{},"status":"Success"}') == 0
    failure = ('{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error '
               'executing command [sh -c x], exit code 56","reason":"NonZeroExitCode","details":{"causes":'
               '[{"reason":"ExitCode","message":"56"}]}}')
    assert exit_status(failure) == 56
    for lost in ("", None, "   "):
        with pytest.raises(ExecLost, match="without a status"):
            exit_status(lost)
    with pytest.raises(ExecLost, match="exec failed: container not found"):
        exit_status('{"status":"Failure","message":"container not found (\\"curl\\")","reason":"BadRequest"}')
    with pytest.raises(ExecLost, match="unreadable"):
        exit_status("[1, 2")
    assert issubclass(ExecLost, TargetError)  # an infrastructure error, never an outcome


def test_rollout_done():
    dep = {"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 1}}
    assert rollout_done(dep) == (False, "spec change not observed yet")
    dep["status"] = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}
    assert rollout_done(dep) == (False, "1 old replicas pending termination")
    dep["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0}
    assert rollout_done(dep)[0] is False
    dep["status"]["availableReplicas"] = 1
    assert rollout_done(dep) == (True, "rolled out")
    ds = {"kind": "DaemonSet", "metadata": {"generation": 1}, "status": {"observedGeneration": 1,
          "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1}}
    assert rollout_done(ds) == (False, "1 of 2 pods available")
    ds["status"]["numberAvailable"] = 2
    assert rollout_done(ds) == (True, "rolled out")
    assert rollout_done({"kind": "DaemonSet", "metadata": {}, "status": {}})[0] is False


def test_pod_info_counts_native_sidecars_and_readiness():
    pod = {"metadata": {"name": "p", "namespace": "n", "labels": {"app": "a"}},
           "spec": {"nodeName": "node1", "containers": [{"name": "curl"}],
                    "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}, {"name": "istio-init"}]},
           "status": {"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}]}}
    info = pod_info(pod)
    assert (info.ip, info.node, info.ready, info.containers) == ("10.0.0.5", "node1", True, ("curl", "istio-proxy"))
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_info(pod).deleting


def test_poll_until_with_a_fake_clock():
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    answers = iter([(False, "1 of 2"), (False, "1 of 2"), (True, "ok")])
    assert poll_until(lambda: next(answers), 10, "x", clock=lambda: now[0], sleep=sleep, interval=1) == 2.0
    with pytest.raises(TargetError, match=r"x: not ready after 3 s \(still waiting\)"):
        poll_until(lambda: (False, "still waiting"), 3, "x", clock=lambda: now[0], sleep=sleep)
