"""Which Istio release the local mesh emulates: one flag per behaviour that changed between 1.22 and 1.31.

Why this exists: the local mesh's compiler is a port of istiod, and istiod's output changed inside the
releases the suite models (some of it in patch releases). Running `--istio-version 1.29.2` on the local
mesh must compile what istiod 1.29.2 generated, not what 1.30.3 does under a "1.29.2" header: a
version-dependent probe would otherwise fail as a policy mismatch, or worse, pass for the wrong reason.
`Release.of(version)` turns a release into the flags the compiler (`rbac.py` generators, `authz.py`
selection, `ztunnel.py` translation) reads.

Which release has which behaviour comes from the one table of behaviour changes, `conformance.versions`
(CHANGES, each citing its Istio issue or commit), which the engine reads too; what each flag makes the
compiler generate is the local mesh's own port of istiod at each tag (cited per flag). The local mesh
does not import the verdict engine (an import-linter contract keeps the two apart).

A behaviour this module cannot turn into real Envoy config is refused, not approximated: `unquoted_hazard`
says when an unquoted regex (the pre-fix forms) may be one Envoy rejects, and the target then refuses the
scenario at that release with a reason naming both (`authz.unemulated`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from conformance.versions import (
    DOT_SEGMENT_PARAMETERS,
    DRY_RUN_NOT_SENT_TO_ZTUNNEL,
    EXT_AUTHZ_PROVIDER_NAME_CHECK,
    GATEWAY_CLASS_TARGET_REF,
    QUOTED_NAMESPACE_REGEX,
    QUOTED_SERVICE_ACCOUNT_REGEX,
    SERVICE_ACCOUNTS,
    SPACE_DELIMITED_CLAIMS,
    TRUST_DOMAINS_ENFORCED,
    WAYPOINT_SELECTION_BY_KIND,
    WAYPOINT_SERVICE_NAMESPACE,
    IstioVersion,
    Triple,
)

Attachment = Literal["1.22", "1.24", "1.25"]

# Go's regexp.QuoteMeta set minus `.`: an unquoted value holding one of these becomes a regex whose
# acceptance by Envoy (RE2) the local target cannot vouch for (see `unquoted_hazard`). `.` is always a
# valid regex (any character), which is exactly the #59992 / #59700 behaviour the local mesh emulates.
_HAZARDS = frozenset("\\+*?()|[]{}^$")


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

    Each flag is what istiod (or its Envoy) at that release did; `of` computes them, `newest` is the
    default release (the newest modelled 1.30 patch), used wherever no version is given. The compiler was
    ported from istiod 1.30.3, whose AuthorizationPolicy output 1.30.4, 1.30.5 and 1.31.0 keep
    (docs/istio-versions.md).
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
    # Envoy CVE-2026-73551 (Envoy 1.37.6 / 1.38.4, in Istio 1.29.7 / 1.30.4; 1.31.0's Envoy bee0843e of
    # 2026-08-20 predates Envoy 1.39.1): with normalize_path, a `.;x` / `..;x` segment is cut to `.` / `..`.
    # The local Envoy (1.40.0) has the fix; for a release without it, the proxies' bootstrap turns it off
    # with Envoy's own runtime guard (`runtime_layer`).
    strips_dot_segment_parameters: bool
    # istio/istio#58082 "support multiple CUSTOM authorization providers per workload" (1.30.0), the change
    # versions.EXT_AUTHZ_PROVIDER_NAME_CHECK cites: CUSTOM rules grouped per provider, policy names
    # `istio-ext-authz-<provider>-ns[..]..`, one shadow RBAC + ext_authz pair per provider enabled by the prefix
    # `istio-ext-authz-<provider>`, dry-run CUSTOM policies in the pair's enforcing `rules` (builder.go@1.30.0).
    # Before (builder.go@1.29.0): one pair, names `istio-ext-authz-ns[..]..`, prefix `istio-ext-authz`, dry-run
    # CUSTOM policies dropped, a second provider fails getExtAuthz. The CUSTOM builder's shape (extauthz.py).
    custom_per_provider: bool
    # EXT_AUTHZ_PROVIDER_NAME_CHECK (1.30.0, istio/istio#58082): processExtensionProvider runs
    # validateProviderName, so a provider whose name is not a lowercase DNS-1123 label is unusable.
    validates_provider_names: bool
    # versions.SPACE_DELIMITED_CLAIMS (1.28.0): the JWT filter's space-delimited claims are buildSpaceDelimitedClaims
    # (the defaults plus jwtRules[].spaceDelimitedClaims, sorted); before, the fixed `scope`, `permission` (authn.py).
    space_delimited_claims: bool

    @classmethod
    def of(cls, version: IstioVersion | str | None = None) -> Release:
        """The release `version` names (`1.29`, `1.29.2`, an IstioVersion; None: the default, 1.30's
        newest modelled patch). An unmodelled release raises UsageError (IstioVersion.parse)."""
        v = IstioVersion.parse(None if version is None else str(version))  # an IstioVersion is checked too
        return _release((v.major, v.minor, v.patch))

    @classmethod
    def newest(cls) -> Release:
        """The default release (versions.DEFAULT_VERSION's newest patch, 1.30.5)."""
        return cls.of(None)

    def runtime_layer(self) -> dict[str, bool]:
        """Envoy runtime guards that make the local Envoy (1.40.0, which has every fix below) behave as this
        release's Envoy: an entry for each Envoy fix the release lacks (empty for the newest releases)."""
        guards: dict[str, bool] = {}
        if not self.strips_dot_segment_parameters:
            # envoyproxy/envoy v1.38.4 CVE-2026-73551: "revert with
            # envoy.reloadable_features.strip_dotdot_segments_with_parameters" (spelt with the final `s` in 1.40.0)
            guards["envoy.reloadable_features.strip_dotdot_segments_with_parameters"] = False
        return guards

    def __str__(self) -> str:
        return "Istio {}.{}.{}".format(*self.version)


@cache
def _release(triple: Triple) -> Release:
    """Release.of for a parsed release; cached, since every compiler call without one asks for the newest."""
    attachment: Attachment = ("1.25" if WAYPOINT_SELECTION_BY_KIND.carried_by(triple)
                              else "1.24" if WAYPOINT_SERVICE_NAMESPACE.carried_by(triple) else "1.22")
    return Release(
        version=triple,
        quotes_namespaces=QUOTED_NAMESPACE_REGEX.carried_by(triple),
        quotes_service_accounts=QUOTED_SERVICE_ACCOUNT_REGEX.carried_by(triple),
        ztunnel_receives_dry_run=not DRY_RUN_NOT_SENT_TO_ZTUNNEL.carried_by(triple),
        gateway_class_binds_waypoints=GATEWAY_CLASS_TARGET_REF.carried_by(triple),
        waypoint_attachment=attachment,
        service_accounts=SERVICE_ACCOUNTS.carried_by(triple),
        rbac_trust_domains=TRUST_DOMAINS_ENFORCED.carried_by(triple),
        strips_dot_segment_parameters=DOT_SEGMENT_PARAMETERS.carried_by(triple),
        custom_per_provider=EXT_AUTHZ_PROVIDER_NAME_CHECK.carried_by(triple),  # the same PR, #58082
        validates_provider_names=EXT_AUTHZ_PROVIDER_NAME_CHECK.carried_by(triple),
        space_delimited_claims=SPACE_DELIMITED_CLAIMS.carried_by(triple),
    )
