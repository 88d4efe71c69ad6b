"""The run plan of the cluster targets: what runs where, in which CI job, and how long it should take.

Why this exists: a cluster run costs minutes per scenario, and the e2e workflow's timeouts used to be
guesses that the suite outgrew (26 scenarios at 20-40 s each plus ~80 steps at 8-15 s each is 19-37
minutes per mode, against a 20-minute job timeout). The plan is computed from the scenario files
themselves, so the job matrix, each job's `timeout-minutes` and what a run prints before it starts can
never disagree with the suite:

- `authz-conformance plan policies --mesh kind [--mesh-mode M] [--istio-version V]` prints it;
- `--format github-e2e` / `github-upgrade` prints the workflow's job matrices (one job per mode, Istio
  release and shard, each with its file list, estimate and timeout);
- `session_plan_text()` is what `--mesh kind` / `--mesh cluster` print before they start.

The cost model (`Costs`) is the time budget the README and kind.py document, as numbers: a low and a
high figure per phase, per scenario and per step (plus a little per probe beyond ten in a step, and per
waypoint in waypoint mode). These are estimates until the step timings of real runs replace them;
shards are sized on the HIGH figures so that every e2e job's estimate stays within `E2E_JOB_BUDGET`
(10 minutes on a 4-vCPU runner), and each job's timeout is its high estimate times `TIMEOUT_MARGIN`.

Batches: a scenario with a policy in the mesh root namespace (mesh-wide AuthorizationPolicy or
PeerAuthentication) affects every workload of its cluster, so it must run alone; all other scenarios
live in their own run-prefixed namespaces and may share a cluster concurrently. The suite runs the
scenarios of one job one after another today, so the estimates add them up (a concurrent runner could
only make a job shorter).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.errors import ScenarioError
from conformance.mesh.cluster.matrix import Matrix
from conformance.mesh.cluster.matrix import load as load_matrix
from conformance.model import MODES, Mode, Scenario
from conformance.scenario import load as load_scenario
from conformance.scenario import sniff
from conformance.versions import IstioVersion

E2E_JOB_BUDGET = 10 * 60.0  # seconds: the high estimate of one e2e job (one mode x release x shard)
UPGRADE_JOB_BUDGET = 25 * 60.0  # seconds: an upgrade job runs its shard twice around the upgrade
TIMEOUT_MARGIN = 1.5  # timeout-minutes = ceil(high estimate x margin): first real runs may be slower


@dataclass(frozen=True)
class Costs:
    """Seconds per phase as (low, high); the README's "Running on clusters" time budget, in numbers.

    Sources: the budget kind.py's docstring and the README state (4-vCPU GitHub runner), which come
    from the phases each job runs (e2e.yml): runner setup + pip + tool download ~1.5 min, kind create
    ~1-1.5 min, istioctl install + rollouts ~1.5-2 min, per scenario 20-40 s, per step 8-15 s,
    teardown ~10 s. The per-probe and per-waypoint terms make a heavy scenario cost more than a light
    one: one exec runs a source's probes one after another (execprobe.py), and a waypoint is a Gateway
    to program plus a Deployment to roll out (session.py).
    """

    runner_setup: tuple[float, float] = (60.0, 90.0)
    kind_create: tuple[float, float] = (60.0, 90.0)
    istio_install: tuple[float, float] = (90.0, 120.0)
    gateway_api: tuple[float, float] = (10.0, 20.0)
    teardown: tuple[float, float] = (5.0, 10.0)
    scenario: tuple[float, float] = (20.0, 40.0)
    waypoint: tuple[float, float] = (10.0, 20.0)  # per waypoint, waypoint mode only
    step: tuple[float, float] = (8.0, 15.0)
    # `istioctl analyze -n <ns>` once per namespace per step (session.py _analyze), beyond the first one
    # the `step` figure includes: each run starts istioctl and reads the cluster's configuration
    analyze_namespace: tuple[float, float] = (1.5, 3.0)
    probe_beyond: int = 10  # probes per step included in `step`
    probe: tuple[float, float] = (0.3, 0.5)  # per probe beyond `probe_beyond`, for >= 3 rounds
    upgrade: tuple[float, float] = (150.0, 300.0)  # new control plane, data plane roll, restarts, settle


COSTS = Costs()


@dataclass(frozen=True)
class ScenarioCost:
    """One scenario in one mode: what it holds and what it is estimated to cost."""

    path: str
    name: str
    mode: Mode
    steps: int
    probes: int
    waypoints: int
    mesh_wide: bool
    low: float
    high: float


def scenario_cost(scenario: Scenario, path: str, mode: Mode, costs: Costs = COSTS) -> ScenarioCost:
    """The estimate of one scenario in one mode, from its steps, probes and waypoints."""
    waypoints = len(scenario.waypoints) if mode == "waypoint" else 0
    low = costs.scenario[0] + waypoints * costs.waypoint[0]
    high = costs.scenario[1] + waypoints * costs.waypoint[1]
    probes = 0
    namespaces = len({w.namespace for w in scenario.workloads}
                     | ({w.namespace for w in scenario.waypoints} if mode == "waypoint" else set()))
    more_analyze = max(0, namespaces - 1)
    for step in scenario.steps:
        n = len(step.expectations)
        probes += n
        extra = max(0, n - costs.probe_beyond)
        low += costs.step[0] + extra * costs.probe[0] + more_analyze * costs.analyze_namespace[0]
        high += costs.step[1] + extra * costs.probe[1] + more_analyze * costs.analyze_namespace[1]
    root = scenario.mesh.root_namespace
    mesh_wide = any(m.namespace == root for step in scenario.steps for m in step.policies)
    return ScenarioCost(path, scenario.name, mode, len(scenario.steps), probes, waypoints, mesh_wide, low, high)


@dataclass(frozen=True)
class Shard:
    """The scenarios one CI job runs (pytest is given exactly these files)."""

    index: int  # from 1
    count: int
    scenarios: tuple[ScenarioCost, ...]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(s.path for s in self.scenarios)

    @property
    def low(self) -> float:
        return sum(s.low for s in self.scenarios)

    @property
    def high(self) -> float:
        return sum(s.high for s in self.scenarios)

    def batches(self) -> list[tuple[ScenarioCost, ...]]:
        """Mesh-wide scenarios alone, one batch each; all the others together (own namespaces each)."""
        shared = tuple(s for s in self.scenarios if not s.mesh_wide)
        alone = [(s,) for s in self.scenarios if s.mesh_wide]
        return ([shared] if shared else []) + alone


def shard(costs: Sequence[ScenarioCost], budget: float) -> list[tuple[ScenarioCost, ...]]:
    """Fewest shards whose high estimates fit `budget`: longest first onto the least loaded shard.

    Deterministic (ties broken by path), so the plan job and the tests compute the same matrix. A
    scenario longer than the budget gets a shard of its own (and the tests flag it).
    """
    items = sorted(costs, key=lambda c: (-c.high, c.path))
    if not items:
        return []
    n = max(1, math.ceil(sum(c.high for c in items) / budget))
    while True:
        bins: list[list[ScenarioCost]] = [[] for _ in range(n)]
        for c in items:
            target = min(range(n), key=lambda i: (sum(x.high for x in bins[i]), i))
            bins[target].append(c)
        if max(sum(x.high for x in b) for b in bins) <= budget or n >= len(items):
            return [tuple(sorted(b, key=lambda c: c.path)) for b in bins if b]
        n += 1


@dataclass(frozen=True)
class ModePlan:
    mode: Mode
    profile: str
    cluster: str
    fixed: tuple[float, float]  # per job: runner, cluster, Istio, teardown
    scenarios: tuple[ScenarioCost, ...]
    shards: tuple[Shard, ...]

    def job(self, shard: Shard) -> tuple[float, float]:
        return self.fixed[0] + shard.low, self.fixed[1] + shard.high


@dataclass(frozen=True)
class Plan:
    mesh: str
    istio: str
    kind: str | None
    node_image: str | None
    modes: tuple[ModePlan, ...]
    budget: float
    skipped: tuple[str, ...] = field(default=())


def scenario_files(paths: Iterable[str | Path]) -> list[str]:
    """Scenario files under the given files or directories (recognised by content, as pytest collects)."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        candidates = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
        out += [str(c) for c in candidates if c.suffix in (".yaml", ".yml") and sniff(c)]
    return sorted(dict.fromkeys(out))


