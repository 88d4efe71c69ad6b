"""The lint rule catalog: every finding `authz-conformance lint` can report, with a stable code.

A code is what a team selects, ignores or suppresses (`--select`, `--ignore`, the
`authz-conformance.io/ignore` annotation, `# authz-conformance: ignore[...]`, the config section), and what
GitHub annotations and SARIF results carry, so a code never changes meaning once published: a rule that changes
gets a new code. Each entry says what the finding means in Istio, with the source it rests on, and how to fix it;
`authz-conformance lint --rules` prints the catalog and docs/lint-rules.md is generated from it (`markdown()`).

Codes by hundreds: AC0xx the policy as Istio validates it and the scenario's expectations; AC1xx scope (what a
policy attaches to); AC2xx ambient enforcement (ztunnel and waypoints); AC3xx identities; AC4xx CUSTOM providers;
AC5xx request attributes (what Envoy's matchers compare).
"""

from __future__ import annotations

from dataclasses import dataclass

ISTIO = "istio/istio@release-1.30"
ZTUNNEL = "istio/ztunnel@release-1.30"


@dataclass(frozen=True)
class Rule:
    """One lint rule: `summary` is the catalog's one line, `meaning` what Istio does (with `source`), `fix` what
    to write instead. `mode` names the mode the finding depends on (empty: every mode)."""

    code: str
    name: str
    severity: str  # "error" | "warning" | "notice"
    summary: str
    meaning: str
    source: str
    fix: str
    mode: str = ""
    needs_scenario: bool = False  # depends on the scenario's workloads, waypoints or mesh config


