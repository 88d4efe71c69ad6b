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

Concurrency: the cluster targets run the scenarios of a job side by side (schedule.py,
`--cluster-concurrency`, DEFAULT_CONCURRENCY at once), each in its own run-prefixed namespaces; a
scenario with a policy in the mesh root namespace (naming.mesh_wide_policies) runs alone from the first
step through its close. The estimate of a job is not a sum: `simulate` replays the scheduler's own rules
(workers taking runs in order, a shared claim per step, the exclusive claim with writer preference) on
the per-phase figures, with every phase stretched by `Costs.contention` while scenarios share the
runner's 4 vCPUs. The contention figure is an assumption, stated as such, until step timings from real
runs replace it.
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
from conformance.mesh.cluster.naming import mesh_wide_policies, not_built_for_clusters
from conformance.mesh.cluster.options import DEFAULT_CONCURRENCY
from conformance.model import MODES, Mode, Scenario
from conformance.scenario import load as load_scenario
from conformance.scenario import scenario_paths
from conformance.versions import IstioVersion

E2E_JOB_BUDGET = 10 * 60.0  # seconds: the high estimate of one e2e job (one mode x release x shard)
UPGRADE_JOB_BUDGET = 25 * 60.0  # seconds: an upgrade job runs its shard twice around the upgrade
STEP_RESERVE_MINUTES = 2  # of a job's timeout, kept for the steps after the tests (log export, uploads)
TIMEOUT_MARGIN = 1.5  # timeout-minutes = ceil(high estimate x margin): first real runs may be slower


@dataclass(frozen=True)
class Costs:
    """Seconds per phase as (low, high); the README's "Running on clusters" time budget, in numbers.

    Sources: the budget kind.py's docstring and the README state (4-vCPU GitHub runner), which come
    from the phases each job runs (e2e.yml): runner setup + pip + tool download ~1.5 min, kind create
    ~1-1.5 min, istioctl install + rollouts ~1.5-2 min, per scenario start (namespaces, workloads,
    rollouts, canary) 20-40 s, per step 8-15 s, teardown ~10 s. The per-probe and per-waypoint terms
    make a heavy scenario cost more than a light one: one exec runs a source's probes one after another
    (execprobe.py), and a waypoint is a Gateway to program plus a Deployment to roll out (session.py).
    `istioctl analyze` runs beside the barrier, all namespaces at once (session.py `apply`): a step waits
    for the longer of the two, which `step` covers, so there is no per-namespace term; the analyze
    processes of scenarios side by side share the runner's CPUs (part of `contention`). A scenario's
    close deletes its namespaces without waiting for them to go; a mesh-wide one also waits until no
    proxy holds its root-namespace objects (`close`).
    """

    runner_setup: tuple[float, float] = (60.0, 90.0)
    kind_create: tuple[float, float] = (60.0, 90.0)
    istio_install: tuple[float, float] = (90.0, 120.0)
    gateway_api: tuple[float, float] = (10.0, 20.0)
    teardown: tuple[float, float] = (5.0, 10.0)
    scenario: tuple[float, float] = (20.0, 40.0)  # a scenario's start, its canary included
    canary: tuple[float, float] = (2.0, 5.0)  # the start's last part: probes under a shared claim
    waypoint: tuple[float, float] = (10.0, 20.0)  # per waypoint, waypoint mode only
    # per ingress gateway, every mode: one more injected Deployment to roll out and an Istio Gateway plus its
    # VirtualServices for istiod to push before the canary's route probes answer (ASSUMED, like `waypoint`)
    gateway: tuple[float, float] = (5.0, 15.0)
    step: tuple[float, float] = (8.0, 15.0)
    probe_beyond: int = 10  # probes per step included in `step`
    probe: tuple[float, float] = (0.3, 0.5)  # per probe beyond `probe_beyond`, for >= 3 rounds
    close: tuple[float, float] = (1.0, 3.0)  # deletes sent; namespaces go in the background
    close_mesh_wide: tuple[float, float] = (3.0, 8.0)  # plus the barrier: the root objects gone from proxies
    # Every phase's factor while scenarios run side by side on one 4-vCPU runner (istiod's pushes, the
    # kubelet's execs and the API server are shared). ASSUMED, not measured: 1.0 (the phases are waits)
    # to 1.5 (half again as long); real runs' step timings are to replace it.
    contention: tuple[float, float] = (1.0, 1.5)
    upgrade: tuple[float, float] = (150.0, 300.0)  # new control plane, data plane roll, restarts, settle
    # A scenario with CUSTOM providers: until istiod serves its mesh config change (meshconfig.py). Kubelet
    # projects a changed ConfigMap into the volume at the pod's next sync, within its sync period (1 min by
    # default; Kubernetes docs, "Mounted ConfigMaps are updated automatically"); the session writes it before
    # it waits for its rollouts (20-40 s, in `scenario`), so what remains is 0-40 s, plus istiod's reload.
    # A gRPC provider's packages (ext-authz-grpc-requirements.txt) install during its rollout.
    mesh_config: tuple[float, float] = (5.0, 45.0)


