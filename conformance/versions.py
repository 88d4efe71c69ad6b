"""Istio versions: parsing, ordering, the releases the suite models and the behaviour changes it keys on.

This module is the ONE list every version check uses. `PINNED_PATCH` says which releases are modelled
(every patch of each minor up to the newest one the sources show); `CHANGES` lists every behaviour that
changed inside them, each with the first release of each minor that has it and the Istio issue, PR or
commit it comes from. The engine (`conformance/engine`), the scenario validation (`validation.py`) and
the local mesh (`conformance/mesh/local/release.py`) ask `IstioVersion.has(CHANGE)` (or
`CHANGE.carried_by(triple)`), never compare version numbers themselves, and `authz-conformance versions`
prints this table (docs/istio-versions.md holds the same one, checked by tests/test_versions.py).

Behaviour that changed inside a minor release (the dry-run change in 1.25.2, the regex escaping fixes
in 1.28.7 / 1.29.3) is keyed by patch, so a version given as `1.29` resolves to the newest patch the suite
models for it, never to an ambiguous "some 1.29".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from conformance.errors import UsageError

Triple = tuple[int, int, int]

# The newest modelled patch of each minor: a minor alone (`1.30`) resolves to it. 1.30.3 is the release
# Istio's golden data in tests/data/istio-golden comes from. 1.30.4, 1.30.5 and 1.31.0 have no tag in the
# istio/istio snapshot the suite was checked against: what each one is modelled from is in SOURCES below.
PINNED_PATCH: dict[tuple[int, int], int] = {
    (1, 22): 8,
    (1, 23): 6,
    (1, 24): 6,
    (1, 25): 5,
    (1, 26): 8,
    (1, 27): 9,
    (1, 28): 10,
    (1, 29): 6,
    (1, 30): 5,
    (1, 31): 0,
}
# The default stays the newest 1.30 patch until a newer minor's verdicts are verified by held-out cases
# (tests/test_versions.py) and on a cluster (docs/istio-versions.md says how the default moves).
DEFAULT_VERSION = "1.30"
OLDEST_SUPPORTED = (1, 22)

# Every release the engine models: each supported minor from its .0 up to its newest modelled patch. A
# release outside this list (1.31.1, 2.0, 9.99, or 1.30.9) is refused everywhere: a prediction "for
# 1.30.9" would silently be one for 1.30.5, and `compare --to 1.99` would report "0 probes change" for a
# release nobody has looked at.
MODELLED_VERSIONS: tuple[Triple, ...] = tuple(
    (major, minor, patch)
    for (major, minor), pinned in sorted(PINNED_PATCH.items())
    for patch in range(pinned + 1)
)

# Where a modelled release whose tag is not in the sources is read from (the rest: istio/istio at the tag).
SOURCES: dict[Triple, str] = {
    (1, 30, 4): "istio.io 1.30.4 notes (2026-08-26): Envoy 1.38.4 fixes; istiod: release-1.30 @ b9a2bbd2 plus "
                "the fixes the notes list, none changing a verdict",
    (1, 30, 5): "istio.io 1.30.5 notes (2026-09-21): nothing a scenario expresses changes",
    (1, 31, 0): "istio.io 1.31.0 notes (2026-08-20); istiod: release-1.31 @ a8d70121, the same "
                "AuthorizationPolicy/PeerAuthentication behaviour as 1.30.3; Envoy: istio/proxy@8ecb8795 = "
                "envoyproxy/envoy@bee0843e (2026-08-20)",
}
# Releases Istio published that the suite knows of and does not model, and why.
NOT_MODELLED: dict[Triple, str] = {
    (1, 31, 1): "istio.io 1.31.1 notes (2026-09-21) do not say whether its Envoy carries Envoy 1.39.1's "
                "CVE-2026-73551 fix (which changes verdicts) and its source is not in the sources",
}


@dataclass(frozen=True)
class Change:
    """One behaviour change the engine, the validation or the local mesh keys on.

    `first` is the first patch of each minor that has it, oldest minor first. A minor newer than the newest
    listed has it, one older than the oldest listed does not; `None` as a patch: no modelled patch of that
    minor has it (a fix released in older minors after the newer minor's release).
    """

    summary: str  # one line: what a scenario sees change
    source: str  # the Istio issue, PR or commit (file@tag)
    first: tuple[tuple[int, int, int | None], ...]

    def carried_by(self, version: Triple) -> bool:
        major, minor, patch = version
        for f_major, f_minor, f_patch in self.first:
            if (major, minor) == (f_major, f_minor):
                return f_patch is not None and patch >= f_patch
        newest = self.first[-1]
        return (major, minor) > (newest[0], newest[1])


# --- the behaviour changes, by first release -----------------------------------------------------------
CEL_RULES = Change(
    "CRD CEL rules and length limits on selector, targetRef(s) and portLevelMtls",
    "manifests/charts/base/crds/crd-all.gen.yaml@1.23.0 (istio/api bump, istio/istio#51339)",
    ((1, 23, 0),))
TARGET_REF_KIND_CEL = Change(
    "CRD CEL `[self.group, self.kind] in [...]` on every targetRef (a targetRef must spell its group)",
    "crd-all.gen.yaml@1.23.0 (istio/istio#51339)", ((1, 23, 0),))
TARGET_REF_KIND_CEL_DROPPED = Change(
    "the targetRef group/kind CEL rule is gone (validation.go's allowedTargetRefs decides alone)",
    "crd-all.gen.yaml@1.25.0", ((1, 25, 0),))
NEW_PATH_TEMPLATE_CHECK = Change(
    "CheckValidPathTemplate rewritten: values trimmed, `{**}` only last, segments must be pchars",
    "istio/istio#54567 (1.23.5), #54546 (1.24.3)", ((1, 23, 5), (1, 24, 3)))
ONE_OF_CEL = Change(
    "CRD CEL: only one of targetRefs or selector can be set", "crd-all.gen.yaml@1.24.0 (istio/istio#52079)",
    ((1, 24, 0),))
TARGET_REFS_MAX = Change("CRD: targetRefs maxItems 16", "crd-all.gen.yaml@1.24.0 (istio/istio#52079)",
                         ((1, 24, 0),))
SERVICE_ENTRY_TARGET_REF = Change(
    "targetRefs may name a ServiceEntry (validation.go allowedTargetRefs)", "istio/istio#52154", ((1, 24, 0),))
WAYPOINT_SERVICE_NAMESPACE = Change(
    "waypoint policies: a targetRef binds only from its own namespace; Service refs from the service's",
    "istio/istio#52760 (policyattachment.go ShouldAttachPolicy@1.24.0)", ((1, 24, 0),))
SERVICE_ACCOUNTS = Change(
    "Source.serviceAccounts / notServiceAccounts and the when key source.serviceAccount",
    "istio/istio#54091 (authz/model/model.go@1.25.0)", ((1, 25, 0),))
GATEWAY_CLASS_TARGET_REF = Change(
    "a root-namespace targetRef to GatewayClass istio-waypoint binds every waypoint",
    "istio/istio#54910 (releasenotes/notes/54780.yaml)", ((1, 25, 0),))
WAYPOINT_SELECTION_BY_KIND = Change(
    "waypoint policies searched in root, waypoint and service namespaces; each targetRef kind from its own",
    "istio/istio#54140 (authorization.go ListAuthorizationPolicies@1.25.0)", ((1, 25, 0),))
RULES_MAX = Change("CRD: rules and from maxItems 512", "crd-all.gen.yaml@1.25.0", ((1, 25, 0),))
DRY_RUN_NOT_SENT_TO_ZTUNNEL = Change(
    "dry-run policies are no longer sent to ztunnel (before: enforced there as ordinary policies)",
    "istio/istio#55414 ([release-1.25] #55709)", ((1, 25, 2),))
INTERNAL_PARENT_ANNOTATIONS = Change(
    "validation rejects the internal.istio.io/parents and parent-namespace annotations",
    "istio/istio#55595 (validation.go@1.27.0)", ((1, 27, 0),))
QUOTED_SERVICE_ACCOUNT_REGEX = Change(
    "serviceAccounts: namespace and name are regexp.QuoteMeta'd in the principal regex",
    "istio/istio#59700 ([release-1.29] #59720)", ((1, 27, 9), (1, 28, 6), (1, 29, 2)))
QUOTED_NAMESPACE_REGEX = Change(
    "namespaces and `*suffix` principals are regexp.QuoteMeta'd in their regexes (`.` no longer any char)",
    "istio/istio#59992 ([release-1.29] #60054)", ((1, 28, 7), (1, 29, 3), (1, 30, 0)))
TRUST_DOMAIN_FIELDS = Change(
    "CRD has trustDomains / notTrustDomains; ValidateAttribute knows source.trustDomain (not yet enforced)",
    "crd-all.gen.yaml@1.30.0 (istio/api)", ((1, 30, 0),))
TRUST_DOMAINS_ENFORCED = Change(
    "trustDomains / notTrustDomains / source.trustDomain validated and enforced",
    "istio/istio#59358 ([release-1.30] #60528)", ((1, 30, 2),))
JWT_RULE_CHECKS = Change(
    "RequestAuthentication: a jwtRule's timeout must be >= 1ms at ms precision; outputClaimToHeaders header "
    "names must match ^[-_A-Za-z0-9]+$ (before: checked as a header value)",
    "istio/istio#51946, #51343 (validation.go validateJwtRule@1.23.0)", ((1, 23, 0),))
JWT_ISSUER_OPTIONAL = Change(
    "RequestAuthentication: a jwtRule needs an issuer or a jwksUri, no longer always an issuer (CRD and validation)",
    "istio/istio#56158 (validation.go validateJwtRule@1.27.0, crd-all.gen.yaml@1.27.0)", ((1, 27, 0),))
SPACE_DELIMITED_CLAIMS = Change(
    "RequestAuthentication: jwtRules[].spaceDelimitedClaims (CRD field)",
    "crd-all.gen.yaml@1.28.0 (istio/api bump, istio/istio#57758)", ((1, 28, 0),))
EXT_AUTHZ_PROVIDER_NAME_CHECK = Change(
    "istiod ignores an ext_authz extension provider whose name is not a lowercase DNS-1123 label of at most 63 "
    "characters: CUSTOM policies naming it deny the requests their rules match",
    "istio/istio#58082 (builder/extauthz.go validateProviderName@1.30.0)", ((1, 30, 0),))
PRIVATE_JWKS_WARNING = Change(
    "validation warns about private key material in a RequestAuthentication's inline jwks",
    "istio/istio#60727 (validation.go warnPrivateJwksKeys@1.30.3)", ((1, 30, 3),))
DOT_SEGMENT_PARAMETERS = Change(
    "sidecar/waypoint path normalization treats `.;x` and `..;x` segments as `.` and `..`",
    "Envoy CVE-2026-73551 (Envoy 1.37.6/1.38.4, in Istio 1.29.7/1.30.4; not in 1.31.0's Envoy)",
    ((1, 29, 7), (1, 30, 4), (1, 31, None)))
# istiod feature flags (conformance/pilotenv.py): the first release whose istiod registers each one; a scenario
# setting one in mesh.pilotEnv is refused at a release without it (pilot/pkg/features at each tag).
LAYERED_WAYPOINT_FLAG = Change(
    "istiod flag ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES (default false): L4 policies at a waypoint's HBONE "
    "termination", "pilot/pkg/features/ambient.go@1.25.0 (listener_waypoint.go buildConnectTerminateListener)",
    ((1, 25, 0),))
AMBIENT_DRY_RUN_FLAG = Change(
    "istiod flag AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY (default false): dry-run policies sent to ztunnel, "
    "logged only", "pilot/pkg/features/ambient.go@1.29.0 (ambient/authorization.go, ztunnel state.rs@1.29.0)",
    ((1, 29, 0),))
MULTIPLE_CUSTOM_PROVIDERS_FLAG = Change(
    "istiod flag PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS (default false): one ext_authz pair per CUSTOM "
    "provider on a workload", "pilot/pkg/features/security.go@1.30.0 (istio/istio#58082, builder.go)", ((1, 30, 0),))

CHANGES: tuple[Change, ...] = (
    CEL_RULES, TARGET_REF_KIND_CEL, NEW_PATH_TEMPLATE_CHECK, ONE_OF_CEL, TARGET_REFS_MAX,
    SERVICE_ENTRY_TARGET_REF, WAYPOINT_SERVICE_NAMESPACE, TARGET_REF_KIND_CEL_DROPPED, SERVICE_ACCOUNTS,
    GATEWAY_CLASS_TARGET_REF, WAYPOINT_SELECTION_BY_KIND, RULES_MAX, DRY_RUN_NOT_SENT_TO_ZTUNNEL,
    INTERNAL_PARENT_ANNOTATIONS, QUOTED_SERVICE_ACCOUNT_REGEX, QUOTED_NAMESPACE_REGEX, TRUST_DOMAIN_FIELDS,
    TRUST_DOMAINS_ENFORCED, DOT_SEGMENT_PARAMETERS, JWT_RULE_CHECKS, JWT_ISSUER_OPTIONAL, SPACE_DELIMITED_CLAIMS,
    EXT_AUTHZ_PROVIDER_NAME_CHECK, PRIVATE_JWKS_WARNING, LAYERED_WAYPOINT_FLAG, AMBIENT_DRY_RUN_FLAG,
    MULTIPLE_CUSTOM_PROVIDERS_FLAG,
)


@dataclass(frozen=True)
class TableRow:
    """One line of the versions table: a release and what it changes (or, `lacks`, what it does not have
    that an older minor's later patch has)."""

    release: Triple
    summary: str
    source: str

    @property
    def text(self) -> str:
        return "{}.{}.{}".format(*self.release)


def table() -> list[TableRow]:
    """The behaviour changes by the modelled release that first has them, oldest first; a minor that lacks
    a change an older minor's later patch has gets a `not in ...` row at its .0, and a release modelled
    from other than its tag a row saying from what."""
    rows: list[TableRow] = []
    for change in CHANGES:
        for major, minor, patch in change.first:
            if patch is None:
                rows.append(TableRow((major, minor, 0), f"not in {major}.{minor}.x (modelled): {change.summary}",
                                     change.source))
            elif (major, minor, patch) in MODELLED_VERSIONS:
                rows.append(TableRow((major, minor, patch), change.summary, change.source))
    rows.extend(TableRow(release, "modelled from its release notes and branch (its tag is not in the sources)", source)
                for release, source in SOURCES.items())
    return sorted(rows, key=lambda r: r.release)


_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?$")


def is_modelled(text: str | None) -> bool:
    """Whether `text` (1.30, 1.30.3 or v1.30.3) is in MODELLED_VERSIONS (a minor alone: its newest patch)."""
    match = _VERSION_RE.match((text or "").strip())
    if not match:
        return False
    major, minor = int(match.group(1)), int(match.group(2))
    patch = int(match.group(3)) if match.group(3) is not None else PINNED_PATCH.get((major, minor), -1)
    return (major, minor, patch) in MODELLED_VERSIONS


def modelled_ranges() -> list[str]:
    """Each modelled minor as `1.22.0-1.22.8` (one patch alone: `1.31.0`)."""
    return [f"{major}.{minor}.0" + (f"-{major}.{minor}.{pinned}" if pinned else "")
            for (major, minor), pinned in sorted(PINNED_PATCH.items())]


def modelled_summary() -> str:
    """The modelled releases in one line, for error messages: `1.22.0-1.22.8, ..., 1.30.0-1.30.5, 1.31.0`."""
    return (f"the engine models Istio {', '.join(modelled_ranges())} (a minor version alone, e.g. 1.29, means "
            "its newest modelled patch)")


@total_ordering
@dataclass(frozen=True)
class IstioVersion:
    """A concrete Istio release (major.minor.patch)."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str | None) -> IstioVersion:
        """Parse `1.30`, `1.30.3` or `v1.30.3`; a minor-only version resolves to its newest modelled patch.

        Raises UsageError, naming the modelled releases, for anything not in MODELLED_VERSIONS: every
        command and option goes through here, so none can predict for a release the engine does not know.
        """
        raw = (text or DEFAULT_VERSION).strip()
        match = _VERSION_RE.match(raw)
        if not match:
            raise UsageError(f"Istio version {raw!r} is not of the form 1.30 or 1.30.3")
        major, minor = int(match.group(1)), int(match.group(2))
        if (major, minor) < OLDEST_SUPPORTED:
            raise UsageError(
                f"Istio version {raw!r} is older than {OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]}, "
                f"the oldest whose semantics the engine models: {modelled_summary()}"
            )
        if (major, minor) not in PINNED_PATCH:
            raise UsageError(f"Istio version {raw!r} is not modelled: {modelled_summary()}")
        patch = int(match.group(3)) if match.group(3) is not None else PINNED_PATCH[(major, minor)]
        if not is_modelled(f"{major}.{minor}.{patch}"):
            why = NOT_MODELLED.get((major, minor, patch))
            raise UsageError(f"Istio version {raw!r} is newer than {major}.{minor}.{PINNED_PATCH[(major, minor)]}, "
                             f"the newest {major}.{minor} patch the engine models"
                             + (f" ({why})" if why else "") + f": {modelled_summary()}")
        return cls(major, minor, patch)

    @property
    def triple(self) -> Triple:
        return (self.major, self.minor, self.patch)

    def has(self, change: Change) -> bool:
        """Whether this release has `change` (one of CHANGES)."""
        return change.carried_by(self.triple)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, IstioVersion):
            return NotImplemented
        return self.triple < other.triple

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"
