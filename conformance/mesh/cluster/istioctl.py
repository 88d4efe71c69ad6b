"""istioctl (and other external commands): the command lines the cluster targets run, and their output.

Command lines are built by pure functions, so tests check them without a cluster; `run` executes one
with a timeout and turns a failure into a TargetError that quotes the command and the end of its
stderr. Flags are the ones istioctl 1.29/1.30 define (istioctl/pkg/...: `install` --set/-f/-y/
--readiness-timeout, global --kubeconfig/--context, `analyze` -n/-o json, `ztunnel-config policies
<pod>.<ns> -o json`, `tag set`, `uninstall --revision`).

`istioctl analyze -o json` exits 0 whatever it found: the failure threshold's error (exit 79,
ExitAnalyzerFoundIssues in istioctl/cmd/sysexits.go) is only returned for the default `log` output
(istio/istio istioctl/pkg/analyze/analyze.go, 1.29.6 and 1.30.3: `if msgOutputFormat ==
formatting.LogFormat { returnError = errorIfMessagesExceedThreshold(...) }`). So with JSON the findings
are read from the JSON, and any non-zero exit means analyze itself failed: `ANALYZE_OK` is (0,).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from conformance.errors import TargetError

ISTIO_NAMESPACE = "istio-system"
# The exit codes of a successful `istioctl analyze -o json` (see the module docstring): only 0.
ANALYZE_OK: tuple[int, ...] = (0,)
# istioctl's ExitAnalyzerFoundIssues: returned with `-o log` only, never by analyze_argv's `-o json`.
# Kept for callers that still accept it (accepting it is harmless, it cannot occur); use ANALYZE_OK.
ANALYZE_FOUND_ISSUES = 79


@dataclass(frozen=True)
class Kubeconfig:
    path: str | None
    context: str | None

    def flags(self) -> list[str]:
        out: list[str] = []
        if self.path:
            out += ["--kubeconfig", self.path]
        if self.context:
            out += ["--context", self.context]
        return out


def install_argv(istioctl: str, kube: Kubeconfig, profile: str, overlay: Path, revision: str | None = None,
                 readiness_timeout: str = "300s", pilot_env: Sequence[tuple[str, str]] = ()) -> list[str]:
    """`istioctl install` of one profile with the mode's overlay; a revision for a canary upgrade; `pilot_env`:
    istiod's feature flags (pilotenv.normalized), as `values.pilot.env.<NAME>` (the istiod chart renders each
    entry of that map as an env var of the discovery container, manifests/charts/istio-control/istio-discovery/
    templates/deployment.yaml@1.30.3 `range $key, $val := .Values.pilot.env`)."""
    argv = [istioctl, "install", "-y", *kube.flags(), "-f", str(overlay), "--set", f"profile={profile}",
            "--readiness-timeout", readiness_timeout]
    if revision:
        argv += ["--set", f"revision={revision}"]
    for name, value in pilot_env:
        argv += ["--set", f"values.pilot.env.{name}={value}"]
    return argv


def tag_set_argv(istioctl: str, kube: Kubeconfig, revision: str, tag: str = "default") -> list[str]:
    """Point a revision tag (the default one: what `istio-injection=enabled` and ambient use) at `revision`."""
    return [istioctl, "tag", "set", tag, "--revision", revision, "--overwrite", "-y", *kube.flags()]


def uninstall_revision_argv(istioctl: str, kube: Kubeconfig, revision: str) -> list[str]:
    return [istioctl, "uninstall", "--revision", revision, "-y", *kube.flags()]


def analyze_argv(istioctl: str, kube: Kubeconfig, namespace: str) -> list[str]:
    """`istioctl analyze` of one namespace, findings as JSON on stdout; run it with `ok=ANALYZE_OK`."""
    return [istioctl, "analyze", *kube.flags(), "-n", namespace, "-o", "json"]


def ztunnel_policies_argv(istioctl: str, kube: Kubeconfig, ztunnel_pod: str,
                          namespace: str = ISTIO_NAMESPACE) -> list[str]:
    """`<pod>.<namespace>`: ztunnel runs in istio-system on kind, wherever the installer put it elsewhere (some
    platforms use kube-system); the session found the pod, so its namespace is known (review finding)."""
    return [istioctl, "ztunnel-config", "policies", f"{ztunnel_pod}.{namespace}", "-o", "json", *kube.flags()]


@dataclass(frozen=True)
class AnalyzeMessage:
    code: str
    level: str  # Error | Warning | Info
    message: str
    origin: str

    def __str__(self) -> str:
        where = f" ({self.origin})" if self.origin else ""
        return f"{self.level} [{self.code}]{where}: {self.message}"


def parse_analyze(stdout: str) -> list[AnalyzeMessage]:
    """`istioctl analyze -o json` prints a JSON list (diag.Message.Unstructured); anything else is an error.

    The list is the only place its findings are: the exit code says nothing about them with `-o json`.
    """
    text = stdout.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TargetError(f"istioctl analyze printed something that is not JSON: {text[:200]!r}") from exc
    if not isinstance(data, list):
        raise TargetError(f"istioctl analyze printed {type(data).__name__}, not a list of messages")
    return [AnalyzeMessage(str(m.get("code", "")), str(m.get("level", "")), str(m.get("message", "")),
                           str(m.get("origin", ""))) for m in data if isinstance(m, dict)]


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run(argv: Sequence[str], timeout: float, ok: Sequence[int] = (0,), env: dict[str, str] | None = None) -> Result:
    """Run a command; a non-accepted exit code or a timeout is a TargetError naming the command."""
    start = time.monotonic()
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TargetError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        raise TargetError(f"`{argv[0]}` cannot be run: {exc}") from exc
    result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    if proc.returncode not in ok:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise TargetError(f"`{' '.join(argv)}` exited {proc.returncode}: " + " | ".join(tail))
    return result