COSTS = Costs()


Span = tuple[float, float]  # (low, high) seconds


@dataclass(frozen=True)
class ScenarioCost:
    """One scenario in one mode: what it holds and what each of its phases is estimated to cost."""

    path: str
    name: str
    mode: Mode
    steps: int
    probes: int
    waypoints: int
    alone_from: int | None  # the first step with a mesh-wide policy: from it through close, alone
    start: Span
    step_costs: tuple[Span, ...]
    close: Span

    @property
    def mesh_wide(self) -> bool:
        return self.alone_from is not None

    def _total(self, which: int) -> float:
        return self.start[which] + sum(c[which] for c in self.step_costs) + self.close[which]

    @property
    def low(self) -> float:
        """Alone on the cluster, one phase after another (no contention)."""
        return self._total(0)

    @property
    def high(self) -> float:
        return self._total(1)


def scenario_cost(scenario: Scenario, path: str, mode: Mode, costs: Costs = COSTS) -> ScenarioCost:
    """The estimate of one scenario in one mode, per phase, from its steps, probes, waypoints and ingress gateways."""
    waypoints = len(scenario.waypoints) if mode == "waypoint" else 0
    gateways = sum(1 for w in scenario.workloads if w.is_gateway)
    start = (costs.scenario[0] + waypoints * costs.waypoint[0] + gateways * costs.gateway[0],
             costs.scenario[1] + waypoints * costs.waypoint[1] + gateways * costs.gateway[1])
    if scenario.mesh.extension_providers:
        start = (start[0] + costs.mesh_config[0], start[1] + costs.mesh_config[1])
    steps = []
    for step in scenario.steps:
        extra = max(0, len(step.expectations) - costs.probe_beyond)
        steps.append((costs.step[0] + extra * costs.probe[0], costs.step[1] + extra * costs.probe[1]))
    alone_from = next((i for i, st in enumerate(scenario.steps) if mesh_wide_policies(scenario, st)), None)
    close = costs.close if alone_from is None else costs.close_mesh_wide
    return ScenarioCost(path, scenario.name, mode, len(scenario.steps),
                        sum(len(st.expectations) for st in scenario.steps), waypoints, alone_from, start,
                        tuple(steps), close)


@dataclass
class _Lane:
    """One worker thread of the scheduler, in the simulation."""

    ready: float = 0.0  # when its current phase ends
    run: ScenarioCost | None = None
    phase: str = "idle"  # idle, start, canary, step, close
    canaried: bool = False
    steps_done: int = 0
    blocked: bool = False
    queued_writer: bool = False
    holds: str = ""  # "", "shared" (inside a step), "exclusive" (a mesh-wide run, first step to close)