def _fixed(mesh: str, gateway_api: bool, costs: Costs) -> tuple[float, float]:
    if mesh != "kind":
        return 0.0, 0.0
    parts = [costs.runner_setup, costs.kind_create, costs.istio_install, costs.teardown]
    if gateway_api:
        parts.append(costs.gateway_api)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def build(paths: Iterable[str | Path], mesh: str = "kind", modes: Sequence[Mode] | None = None,
          istio_version: str | None = None, matrix: Matrix | None = None, budget: float = E2E_JOB_BUDGET,
          costs: Costs = COSTS, kube_context: str | None = None, extra: tuple[float, float] = (0.0, 0.0),
          runs: int = 1, cluster_base: str | None = None) -> Plan:
    """The plan of one run (`mesh` kind or cluster) of the scenario files under `paths`.

    `extra` and `runs` describe an upgrade job: its fixed cost gains the upgrade itself, and its
    scenarios run twice (before and after), so a shard's budget is what is left divided by `runs`.
    """
    matrix = matrix or load_matrix()
    version = istio_version or matrix.default_istio
    release = matrix.release(version) if mesh == "kind" else None
    parsed = IstioVersion.parse(version)
    wanted: tuple[Mode, ...] = tuple(modes) if modes else tuple(m for m in MODES if m in matrix.modes)
    loaded: list[tuple[str, Scenario]] = []
    skipped: list[str] = []
    for f in scenario_files(paths):
        try:
            loaded.append((f, load_scenario(f, parsed)))
        except ScenarioError as exc:
            skipped.append(f"{f}: {str(exc).splitlines()[0]}")
    plans = []
    for mode in wanted:
        install = matrix.modes[mode]
        costs_here = [scenario_cost(s, f, mode, costs) for f, s in loaded if mode in s.modes]
        fixed = _fixed(mesh, install.gateway_api, costs)
        fixed = (fixed[0] + extra[0], fixed[1] + extra[1])
        room = max(60.0, (budget - fixed[1]) / runs)
        bins = shard(costs_here, room) if mesh == "kind" else ([tuple(costs_here)] if costs_here else [])
        shards = tuple(Shard(i + 1, len(bins), b) for i, b in enumerate(bins))
        if mesh == "kind":
            from conformance.mesh.cluster.kind import cluster_name

            # the name the kind target will give it (`--cluster-name` as the run passes it; CI's e2e, upgrade)
            cluster = cluster_name(cluster_base, mode, release.version if release else version)
        else:
            cluster = f"existing (context {kube_context or 'current'})"
        plans.append(ModePlan(mode, install.profile if mesh == "kind" else "detected at start", cluster,
                              fixed, tuple(sorted(costs_here, key=lambda c: c.path)), shards))
    return Plan(mesh, release.version if release else version, matrix.kind_version if mesh == "kind" else None,
                matrix.node_image if mesh == "kind" else None, tuple(plans), budget, tuple(skipped))