RULES: tuple[Rule, ...] = (
    Rule("AC001", "invalid-policy", "error",
         "Istio's validation rejects the document (or the scenario cannot run)",
         "istiod's validating webhook refuses the policy, so it is never applied; in a scenario, the scenario cannot "
         "run at all.",
         f"{ISTIO} pkg/config/validation/validation.go ValidateAuthorizationPolicy, ValidatePeerAuthentication, "
         "ValidateRequestAuthentication",
         "Correct the field named: the message says what Istio expects there."),
    Rule("AC002", "validation-warning", "warning",
         "Istio accepts the document with a warning",
         "The webhook admits the policy but returns a warning: usually a value that does not do what it seems.",
         f"{ISTIO} pkg/config/validation/validation.go (validation.Warning)",
         "Read the warning and rewrite the field so the policy says what it does."),
    Rule("AC003", "notice", "notice",
         "something in the files was skipped or assumed",
         "Not an Istio behaviour: what the suite skipped while reading (e.g. non-policy documents in a policy file).",
         "conformance/scenario.py",
         "Nothing to fix when the skip is intended."),
    Rule("AC010", "expectation-contradicts-istio", "error",
         "a probe expects a verdict Istio does not give",
         "The engine, which follows istiod's RBAC builder and ztunnel's authorization, predicts another verdict for "
         "the probe: the scenario's claim is false for this Istio version (the explanation lines say which policy "
         "decides). DENY is evaluated before ALLOW; with any ALLOW policy, a request no ALLOW matches is denied.",
         f"{ISTIO} pilot/pkg/security/authz/builder/builder.go; istio.io docs/concepts/security/"
         "#implicit-enablement",
         "Fix the expectation (run `authz-conformance explain` on the probe), or the policy if the claim is the "
         "intent.",),
    Rule("AC011", "strict-mtls-cuts-off-out-of-mesh-client", "warning",
         "a STRICT PeerAuthentication cuts off an out-of-mesh client the scenario expects to be allowed",
         "A client outside the mesh (`mesh: false`) has no certificate, so it connects in plaintext. Under STRICT a "
         "sidecar's inbound listener has only the mTLS filter chains, so the plaintext connection finds none and is "
         "reset (`filter_chain_not_found`); in ambient mode istiod refers the workload to the static DENY "
         "`istio_converted_static_strict` (notPrincipals: presence), which ztunnel applies to the connection. No "
         "AuthorizationPolicy can let it through. The finding uses the engine's decision (STRICT mTLS rejected "
         "plaintext) for each probe the scenario expects allowed, and is placed at the PeerAuthentication that set "
         "the mode.",
         f"{ISTIO} pilot/pkg/security/authn/policy_applier.go ComposePeerAuthentication (l.398); "
         "pilot/pkg/networking/core/filterchain_options.go getFilterChainMatchOptions (l.186); "
         "pilot/pkg/serviceregistry/ambient/authorization.go staticStrictPolicyName (l.37), "
         "convertPeerAuthentication (l.237)",
         "Bring the caller into the mesh (or through an ingress gateway) before turning STRICT on; keep PERMISSIVE, "
         "or a portLevelMtls PERMISSIVE entry for the port it uses, until then; or correct the expectation to deny.",
         needs_scenario=True),
    Rule("AC101", "selects-no-workload", "warning",
         "the policy applies to no workload of the scenario",
         "A selector policy applies to the workloads of its namespace whose labels its selector matches (all of them "
         "without a selector, every namespace's in the root namespace); when none matches, or the namespace has no "
         "workload in the mesh, the policy protects nothing. A typo in a label or namespace is the usual cause.",
         f"{ISTIO} pilot/pkg/model/policyattachment.go ShouldAttachPolicy (l.123-146), "
         "pilot/pkg/model/authorization.go ListAuthorizationPolicies",
         "Correct spec.selector.matchLabels or metadata.namespace so they name the workloads to protect.",
         needs_scenario=True),
    Rule("AC102", "targetrefs-without-waypoint", "warning",
         "a targetRefs policy with no waypoint to bind: ignored by sidecars and ztunnel",
         "A policy with targetRefs attaches only to the waypoint (or gateway) it names; sidecars ignore it "
         "(\"if targetRef is specified, ignore the policy altogether\") and so does ztunnel (\"TargetRef is not "
         "intended for ztunnel\"). In sidecar mode, or without a waypoint for the targeted Service, it does nothing.",
         f"{ISTIO} pilot/pkg/model/policyattachment.go l.130-136; "
         "pilot/pkg/serviceregistry/ambient/authorization.go convertAuthorizationPolicy l.419-423",
         "Use a selector policy for sidecars and ztunnel; keep targetRefs for namespaces that use a waypoint "
         "(istio.io/use-waypoint), and add the waypoint mode to the scenario.",
         mode="sidecar", needs_scenario=True),
    Rule("AC103", "duplicate-namespace-peer-authentication", "warning",
         "a namespace has two namespace-wide PeerAuthentications",
         "istiod composes one namespace-wide PeerAuthentication per namespace, the oldest by creation time; the "
         "other is ignored, and which one is oldest depends on apply order.",
         f"{ISTIO} pilot/pkg/security/authn/policy_applier.go ComposePeerAuthentication (l.398)",
         "Keep one namespace-wide PeerAuthentication per namespace; use selectors or portLevelMtls for the rest."),
    Rule("AC201", "ambient-deny-l7-no-op", "warning",
         "a selector DENY with only L7 fields is a no-op at ztunnel",
         "ztunnel enforces selector policies at L4 only: istiod leaves the HTTP attributes (hosts, methods, paths "
         "and their `not` forms, requestPrincipals / notRequestPrincipals, remoteIpBlocks / notRemoteIpBlocks, L7 "
         "`when` keys) out of each Match of a DENY rule and keeps the rest; ztunnel skips an empty Match, so a "
         "clause left with only empty Matches never matches and the rule never fires: the DENY denies nothing in "
         "ambient mode (istio/istio#61126), although istiod's status message calls it \"more restrictive\". The "
         "negative fields are L7 too: the usual \"require a JWT\" DENY, `from: [{source: {notRequestPrincipals: "
         "[\"*\"]}}]`, lets every request without a token through at ztunnel. A waypoint does not help: it "
         "ignores selector policies.",
         f"{ISTIO} pilot/pkg/serviceregistry/ambient/authorization.go httpOperations, httpSources (l.491-531), "
         f"handleRule (l.533-605), httpRuleFmt (l.482); {ZTUNNEL} src/rbac.rs Authorization::matches (l.115: "
         "`if mg.is_empty() { continue }`); pilot/pkg/model/policyattachment.go l.140-146",
         "Write the DENY as a targetRefs policy bound to the namespace's waypoint (kind Gateway, or the Service), "
         "and put the namespace behind it (istio.io/use-waypoint).",
         mode="ambient"),
    Rule("AC202", "ambient-allow-l7-dropped", "warning",
         "a selector ALLOW's L7 rules are dropped by ztunnel: they allow nothing",
         "ztunnel omits each ALLOW rule that matches HTTP attributes (\"Within an ALLOW policy, rules matching HTTP "
         "attributes are omitted\"); the policy still exists, so what those rules were meant to allow is denied. A "
         "waypoint does not change this: waypoints ignore selector policies, so the rule has to move to a "
         "targetRefs policy.",
         f"{ISTIO} pilot/pkg/serviceregistry/ambient/authorization.go httpAllowRuleBoilerplate (l.488); "
         "pilot/pkg/model/policyattachment.go l.140-146",
         "Move the L7 rules to an ALLOW policy with targetRefs to the waypoint (kind Gateway) or the Service, and "
         "leave an L4 ALLOW at ztunnel that admits the waypoint's identity.",
         mode="ambient"),
    Rule("AC203", "ambient-custom-ignored", "warning",
         "a CUSTOM selector policy is ignored by ztunnel",
         "ztunnel does not implement CUSTOM (\"ztunnel does not support the CUSTOM action\"), and waypoints ignore "
         "selector policies: in ambient mode the external authorizer is never called.",
         f"{ISTIO} pilot/pkg/serviceregistry/ambient/authorization.go convertAuthorizationPolicy (l.443)",
         "Attach the CUSTOM policy to a waypoint with targetRefs.",
         mode="ambient"),
    Rule("AC204", "ambient-request-authentication-ignored", "warning",
         "a selector RequestAuthentication is ignored in ambient mode",
         "ztunnel does not check JWTs and waypoints ignore selector policies, so the RequestAuthentication rejects no "
         "token in ambient mode.",
         f"{ISTIO} pilot/pkg/model/policyattachment.go l.140-146 (selector policies not attached to waypoints)",
         "Attach the RequestAuthentication (and the AuthorizationPolicy that requires a token) to a waypoint with "
         "targetRefs.",
         mode="ambient"),
    Rule("AC205", "waypoint-open-service", "warning",
         "a service behind a waypoint is open: ztunnel admits the waypoint and no targetRefs policy restricts it",
         "Behind a waypoint, the destination's ztunnel sees every client's request arrive from the waypoint, with the "
         "waypoint's identity. An ALLOW at ztunnel that admits the waypoint therefore admits every client the "
         "waypoint forwards; unless a targetRefs policy restricts clients at the waypoint, any mesh client gets in.",
         f"{ISTIO} pilot/pkg/serviceregistry/ambient/authorization.go (ztunnel policies); istio.io "
         "docs/ambient/usage/l7-features/ and docs/ambient/usage/waypoint/ (\"target a waypoint\")",
         "Add an ALLOW with targetRefs to the waypoint (kind Gateway) or the Service that lists the clients allowed.",
         mode="waypoint", needs_scenario=True),
    Rule("AC206", "waypoint-client-principals-at-ztunnel", "warning",
         "an ALLOW at a destination behind a waypoint lists client identities only: the destination sees the "
         "waypoint's",
         "Traffic through a waypoint reaches the destination's ztunnel from the waypoint, with the waypoint's "
         "identity, not the client's: an ALLOW there that admits only client principals or namespaces denies "
         "everything the waypoint forwards.",
         f"{ISTIO} pilot/pkg/serviceregistry/ambient/authorization.go; istio.io docs/ambient/usage/l4-policy/ "
         "(\"the ztunnel sees the waypoint's identity\")",
         "Admit the waypoint's service account at ztunnel, and move the client rules to a targetRefs policy on "
         "the waypoint.",
         mode="waypoint", needs_scenario=True),
    Rule("AC207", "ambient-deny-l7-stripped-broader", "warning",
         "a selector DENY whose L7 fields ztunnel strips denies more than written",
         "When a `from` source or a `to` operation of a DENY rule mixes L4 fields (namespaces, principals, "
         "ipBlocks, ports ...) with L7 ones (requestPrincipals / notRequestPrincipals, methods, paths, hosts, "
         "remoteIpBlocks and their `not` forms), istiod keeps only the L4 fields in that Match; ztunnel then denies "
         "every connection the L4 part matches, whatever the request (\"DENY policy with HTTP attributes is enforced "
         "without the HTTP rules. This will be more restrictive than requested.\"). E.g. \"deny requests from "
         "namespace front without a JWT\" (`namespaces: [front], notRequestPrincipals: [\"*\"]`) denies all of "
         "front in ambient mode, tokens or not. A waypoint does not help: it ignores selector policies.",
         f"{ISTIO} pilot/pkg/serviceregistry/ambient/authorization.go handleRule (l.551-567: the Match keeps the L4 "
         "fields; l.599-602: only ALLOW rules are dropped), httpDenyRuleBoilerplate (l.485)",
         "Move the DENY to a targetRefs policy on the waypoint, where Envoy sees the request; keep at ztunnel only "
         "what is meant for every request of those peers.",
         mode="ambient"),
    Rule("AC208", "ambient-dry-run", "warning",
         "a dry-run selector policy is enforced or silently ignored by ztunnel, depending on version and flag",
         "Sidecars and waypoints put a dry-run (`istio.io/dry-run: \"true\"`) policy in shadow rules: never "
         "enforced, its would-be verdict logged. ztunnel differs by release: before 1.25.2 istiod sends the policy "
         "like any other and ztunnel enforces it (istio/istio#55414); from 1.25.2 istiod does not send it at all "
         "unless AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY is on (1.29+), so it is neither enforced nor logged and "
         "the dry run shows nothing; with the flag, ztunnel receives it marked dryRun and only logs its matches "
         "(\"dry-run: deny policy match\").",
         f"{ISTIO} pilot/pkg/serviceregistry/ambient/authorization.go convertAuthorizationPolicy (l.409-417: "
         "`dryRun && !features.EnableWdsDryRunAuthzPol` is not sent), pilot/pkg/features/ambient.go (l.97-100); "
         f"{ZTUNNEL} src/state.rs assert_rbac (l.576-617); istio/istio#55414",
         "On 1.29+ set AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY=true in istiod (mesh.pilotEnv in a scenario) to "
         "see dry-run matches in ztunnel's log; before 1.25.2 do not apply a dry-run policy in ambient mode: it "
         "is enforced. A targetRefs dry-run policy at a waypoint behaves as in a sidecar.",
         mode="ambient", needs_scenario=True),
    Rule("AC301", "spiffe-prefixed-principal", "warning",
         "a principal written with spiffe:// never matches",
         "Principals are `<trust domain>/ns/<ns>/sa/<sa>`: Envoy prepends `spiffe://` and ztunnel strips it from the "
         "peer, so a value that already holds `spiffe://` never matches (istio/ztunnel#1901).",
         f"{ISTIO} pilot/pkg/security/authz/matcher/string.go StringMatcherWithPrefix (l.100); research note §3.1",
         "Drop the `spiffe://` prefix."),
    Rule("AC302", "suffix-principal-never-matches", "warning",
         "a `*suffix` principal that no identity can end with",
         "A `*suffix` principal becomes the regex `spiffe://.*<suffix>` over the whole peer URI (Envoy) or a suffix "
         "of the identity without `spiffe://` (ztunnel); an identity is `<td>/ns/<ns>/sa/<sa>`, so a suffix with more "
         "segments, or with segments other than `ns` and `sa` where they must be, never matches (e.g. "
         "`*/cluster.local/ns/a/sa/b`: the `/` ending `spiffe://` cannot also start the suffix).",
         f"{ISTIO} pilot/pkg/security/authz/matcher/string.go StringMatcherWithPrefix (l.100); istio/ztunnel "
         "src/rbac.rs StringMatch",
         "Write the suffix as the end of an identity, e.g. `*/ns/a/sa/b`, or the full principal `cluster.local/ns/a/"
         "sa/b`."),
    Rule("AC303", "cluster-local-on-custom-trust-domain", "warning",
         "a cluster.local principal on a mesh with another trust domain does not match at ztunnel",
         "Envoy (sidecars, waypoints) reads `cluster.local/...` as \"the mesh's trust domain and its aliases\" "
         "(ReplaceTrustDomainAliases); ztunnel compares the string literally (`// TODO: TDA`), so with a custom "
         "trust domain the principal never matches in ambient mode (istio/ztunnel#1260).",
         f"{ISTIO} pilot/pkg/security/trustdomain/bundle.go ReplaceTrustDomainAliases; "
         "pilot/pkg/serviceregistry/ambient/authorization.go l.428",
         "Write the mesh's trust domain in the principal, or use `namespaces` / `serviceAccounts`.",
         mode="ambient"),
    Rule("AC401", "custom-provider-undefined", "warning",
         "a CUSTOM policy names a provider the mesh config does not define",
         "istiod cannot build ext_authz for an undefined provider and compiles the policy to a deny of the requests "
         "its rules match (`-deny-due-to-bad-CUSTOM-action`), whatever failOpen says.",
         f"{ISTIO} pilot/pkg/security/authz/builder/extauthz.go getExtAuthz (l.137)",
         "Define the provider in meshConfig.extensionProviders or correct spec.provider.name.",
         needs_scenario=True),
    Rule("AC402", "custom-provider-invalid", "warning",
         "a CUSTOM policy names a provider istiod treats as invalid",
         "istiod rejects the provider's definition (processExtensionProvider) and compiles the policy to a deny of "
         "the requests its rules match.",
         f"{ISTIO} pilot/pkg/security/authz/builder/extauthz.go processExtensionProvider",
         "Correct the provider definition as the message says."),
    Rule("AC403", "custom-provider-service-unknown", "warning",
         "a CUSTOM provider's service names no workload",
         "istiod looks the provider's service up (LookupCluster); when it finds none, the policy becomes a deny.",
         f"{ISTIO} pilot/pkg/model/telemetry_logging.go LookupCluster; builder/extauthz.go",
         "Point the provider at the authorizer's Service: `<name>.<namespace>.svc.cluster.local`.",
         needs_scenario=True),
    Rule("AC404", "custom-provider-not-ext-authz", "warning",
         "a CUSTOM provider calls a workload that is no external authorizer",
         "The suite's echo app answers every check, so the policy does not test an authorizer.",
         "conformance/model.py (workload kind ext-authz)",
         "Point the provider at a workload of kind ext-authz.",
         needs_scenario=True),
    Rule("AC405", "custom-provider-port-unserved", "warning",
         "a CUSTOM provider calls a port its workload does not serve",
         "Every check call fails, so failOpen and statusOnError decide every request.",
         f"{ISTIO} pilot/pkg/security/authz/builder/extauthz.go (failOpen, statusOnError)",
         "Use a port the authorizer serves.",
         needs_scenario=True),
    Rule("AC501", "host-without-port", "warning",
         "a `hosts` value without a port does not match the Host clients send with one",
         "istiod compiles `hosts` / `notHosts` to a header matcher on `:authority`: an exact (or `*suffix`) "
         "case-insensitive string match of the whole header, port included; no part of the RBAC builder adds a "
         "port-agnostic form, and Istio's HTTP connection managers do not strip the port before RBAC (a gateway "
         "ignores the port only when routing). A client calling `http://b.ns1:8080` sends `Host: b.ns1:8080`, which "
         "`hosts: [b.ns1]` does not match: an ALLOW then denies it, a DENY lets it through, and a `notHosts` "
         "exclusion does not exclude it. The finding uses the engine's matcher on each probe's Host.",
         f"{ISTIO} pilot/pkg/security/authz/model/model.go (l.55 hostHeader = \":authority\", l.147), "
         "model/generator.go hostGenerator (l.387-395), matcher/header.go HostMatcher (l.59-90); istio/api "
         "security/v1beta1/authorization_policy.proto Operation.hosts (the security best practices' \"writing host "
         "match policies\")",
         "List the host with its port as well (`b.ns1:8080`) or with any port (`b.ns1:*`, a prefix match), or match "
         "on something the port does not change.",
         needs_scenario=True),
)