def simulate(scenarios: Sequence[ScenarioCost], workers: int, which: int, costs: Costs = COSTS) -> float:
    """Seconds until the scheduler (schedule.py) would be done with `scenarios`, given in run order.

    The same rules as `Scheduler` and `Exclusivity`: `workers` threads take runs in order; a run starts
    (overlapping anything) but for its canary, which takes a shared claim (`quiet_mesh`), then takes a
    shared claim per step; from its first step with a mesh-wide policy (`alone_from`) a run takes the
    exclusive claim and keeps it through its close; a queued exclusive claim blocks new shared ones.
    `which` is 0 for the low figures, 1 for the high ones; with more than one worker and more than one
    scenario every phase is stretched by `costs.contention` (a scenario alone shares the runner with none).
    """
    factor = costs.contention[which] if workers > 1 and len(scenarios) > 1 else 1.0
    pending = list(scenarios)
    lanes = [_Lane() for _ in range(max(1, workers))]
    readers, writer, queued = 0, False, 0
    now = 0.0
    while True:
        active = [lane for lane in lanes if not lane.blocked and lane.ready != math.inf]
        if not active:
            if any(lane.blocked for lane in lanes):
                raise RuntimeError("plan.simulate: every worker waits (a scheduling rule is wrong)")
            return now
        lane = min(active, key=lambda x: (x.ready, lanes.index(x)))
        now = lane.ready
        freed = False
        # the phase that just ended
        if lane.holds == "shared":
            readers, lane.holds, freed = readers - 1, "", True
        if lane.phase == "close":
            if lane.holds == "exclusive":
                writer, lane.holds, freed = False, "", True
            lane.run, lane.phase = None, "idle"
        # the next one
        run = lane.run
        if run is None:
            if not pending:
                lane.ready = math.inf
            else:
                lane.run = run = pending.pop(0)
                deploy = max(0.0, run.start[which] - costs.canary[which])
                lane.phase, lane.steps_done, lane.canaried = "start", 0, False
                lane.ready = now + deploy * factor
        elif not lane.canaried:
            if writer or queued:
                lane.blocked = True
            else:
                readers, lane.holds, lane.canaried = readers + 1, "shared", True
                lane.phase, lane.ready = "canary", now + min(costs.canary[which], run.start[which]) * factor
        elif lane.steps_done < run.steps:
            alone = run.alone_from is not None and lane.steps_done >= run.alone_from
            if alone and lane.holds != "exclusive":
                if writer or readers:
                    queued += 0 if lane.queued_writer else 1
                    lane.queued_writer = lane.blocked = True
                else:
                    queued -= 1 if lane.queued_writer else 0
                    lane.queued_writer, writer, lane.holds = False, True, "exclusive"
            elif not alone:
                if writer or queued:
                    lane.blocked = True
                else:
                    readers, lane.holds = readers + 1, "shared"
            if not lane.blocked:
                lane.phase, lane.ready = "step", now + run.step_costs[lane.steps_done][which] * factor
                lane.steps_done += 1
        else:
            lane.phase, lane.ready = "close", now + run.close[which] * factor
        if freed:
            for other in lanes:
                if other.blocked:
                    other.blocked, other.ready = False, now


@dataclass(frozen=True)
class Shard:
    """The scenarios one CI job runs (pytest is given exactly these files), side by side on one cluster."""

    index: int  # from 1
    count: int
    scenarios: tuple[ScenarioCost, ...]
    workers: int = DEFAULT_CONCURRENCY
    costs: Costs = COSTS

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(s.path for s in self.scenarios)

    @property
    def low(self) -> float:
        return simulate(self.scenarios, self.workers, 0, self.costs)

    @property
    def high(self) -> float:
        return simulate(self.scenarios, self.workers, 1, self.costs)

    @property
    def alone(self) -> tuple[ScenarioCost, ...]:
        return tuple(s for s in self.scenarios if s.mesh_wide)

    @property
    def shared(self) -> tuple[ScenarioCost, ...]:
        return tuple(s for s in self.scenarios if not s.mesh_wide)


