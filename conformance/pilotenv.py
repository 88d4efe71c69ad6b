"""istiod feature flags that change authorization (`mesh.pilotEnv`): which ones the suite models, their
defaults per release, and how istiod reads their values.

Why this exists: a handful of istiod environment variables change what reaches the proxies (a synthetic
ztunnel ALLOW for waypoints, L4 policies at a waypoint's HBONE termination, dry-run policies at ztunnel,
several CUSTOM providers on one workload). A scenario states the values it was written for; the engine,
the local mesh's compiler and the cluster targets' install all read them from here, so the three agree on
the names, the defaults and the releases that have each flag. Nothing here decides a verdict: the engine
(`conformance.engine`) and the local mesh (`conformance.mesh.local`) each implement the flags' effects on
their own (they must stay independent, DESIGN.md §6).

Sources (istio/istio):
- pilot/pkg/features/ambient.go@1.30.3 l.56-59 PILOT_AUTO_ALLOW_WAYPOINT_POLICY (registerAmbient, false; also
  in 1.22.0), l.84-87 ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES (env.Register, false; first in 1.25.0),
  l.97-100 AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY (registerAmbient, false; first in 1.29.0);
- pilot/pkg/features/security.go@1.30.3 l.97-102 PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS (false; first in
  1.30.0);
- pkg/env/var.go@1.30.3 BoolVar.Lookup: the value goes through strconv.ParseBool; an unparsable one is
  logged ("Invalid environment variable value ...") and the DEFAULT is used. The suite refuses such a value
  instead: a scenario saying `"yes"` would otherwise silently run with the flag off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from conformance.versions import (
    AMBIENT_DRY_RUN_FLAG,
    LAYERED_WAYPOINT_FLAG,
    MULTIPLE_CUSTOM_PROVIDERS_FLAG,
    Change,
    IstioVersion,
)

# strconv.ParseBool (Go src/strconv/atob.go): exactly these spellings.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool: True / False, or None for anything else (istiod would log and use the default)."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


@dataclass(frozen=True)
class PilotFlag:
    """One istiod environment variable the suite models."""

    name: str
    default: bool
    summary: str  # what turning it on changes, in a scenario's terms
    source: str  # where istiod registers and reads it
    introduced: Change | None = None  # None: every modelled release (1.22.0+) has it
    # registerAmbient (features/ambient.go): read only when PILOT_ENABLE_AMBIENT is set (the ambient profile);
    # otherwise the default-without-ambient (false) holds whatever the environment says
    ambient_only: bool = False

    def available(self, version: IstioVersion) -> bool:
        return self.introduced is None or version.has(self.introduced)

    def first_release(self) -> str:
        if self.introduced is None:
            return "1.22.0"
        major, minor, patch = self.introduced.first[0]
        return f"{major}.{minor}.{patch}"


AUTO_ALLOW_WAYPOINT = PilotFlag(
    "PILOT_AUTO_ALLOW_WAYPOINT_POLICY", False,
    "ztunnel gets a synthetic ALLOW `istio_allow_waypoint_<ns>_<waypoint>` for the waypoint's identity on every "
    "workload that uses that waypoint: waypoint traffic passes the destination's ALLOW policies, traffic that "
    "bypasses the waypoint meets an ALLOW policy it does not match",
    "features/ambient.go@1.30.3 l.56; serviceregistry/ambient/policies.go implicitWaypointPolicy, "
    "workloads.go implicitWaypointPolicies", None, ambient_only=True)
LAYERED_WAYPOINT = PilotFlag(
    "ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES", False,
    "policies selecting the waypoint's own pod (selector, namespace-wide, mesh-wide; targetRefs to its Gateway) "
    "are enforced as L4 rules at its HBONE termination, before its L7 policies",
    "features/ambient.go@1.30.3 l.84; networking/core/listener_waypoint.go@1.30.3 l.276-281 "
    "(NewWaypointTerminationBuilder, BuildTCPRulesAsHTTPFilter)", LAYERED_WAYPOINT_FLAG)
AMBIENT_DRY_RUN = PilotFlag(
    "AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY", False,
    "istiod sends dry-run policies to ztunnel marked dryRun; ztunnel only logs their matches (no verdict "
    "changes; without the flag they are not sent at all, istio/istio#55414)",
    "features/ambient.go@1.30.3 l.97; serviceregistry/ambient/authorization.go@1.30.3 l.409; "
    "ztunnel src/state.rs@1.30.3 assert_rbac l.576-617", AMBIENT_DRY_RUN_FLAG, ambient_only=True)
MULTIPLE_CUSTOM_PROVIDERS = PilotFlag(
    "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS", False,
    "several CUSTOM providers on one workload each get their own shadow RBAC + ext_authz pair (in provider-name "
    "order; a request their rules both match must be allowed by both) instead of an RBAC deny of all their rules",
    "features/security.go@1.30.3 l.97; security/authz/builder/builder.go@1.30.3 l.350, l.459",
    MULTIPLE_CUSTOM_PROVIDERS_FLAG)

FLAGS: tuple[PilotFlag, ...] = (AUTO_ALLOW_WAYPOINT, LAYERED_WAYPOINT, AMBIENT_DRY_RUN, MULTIPLE_CUSTOM_PROVIDERS)
BY_NAME: dict[str, PilotFlag] = {f.name: f for f in FLAGS}


def supported() -> str:
    """The modelled flags, for error messages: `NAME (from 1.25.0, default false), ...`."""
    return ", ".join(f"{f.name} (from {f.first_release()}, default {str(f.default).lower()})" for f in FLAGS)


def problem(name: str, value: object, version: IstioVersion) -> str | None:
    """Why `name: value` cannot be a `mesh.pilotEnv` entry at `version`, or None."""
    flag = BY_NAME.get(name)
    if flag is None:
        return (f"unknown istiod feature flag {name!r}: the suite models only the flags that change authorization: "
                f"{supported()}")
    if not isinstance(value, str):
        return (f"{name}: an environment variable's value is a string; quote it ({name}: \"true\"), as in a "
                "Deployment's env")
    if parse_bool(value) is None:
        return (f"{name}: {value!r} is not a boolean istiod can read (strconv.ParseBool: 1, t, T, TRUE, true, True, "
                "0, f, F, FALSE, false, False); istiod would log it as invalid and keep the default "
                f"{str(flag.default).lower()} (pkg/env/var.go BoolVar.Lookup)")
    if not flag.available(version):
        return (f"{name} does not exist in Istio {version}: istiod registers it from {flag.first_release()} "
                f"({flag.introduced.source if flag.introduced else flag.source}); an older istiod ignores the variable")
    return None


def value(env: Iterable[tuple[str, str]] | Mapping[str, str], flag: PilotFlag) -> bool:
    """The flag's value in istiod given `env` (the scenario's `mesh.pilotEnv`): Istio's default when absent."""
    items = env.items() if isinstance(env, Mapping) else env
    for name, text in items:
        if name == flag.name:
            parsed = parse_bool(text)
            return flag.default if parsed is None else parsed
    return flag.default


def normalized(env: Iterable[tuple[str, str]] | Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The flags whose value differs from Istio's default, as (name, "true"|"false"), sorted: what an install
    must set, and the key that tells two scenarios' istiod settings apart (`true` and `1` are the same)."""
    out = []
    for flag in FLAGS:
        v = value(env, flag)
        if v != flag.default:
            out.append((flag.name, str(v).lower()))
    return tuple(out)


def describe(env: Iterable[tuple[str, str]] | Mapping[str, str]) -> str:
    """`NAME=true, ...` or `Istio's defaults`, for messages."""
    pairs = normalized(env)
    return ", ".join(f"{k}={v}" for k, v in pairs) if pairs else "Istio's defaults"
