"""Which Istio release the local mesh emulates: one flag per behaviour that changed between 1.22 and 1.30.

Why this exists: the local mesh's compiler is a port of istiod, and istiod's output changed inside the
releases the suite models (some of it in patch releases). Running `--istio-version 1.29.2` on the local
mesh must compile what istiod 1.29.2 generated, not what 1.30.3 does under a "1.29.2" header: a
version-dependent probe would otherwise fail as a policy mismatch, or worse, pass for the wrong reason.
`Release.of(version)` turns a release into the flags the compiler (`rbac.py` generators, `authz.py`
selection, `ztunnel.py` translation) reads.

This is the local mesh's own reading of Istio's release notes and of istiod's source at each tag
(istio/istio, cited per flag); it does not import the verdict engine, which keys the same behaviours on
its own (an import-linter contract keeps the two apart, so a mistake in one is caught by the other).

A behaviour this module cannot turn into real Envoy config is refused, not approximated: `unquoted_hazard`
says when an unquoted regex (the pre-fix forms) may be one Envoy rejects, and the target then refuses the
scenario at that release with a reason naming both (`authz.unemulated`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from conformance.versions import IstioVersion

Triple = tuple[int, int, int]
Attachment = Literal["1.22", "1.24", "1.25"]

# The first patch of each minor that carries a fix backported to several minors, oldest minor first.
# istio/istio#59992 (security fix, releasenotes/notes/59992.yaml; [release-1.29] #60054, in 1.29.3):
# `namespaces` and `*suffix` principals are regexp.QuoteMeta'd in generator.go / matcher/string.go.
FIX_59992: tuple[Triple, ...] = ((1, 28, 7), (1, 29, 3), (1, 30, 0))
# istio/istio#59700 (releasenotes/notes/59700.yaml; [release-1.29] #59720, in 1.29.2): serviceAccountRegex
# quotes the namespace and the service account (generator.go).
FIX_59700: tuple[Triple, ...] = ((1, 27, 9), (1, 28, 6), (1, 29, 2))
# istio/istio#55414 "ambient: do not process dry-run rules" ([release-1.25] #55709, in 1.25.2): PolicyCollections
# (kube/controller/ambient/policies.go) drops dry-run policies before the ambient translation.
FIX_55414: tuple[Triple, ...] = ((1, 25, 2),)

# Go's regexp.QuoteMeta set minus `.`: an unquoted value holding one of these becomes a regex whose
# acceptance by Envoy (RE2) the local target cannot vouch for (see `unquoted_hazard`). `.` is always a
# valid regex (any character), which is exactly the #59992 / #59700 behaviour the local mesh emulates.
_HAZARDS = frozenset("\\+*?()|[]{}^$")


def carries(version: Triple, fixes: tuple[Triple, ...]) -> bool:
    """Whether `version` has a fix whose first patch per minor is `fixes` (oldest minor first): a minor
    newer than the newest listed has it, one older than the oldest listed does not."""
    major, minor, patch = version
    for f_major, f_minor, f_patch in fixes:
        if (major, minor) == (f_major, f_minor):
            return patch >= f_patch
    newest = fixes[-1]
    return (major, minor) > (newest[0], newest[1])


def unquoted_hazard(text: str) -> bool:
    """Whether `text`, inserted into a regex unquoted, may make a regex RE2 rejects.

    Envoy NACKs a listener whose RBAC holds an invalid regex, and Istio's proxy then keeps its previous
    listener (policies of an earlier state stay in force): the local mesh does not emulate that, so a
    value like this is refused at a release that does not quote it. Only `.` (and, for namespaces, the
    `*` istiod turns into `.*`, which the caller removes first) is known to be harmless.
    """
    return any(c in _HAZARDS for c in text)


@dataclass(frozen=True)
class Release:
    """The behaviours of one Istio release that the local mesh's compiler honours.

    Each flag is what istiod at that release generated; `of` computes them, `newest` is the release
    the compiler was ported from (1.30.3), the default wherever no version is given.
    """

    version: Triple
    # istio/istio#59992 (1.28.7 / 1.29.3 / 1.30.0): `namespaces` / `source.namespace` values go into the
    # regex `.*/ns/<ns>/.*` quoted (`*` still `.*`), and a `*suffix` principal into `spiffe://.*<suffix>`
    # quoted. Before: both unquoted (generator.go srcNamespaceGenerator `strings.Replace(value, "*",
    # ".*", -1)`; matcher/string.go StringMatcherWithPrefix `prefix + ".*" + strings.TrimPrefix(v, "*")`),
    # so a `.` matches any character.
    quotes_namespaces: bool
    # istio/istio#59700 (1.27.9 / 1.28.6 / 1.29.2): serviceAccountRegex quotes `<ns>` and `<sa>` in
    # `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`. Before (1.25.0 ... ): `fmt.Sprintf(..., ns, sa)` unquoted.
    quotes_service_accounts: bool
    # istio/istio#55414 (1.25.2; 1.26.0+): istiod stops sending dry-run policies to ztunnel. Before, the
    # ambient translation ignored the `istio.io/dry-run` annotation: ztunnel got the policy as an ordinary
    # one and enforced it (research note §5.4; the 1.29 upgrade note's "never sent" holds from 1.25.2).
    ztunnel_receives_dry_run: bool
    # releasenotes/notes/54780.yaml (1.25.0, [release-1.25] #54910): "Added support for attaching policy
    # defaults for istio-waypoint by targetting the GatewayClass" (policyattachment.go ShouldAttachPolicy:
    # a root-namespace policy with targetRef GatewayClass `istio-waypoint` binds every waypoint).
    gateway_class_binds_waypoints: bool
    # How a waypoint lists and attaches targetRefs policies (pilot/pkg/model/authorization.go
    # ListAuthorizationPolicies and policyattachment.go ShouldAttachPolicy at each tag):
    # "1.22" (1.22-1.23): root and waypoint namespaces searched; Gateway and Service refs attach by name,
    #   the targetRef's own namespace empty or the waypoint's, whatever namespace the policy is in;
    # "1.24" (istio/istio#52760 "Test and improve cross-namespace waypoint", 1.24.0): only the service's
    #   namespace searched (WithService); a Service ref needs the policy in the service's namespace, a
    #   Gateway ref attaches by name;
    # "1.25" (istio/istio#54140 "ambient: better selection criteria on targetRefs", 1.25.0): root, waypoint
    #   and service namespaces searched; Service refs from the service's namespace, Gateway refs from the
    #   waypoint's, GatewayClass refs from the root namespace.
    waypoint_attachment: Attachment
    # Attributes istiod's RBAC builder knows (pilot/pkg/security/authz/model/model.go New at each tag):
    # `serviceAccounts` / `notServiceAccounts` and the `when` key `source.serviceAccount` from 1.25.0
    # (absent from model.go at 1.24.6: not in the API, and the key is an "unknown attribute", which skips
    # the rule); `trustDomains` / `notTrustDomains` and `source.trustDomain` from 1.30.2 (istio/istio#59358,
    # backported in #60528): at 1.30.0 / 1.30.1 the CRD has the fields but New ignores them, and the key is
    # an unknown attribute. The scenario validation rejects them below those releases; the compiler still
    # generates what those istiods generated, so nothing silently gets the newer meaning.
    service_accounts: bool
    rbac_trust_domains: bool

    @classmethod
    def of(cls, version: IstioVersion | str | None = None) -> Release:
        """The release `version` names (`1.29`, `1.29.2`, an IstioVersion; None: the default, 1.30's
        pinned patch). An unmodelled release raises UsageError (IstioVersion.parse)."""
        v = IstioVersion.parse(None if version is None else str(version))  # an IstioVersion is checked too
        return _release((v.major, v.minor, v.patch))

    @classmethod
    def newest(cls) -> Release:
        """The release the compiler was ported from and checked against istiod's golden output (1.30.3)."""
        return cls.of(None)

    def __str__(self) -> str:
        return "Istio {}.{}.{}".format(*self.version)


@cache
def _release(triple: Triple) -> Release:
    """Release.of for a parsed release; cached, since every compiler call without one asks for the newest."""
    attachment: Attachment = "1.25" if triple >= (1, 25, 0) else "1.24" if triple >= (1, 24, 0) else "1.22"
    return Release(
        version=triple,
        quotes_namespaces=carries(triple, FIX_59992),
        quotes_service_accounts=carries(triple, FIX_59700),
        ztunnel_receives_dry_run=not carries(triple, FIX_55414),
        gateway_class_binds_waypoints=triple >= (1, 25, 0),
        waypoint_attachment=attachment,
        service_accounts=triple >= (1, 25, 0),
        rbac_trust_domains=triple >= (1, 30, 2),
    )