def shard(costs: Sequence[ScenarioCost], budget: float, workers: int = DEFAULT_CONCURRENCY,
          model: Costs = COSTS) -> list[tuple[ScenarioCost, ...]]:
    """Fewest shards whose simulated high estimates fit `budget`: longest first onto the least loaded one.

    Deterministic (ties broken by path), so the plan job and the tests compute the same matrix. Each
    shard's scenarios are in path order, the order pytest collects and the scheduler starts them. A
    scenario longer than the budget gets a shard of its own (and the tests flag it).
    """
    items = sorted(costs, key=lambda c: (-c.high, c.path))
    if not items:
        return []

    def time(scenarios: Sequence[ScenarioCost]) -> float:
        return simulate(sorted(scenarios, key=lambda c: c.path), workers, 1, model)

    n = max(1, math.ceil(time(items) / budget))
    while True:
        bins: list[list[ScenarioCost]] = [[] for _ in range(n)]
        for c in items:
            target = min(range(n), key=lambda i: (sum(x.high for x in bins[i]), i))
            bins[target].append(c)
        if max(time(b) for b in bins) <= budget or n >= len(items):
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
    workers: int = DEFAULT_CONCURRENCY
    costs: Costs = COSTS

    def job(self, shard: Shard) -> tuple[float, float]:
        return self.fixed[0] + shard.low, self.fixed[1] + shard.high

    def whole(self) -> tuple[float, float]:
        """The whole mode in one job on one runner, unsharded: fixed costs plus the simulated schedule."""
        return (self.fixed[0] + simulate(self.scenarios, self.workers, 0, self.costs),
                self.fixed[1] + simulate(self.scenarios, self.workers, 1, self.costs))


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
    return sorted(scenario_paths(paths).files)


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
          runs: int = 1, cluster_base: str | None = None, workers: int = DEFAULT_CONCURRENCY) -> Plan:
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
            scenario = load_scenario(f, parsed)
        except ScenarioError as exc:
            skipped.append(f"{f}: {str(exc).splitlines()[0]}")
            continue
        missing = not_built_for_clusters(scenario)
        if missing:  # the targets skip it at once: no shard, no job, no estimate for it
            skipped.append(f"{f}: {missing}")
            continue
        loaded.append((f, scenario))
    plans = []
    for mode in wanted:
        install = matrix.modes[mode]
        costs_here = [scenario_cost(s, f, mode, costs) for f, s in loaded if mode in s.modes]
        fixed = _fixed(mesh, install.gateway_api, costs)
        fixed = (fixed[0] + extra[0], fixed[1] + extra[1])
        room = max(60.0, (budget - fixed[1]) / runs)
        bins = shard(costs_here, room, workers, costs) if mesh == "kind" else \
            ([tuple(costs_here)] if costs_here else [])
        shards = tuple(Shard(i + 1, len(bins), b, workers, costs) for i, b in enumerate(bins))
        if mesh == "kind":
            from conformance.mesh.cluster.kind import cluster_name

            # the name the kind target will give it (`--cluster-name` as the run passes it; CI's e2e, upgrade)
            cluster = cluster_name(cluster_base, mode, release.version if release else version)
        else:
            cluster = f"existing (context {kube_context or 'current'})"
        plans.append(ModePlan(mode, install.profile if mesh == "kind" else "detected at start", cluster,
                              fixed, tuple(sorted(costs_here, key=lambda c: c.path)), shards, workers, costs))
    return Plan(mesh, release.version if release else version, matrix.kind_version if mesh == "kind" else None,
                matrix.node_image if mesh == "kind" else None, tuple(plans), budget, tuple(skipped))


def timeout_minutes(high_seconds: float) -> int:
    """A job's `timeout-minutes`: its high estimate with the margin, rounded up."""
    return math.ceil(high_seconds * TIMEOUT_MARGIN / 60.0)


def _m(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def render(plan: Plan, runs: int = 1) -> str:
    """The plan as text: cluster, Istio and profile per mode, what runs side by side and what alone, shards
    and per-job estimates, and the whole mode on one runner."""
    lines = [f"Plan: --mesh {plan.mesh}, Istio {plan.istio}"
             + (f", kind {plan.kind}, node image {plan.node_image}" if plan.kind else "")]
    sizing = (f"shards sized so each job's high estimate is <= {_m(plan.budget)} min" if math.isfinite(plan.budget)
              else "one run, no shards")
    workers = plan.modes[0].workers if plan.modes else DEFAULT_CONCURRENCY
    contention = plan.modes[0].costs.contention if plan.modes else COSTS.contention
    lines.append(f"  estimates: low-high minutes (cost model: conformance/mesh/cluster/plan.py Costs); {sizing}; "
                 f"{workers} scenario(s) at once (--cluster-concurrency), each phase x{contention[0]:g}-"
                 f"x{contention[1]:g} while they share the runner (assumed)")
    for mp in plan.modes:
        serial_low = sum(s.low for s in mp.scenarios)
        serial_high = sum(s.high for s in mp.scenarios)
        whole_low, whole_high = mp.whole()
        lines.append(f"- {mp.mode}: cluster {mp.cluster}, profile {mp.profile}; {len(mp.scenarios)} scenarios, "
                     f"{sum(s.steps for s in mp.scenarios)} steps; one after another {_m(serial_low)}-"
                     f"{_m(serial_high)} min; the whole mode in one job on one runner {_m(whole_low)}-"
                     f"{_m(whole_high)} min (fixed {_m(mp.fixed[0])}-{_m(mp.fixed[1])} included); "
                     f"{len(mp.shards)} shard(s)")
        for sh in mp.shards:
            low, high = mp.job(sh)
            low += (runs - 1) * sh.low
            high += (runs - 1) * sh.high
            lines.append(f"  shard {sh.index}/{sh.count}: job {_m(low)}-{_m(high)} min (fixed {_m(mp.fixed[1])}, "
                         f"scenarios {_m(sh.low)}-{_m(sh.high)} x{runs}), timeout {timeout_minutes(high)} min")
            if sh.shared:
                lines.append(f"    side by side, {min(sh.workers, len(sh.shared))} at once: " + ", ".join(
                    f"{Path(s.path).name} ({s.steps} step(s), {_m(s.high)} min)" for s in sh.shared))
            for s in sh.alone:
                lines.append(f"    alone from step {(s.alone_from or 0) + 1} to close (mesh-wide policy): "
                             f"{Path(s.path).name} ({s.steps} step(s), {_m(s.high)} min)")
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
                                "estimate_minutes": round(high / 60, 1), "timeout": timeout_minutes(high),
                                # the test step stops first: a job that hits its own limit is cancelled and
                                # skips failure() steps (the kind log export); 2 min left for export and uploads
                                "test_timeout": max(1, timeout_minutes(high) - STEP_RESERVE_MINUTES)})
    return {"include": include}


