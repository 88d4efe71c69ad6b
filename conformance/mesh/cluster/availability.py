"""Whether a cluster target can run here, and if not, ONE reason that names everything missing.

A skipped cluster test must say plainly why (DESIGN.md §7, issue 6): "kind target: missing Docker
engine (docker info: Cannot connect ...), kind (not on PATH; give --kind-bin), istioctl ...". Every
check is made, not just the first, so one run tells the user everything to install. Nothing here
downloads anything: the kind binary must exist (pytest-kind would otherwise fetch an old one).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

CLUSTER_EXTRA = "pip install 'istio-authz-conformance[cluster]'"


@dataclass(frozen=True)
class Missing:
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what} ({self.detail})"


def reason(target: str, missing: list[Missing]) -> str | None:
    if not missing:
        return None
    return "cannot run here, missing: " + "; ".join(str(m) for m in missing)


def find_binary(explicit: str | None, names: list[str], env: Mapping[str, str] | None = None) -> str | None:
    """An existing executable: the explicit path (checked), else the first of `names` on PATH."""
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    path = (env if env is not None else os.environ).get("PATH", "")
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def module_missing(module: str, package: str) -> Missing | None:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as missing
        found = False
    if not found:
        return Missing(f"the Python package {package}", f"{CLUSTER_EXTRA}")
    return None


Runner = Callable[[list[str], float], tuple[int, str]]


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stderr or proc.stdout)


def docker_engine(env: Mapping[str, str] | None = None, run: Runner = _run) -> Missing | None:
    """kind needs a running Docker engine, not just the client: `docker info` must succeed."""
    docker = find_binary(None, ["docker"], env)
    if docker is None:
        return Missing("Docker", "no docker on PATH; kind needs a Docker engine")
    code, out = run([docker, "info", "--format", "{{.ServerVersion}}"], 20.0)
    if code != 0:
        last = [line.strip() for line in out.strip().splitlines() if line.strip()]
        return Missing("a running Docker engine", f"docker info failed: {last[-1] if last else f'exit {code}'}")
    return None


def kind_requirements(kind_bin: str | None, istioctl: str | None, istio_version: str,
                      env: Mapping[str, str] | None = None, run: Runner = _run,
                      ) -> tuple[list[Missing], str | None, str | None]:
    """Everything `--mesh kind` needs; returns (missing, kind path, istioctl path)."""
    missing: list[Missing] = []
    for module, package in (("pytest_kind", "pytest-kind"), ("kubernetes", "kubernetes")):
        m = module_missing(module, package)
        if m:
            missing.append(m)
    docker = docker_engine(env, run)
    if docker:
        missing.append(docker)
    kind = find_binary(kind_bin, ["kind"], env)
    if kind is None:
        detail = f"--kind-bin {kind_bin} is not an executable file" if kind_bin else \
            "not on PATH; install the pinned one (python -m conformance.mesh.cluster.matrix install) or give --kind-bin"
        missing.append(Missing("kind", detail))
    istio = find_istioctl(istioctl, istio_version, env)
    if istio is None:
        missing.append(Missing("istioctl", _istioctl_detail(istioctl, istio_version)))
    return missing, kind, istio


def existing_requirements(istioctl: str | None, istio_version: str, env: Mapping[str, str] | None = None
                          ) -> tuple[list[Missing], str | None]:
    missing: list[Missing] = []
    m = module_missing("kubernetes", "kubernetes")
    if m:
        missing.append(m)
    istio = find_istioctl(istioctl, istio_version, env)
    if istio is None:
        missing.append(Missing("istioctl", _istioctl_detail(istioctl, istio_version)))
    return missing, istio


def find_istioctl(explicit: str | None, istio_version: str, env: Mapping[str, str] | None = None) -> str | None:
    """--istioctl, else `istioctl-<version>` (as the installer names them), else `istioctl`, on PATH."""
    return find_binary(explicit, [f"istioctl-{istio_version}", "istioctl"], env)


def _istioctl_detail(explicit: str | None, version: str) -> str:
    if explicit:
        return f"--istioctl {explicit} is not an executable file"
    return f"neither istioctl-{version} nor istioctl on PATH; give --istioctl"