BY_CODE: dict[str, Rule] = {r.code: r for r in RULES}


def rule(code: str) -> Rule:
    return BY_CODE[code]


def matches(code: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether a code is named by any of the patterns: a full code, a prefix (`AC2` is every AC2xx, as ruff reads
    `E5`), a rule name, or `ALL`."""
    name = BY_CODE[code].name if code in BY_CODE else ""
    return any(p == "ALL" or code.startswith(p.upper()) or p == name for p in patterns)


def text() -> str:
    """`lint --rules`: one line per rule."""
    width = max(len(r.name) for r in RULES)
    return "\n".join(f"{r.code}  {r.severity:<7}  {r.name:<{width}}  {r.summary}"
                     + (f" [{r.mode} mode]" if r.mode else "") for r in RULES) + "\n"


def markdown() -> str:
    """docs/lint-rules.md: the catalog, one section per rule (tests/test_lint_rules.py keeps the file current)."""
    out = ["# Lint rules", "",
           "<!-- Generated by `authz-conformance lint --rules --markdown > docs/lint-rules.md`"
           " from conformance/lint_rules.py: do not edit by hand. -->", "",
           "`authz-conformance lint` reports each finding once, with one of these codes. Select or ignore them with "
           "`--select` / `--ignore` (a code, a prefix such as `AC2`, a rule name, or `ALL`), in "
           "`[tool.authz-conformance.lint]` of a `pyproject.toml` or the `lint:` section of a "
           "`.authz-conformance.yaml` (the nearest one above each file), or on one policy with the annotation "
           "`authz-conformance.io/ignore: AC201,AC202` or a comment `# authz-conformance: ignore[AC201]` inside "
           "the policy (or on the line above it).", "",
           "| Code | Name | Severity | Mode | Summary |", "|---|---|---|---|---|"]
    out += [f"| [{r.code}](#{r.code.lower()}-{r.name}) | `{r.name}` | {r.severity} | {r.mode or 'any'} | "
            f"{r.summary} |" for r in RULES]
    for r in RULES:
        out += ["", f"## {r.code} {r.name}", "", f"**{r.summary}.** Severity: {r.severity}"
                + (f"; depends on the mode: {r.mode}." if r.mode else ".")
                + (" Needs a scenario (not reported on a raw policy file)." if r.needs_scenario else ""), "",
                r.meaning, "", f"Source: {r.source}.", "", f"Fix: {r.fix}"]
    return "\n".join(out) + "\n"