def github_upgrade(paths: Iterable[str | Path], matrix: Matrix | None = None, costs: Costs = COSTS) -> dict[str, Any]:
    """The upgrade jobs: per upgrade path (clusters/versions.yaml `upgrades`), mode and shard, the suite twice
    around one upgrade, each its own cluster."""
    matrix = matrix or load_matrix()
    files = scenario_files(paths)
    include = []
    for path in matrix.upgrades:
        plan = build(files, "kind", path.modes, path.source, matrix, UPGRADE_JOB_BUDGET, costs,
                     extra=costs.upgrade, runs=2)
        for mp in plan.modes:
            for sh in mp.shards:
                _low, high = mp.job(sh)
                high += sh.high  # the second run, after the upgrade
                # Each phase has its own limit from its own estimate, so a slow phase stops (and its logs are
                # exported) before the job's limit cancels everything. The cluster and Istio are made in the
                # ambient job's own step (Helm) but inside the first suite run in sidecar mode (the kind
                # target), which is timed with them (review finding).
                cluster = costs.kind_create[1] + costs.istio_install[1]
                phases = {"create_timeout": timeout_minutes(cluster),
                          "before_timeout": timeout_minutes(sh.high + (cluster if mp.mode == "sidecar" else 0)),
                          "upgrade_timeout": timeout_minutes(costs.upgrade[1]),
                          "after_timeout": timeout_minutes(sh.high)}
                used = sum(v for k, v in phases.items() if k != "create_timeout" or mp.mode == "ambient")
                timeout = max(timeout_minutes(high),
                              used + STEP_RESERVE_MINUTES + math.ceil(costs.runner_setup[1] / 60))
                include.append({"from": path.source, "to": path.target, "path_id": path.id, "mode": mp.mode,
                                "shard": f"{sh.index}/{sh.count}", "shard_id": f"{sh.index}-of-{sh.count}",
                                "files": " ".join(sh.files),
                                "estimate_minutes": round(high / 60, 1), "timeout": timeout, **phases})
    return {"include": include}


def session_plan_text(paths: Iterable[str | Path], mesh: str, modes: Sequence[Mode] | None,
                      istio_version: str, kube_context: str | None = None, cluster_base: str | None = None,
                      workers: int = DEFAULT_CONCURRENCY) -> str:
    """What `--mesh kind` / `--mesh cluster` print before they start (the plugin calls this), for the run's own
    `--cluster-concurrency` (`workers`).

    Never raises for a plan it cannot make: the run itself reports what is wrong, the plan only informs.
    """
    try:
        plan = build(paths, mesh, modes, istio_version, budget=float("inf"), kube_context=kube_context,
                     cluster_base=cluster_base, workers=workers)
    except Exception as exc: # informative only; the run reports the real error
        return f"Plan: not available ({type(exc).__name__}: {exc})"
    return render(plan)