def timeout_minutes(high_seconds: float) -> int:
    """A job's `timeout-minutes`: its high estimate with the margin, rounded up."""
    return math.ceil(high_seconds * TIMEOUT_MARGIN / 60.0)


def _m(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def render(plan: Plan, runs: int = 1) -> str:
    """The plan as text: cluster, Istio and profile per mode, batches, shards and per-job estimates."""
    lines = [f"Plan: --mesh {plan.mesh}, Istio {plan.istio}"
             + (f", kind {plan.kind}, node image {plan.node_image}" if plan.kind else "")]
    sizing = (f"shards sized so each job's high estimate is <= {_m(plan.budget)} min" if math.isfinite(plan.budget)
              else "one run, no shards")
    lines.append(f"  estimates: low-high minutes (cost model: conformance/mesh/cluster/plan.py Costs); {sizing}")
    for mp in plan.modes:
        total_low = sum(s.low for s in mp.scenarios)
        total_high = sum(s.high for s in mp.scenarios)
        lines.append(f"- {mp.mode}: cluster {mp.cluster}, profile {mp.profile}; {len(mp.scenarios)} scenarios, "
                     f"{sum(s.steps for s in mp.scenarios)} steps, scenarios {_m(total_low)}-{_m(total_high)} min "
                     f"in all; {len(mp.shards)} shard(s)")
        for sh in mp.shards:
            low, high = mp.job(sh)
            low += (runs - 1) * sh.low
            high += (runs - 1) * sh.high
            lines.append(f"  shard {sh.index}/{sh.count}: job {_m(low)}-{_m(high)} min (fixed {_m(mp.fixed[1])}, "
                         f"scenarios {_m(sh.low)}-{_m(sh.high)} x{runs}), timeout {timeout_minutes(high)} min")
            for i, batch in enumerate(sh.batches(), 1):
                alone = batch[0].mesh_wide
                what = "alone (mesh-wide policy)" if alone else "shared cluster, own namespaces"
                lines.append(f"    batch {i} [{what}]: " + ", ".join(
                    f"{Path(s.path).name} ({s.steps} step(s), {_m(s.high)} min)" for s in batch))
    for s in plan.skipped:
        lines.append(f"  not planned: {s}")
    return "\n".join(lines)


def github_e2e(paths: Iterable[str | Path], matrix: Matrix | None = None, costs: Costs = COSTS) -> dict[str, Any]:
    """The e2e workflow's `strategy.matrix`: one job per mode x Istio release x shard."""
    matrix = matrix or load_matrix()
    files = scenario_files(paths)
    include = []
    for version in matrix.matrix_istio:
        release = matrix.release(version)
        plan = build(files, "kind", matrix.matrix_modes, version, matrix, E2E_JOB_BUDGET, costs)
        for mp in plan.modes:
            for sh in mp.shards:
                _low, high = mp.job(sh)
                include.append({"mode": mp.mode, "istio": version, "gateway_api": release.gateway_api,
                                "node_image": matrix.node_image, "kind": matrix.kind_version,
                                "shard": f"{sh.index}/{sh.count}", "shard_id": f"{sh.index}-of-{sh.count}",
                                "files": " ".join(sh.files),
                                "estimate_minutes": round(high / 60, 1), "timeout": timeout_minutes(high)})
    return {"include": include}


def github_upgrade(paths: Iterable[str | Path], matrix: Matrix | None = None, costs: Costs = COSTS) -> dict[str, Any]:
    """The upgrade jobs: per upgrade mode and shard, the suite twice around one upgrade, each its own cluster."""
    matrix = matrix or load_matrix()
    files = scenario_files(paths)
    plan = build(files, "kind", matrix.upgrade_modes, matrix.upgrade_from, matrix, UPGRADE_JOB_BUDGET, costs,
                 extra=costs.upgrade, runs=2)
    include = []
    for mp in plan.modes:
        for sh in mp.shards:
            _low, high = mp.job(sh)
            high += sh.high  # the second run, after the upgrade
            include.append({"mode": mp.mode, "shard": f"{sh.index}/{sh.count}", "shard_id": f"{sh.index}-of-{sh.count}",
                            "files": " ".join(sh.files),
                            "estimate_minutes": round(high / 60, 1), "timeout": timeout_minutes(high)})
    return {"include": include}


def session_plan_text(paths: Iterable[str | Path], mesh: str, modes: Sequence[Mode] | None,
                      istio_version: str, kube_context: str | None = None, cluster_base: str | None = None) -> str:
    """What `--mesh kind` / `--mesh cluster` print before they start (the plugin calls this).

    Never raises for a plan it cannot make: the run itself reports what is wrong, the plan only informs.
    """
    try:
        plan = build(paths, mesh, modes, istio_version, budget=float("inf"), kube_context=kube_context,
                     cluster_base=cluster_base)
    except Exception as exc: # informative only; the run reports the real error
        return f"Plan: not available ({type(exc).__name__}: {exc})"
    return render(plan)
