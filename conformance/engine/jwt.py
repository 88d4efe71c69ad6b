"""RequestAuthentication at an Envoy proxy: the JWT filter istiod configures, and what it does with a probe's token.

istiod (istio/istio@1.30.3 `pilot/pkg/security/authn/policy_applier.go` convertToEnvoyJwtConfig) merges every
RequestAuthentication that applies to a proxy into one `envoy.filters.http.jwt_authn` filter: each jwtRule is a
provider `origins-<i>` (rules sorted by issuer), and the requirement is

- one provider: `requires_any[origins-0, allow_missing]`;
- several: `requires_any[origins-0, ..., origins-N-1, requires_all[requires_any[origins-i, allow_missing]...]]`,

so a request with no token in any provider's locations goes on, and a token that some provider extracts must be
valid for one provider that extracts it. Envoy evaluates it (source/extensions/filters/http/jwt_authn/):

- extractor.cc: a provider's locations are its fromHeaders (`name`, `prefix`: the prefix is searched anywhere in
  the value and the token starts at the next base64url-or-dot character after it), fromParams (the first value
  of the query parameter), fromCookies; with none of them, `Authorization: Bearer <t>` and `?access_token=<t>`.
  The location accepts only that provider's issuer (JwtIssuerChecker; an empty issuer accepts every issuer).
- authenticator.cc startVerify: every token a provider extracts is checked (from the last extracted), and the
  first failure ends it: parse (jwt_verify_lib Jwt::parseFromString), issuer allowed at the location
  (`Jwt issuer is not configured`), exp/nbf with the default 60 s clock skew (`Jwt is expired`), audiences
  (CheckAudience, `http(s)://` and a trailing `/` ignored on both sides: `Audiences in Jwt are not allowed`),
  then the signature (`Jwt verification fails`; `Jwks doesn't have key to match kid or alg from Jwt` when no
  key has the token's kid and alg).
- verifier.cc AnyVerifierImpl::onComplete: OK as soon as one child is OK; else, once all are done, the last
  child error that is neither JwtMissed nor JwtUnknownIssuer wins, then JwtUnknownIssuer, then JwtMissed (turned
  into OK by allow_missing). AllVerifierImpl: the first child that is not OK.
- filter.cc onComplete: a failure is a local reply with the status text as body, 401, or 403 for
  JwtAudienceNotAllowed; `bypass_cors_preflight` lets a CORS preflight through unchecked.

On success the payload (normalized: `scope`, `permission` and the rule's spaceDelimitedClaims split on spaces,
authenticator.cc setPayloadMetadata) is what RBAC's `request.auth.*` and requestPrincipals match.

Messages follow jwt_verify_lib's status.cc as Envoy builds it since 2020 (envoyproxy/envoy#11309, now
source/common/jwt/status.cc): a malformed token says `Jwt is not in the form of Header.Payload.Signature with
two dots and 3 sections`, a header that is not base64url `Jwt header is an invalid Base64url encoded`, one that
is not JSON `Jwt header is an invalid JSON` (research note §1.3 quotes the 2018 strings, which Envoy no longer
has).

The engine knows no keys: the target makes them per run. A token minted for a probe (`request.jwt`) is
modelled symbolically (valid signature unless `signature: invalid`, expired only when `expired`); a literal
token cannot carry a signature of a key made at run time, so one that parses is rejected with a message the
engine leaves open (Decision.detail None: the verdict is certain, the wording depends on the key's kid).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from conformance.engine.policy import JwtRule, RequestAuthentication
from conformance.model import JWKS_PLACEHOLDER, Issuer, JwtSpec, Request

# -- statuses (jwt_verify_lib status.cc as in Envoy's source/common/jwt/status.cc) ------------------------------


@dataclass(frozen=True)
class Status:
    """A jwt_verify_lib status: its code name and the text Envoy answers with (None: the engine cannot say which
    text, only that the token fails)."""

    code: str
    message: str | None

    @property
    def ok(self) -> bool:
        return self.code == "Ok"

    @property
    def http_status(self) -> int:
        """filter.cc onComplete: 403 for a token whose audience is not allowed, 401 for every other failure."""
        return 403 if self.code == "JwtAudienceNotAllowed" else 401


OK = Status("Ok", "OK")
MISSED = Status("JwtMissed", "Jwt is missing")
UNKNOWN_ISSUER = Status("JwtUnknownIssuer", "Jwt issuer is not configured")
EXPIRED = Status("JwtExpired", "Jwt is expired")
AUDIENCE_NOT_ALLOWED = Status("JwtAudienceNotAllowed", "Audiences in Jwt are not allowed")
VERIFICATION_FAILS = Status("JwtVerificationFail", "Jwt verification fails")
BAD_FORMAT = Status("JwtBadFormat", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
HEADER_BAD_BASE64 = Status("JwtHeaderParseErrorBadBase64", "Jwt header is an invalid Base64url encoded")
HEADER_BAD_JSON = Status("JwtHeaderParseErrorBadJson", "Jwt header is an invalid JSON")
HEADER_BAD_ALG = Status("JwtHeaderBadAlg", "Jwt header [alg] field is required and must be a string")
HEADER_NOT_IMPLEMENTED_ALG = Status("JwtHeaderNotImplementedAlg", "Jwt header [alg] is not supported")
HEADER_BAD_KID = Status("JwtHeaderBadKid", "Jwt header [kid] field is not a string")
PAYLOAD_BAD_BASE64 = Status("JwtPayloadParseErrorBadBase64", "Jwt payload is an invalid Base64url encoded")
PAYLOAD_BAD_JSON = Status("JwtPayloadParseErrorBadJson", "Jwt payload is an invalid JSON")
SIGNATURE_BAD_BASE64 = Status("JwtSignatureParseErrorBadBase64", "Jwt signature is an invalid Base64url encoded")
# What the engine cannot word: a token that fails, but where and how depends on what only the target knows
# (the keys' kid and alg, the clock, an Envoy release difference).
UNWORDED = Status("Unworded", None)

_STRING_CLAIMS = {"iss": "JwtPayloadParseErrorIssNotString", "sub": "JwtPayloadParseErrorSubNotString",
                  "jti": "JwtPayloadParseErrorJtiNotString"}
_TIME_CLAIMS = ("iat", "nbf", "exp")
_IMPLEMENTED_ALGS = frozenset({"ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
                               "PS256", "PS384", "PS512", "EdDSA"})


def _claim_type_status(payload: Mapping[str, Any]) -> Status | None:
    """Jwt::parseFromString's payload checks: iss, sub, jti strings; iat, nbf, exp non-negative integers below
    2^64; aud a string or a list of strings."""
    for name, code in _STRING_CLAIMS.items():
        if name in payload and not isinstance(payload[name], str):
            return Status(code, f"Jwt payload [{name}] field is not a string")
    for name in _TIME_CLAIMS:
        if name not in payload:
            continue
        value = payload[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Status(f"JwtPayloadParseError{name.capitalize()}NotInteger",
                          f"Jwt payload [{name}] field is not an integer")
        if value < 0 or value >= 2**64:
            return Status(f"JwtPayloadParseError{name.capitalize()}OutOfRange",
                          f"Jwt payload [{name}] field is not a positive 64 bit integer")
    aud = payload.get("aud")
    if "aud" in payload and not (isinstance(aud, str) or (isinstance(aud, list)
                                                            and all(isinstance(a, str) for a in aud))):
        return Status("JwtPayloadParseErrorAudNotString", "Jwt payload [aud] field is not a string or string list")
    return None


# -- parsing a literal token (jwt_verify_lib Jwt::parseFromString; absl WebSafeBase64Unescape) -----------------

_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_ASCII_SPACE = frozenset(" \t\n\v\f\r")


def websafe_base64_unescape(text: str) -> bytes | None:
    """absl::WebSafeBase64Unescape: the URL-safe alphabet, whitespace skipped, padding (`=`) optional but, when
    present, exactly what the length calls for; a lone sixth bit group (length 1 mod 4) is an error."""
    data = [c for c in text if c not in _ASCII_SPACE]
    end = len(data)
    while end and data[end - 1] == "=":
        end -= 1
    body, pads = data[:end], len(data) - end
    if any(c not in _B64URL for c in body):
        return None
    state = len(body) % 4
    if state == 1:
        return None
    expected = {0: 0, 2: 2, 3: 1}[state]
    if pads not in (0, expected):
        return None
    raw = "".join(body)
    return base64.urlsafe_b64decode(raw + "=" * ((4 - len(raw) % 4) % 4))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """protobuf JsonStringToMessage into a Struct: strict UTF-8 JSON whose top level is an object."""
    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def parse_token(token: str) -> tuple[Status, dict[str, Any] | None]:
    """The status of Jwt::parseFromString for a literal token, and its payload when it parses.

    Releases differ on a token with more than two dots whose non-empty sections are three (`a.b.c.`): the
    library Envoy long vendored rejects it for its dot count, the copy Envoy keeps since early 2026
    (envoyproxy/envoy#43231, source/common/jwt/jwt.cc) only counts non-empty sections. Such a token is
    UNWORDED: rejected either way, the wording open."""
    sections = [s for s in token.split(".") if s]
    if len(sections) != 3:
        return BAD_FORMAT, None
    if token.count(".") != 2:
        return UNWORDED, None
    header_raw = websafe_base64_unescape(sections[0])
    if header_raw is None:
        return HEADER_BAD_BASE64, None
    header = _json_object(header_raw)
    if header is None:
        return HEADER_BAD_JSON, None
    alg = header.get("alg")
    if not isinstance(alg, str):
        return HEADER_BAD_ALG, None
    if alg not in _IMPLEMENTED_ALGS:
        return HEADER_NOT_IMPLEMENTED_ALG, None
    if "kid" in header and not isinstance(header["kid"], str):
        return HEADER_BAD_KID, None
    payload_raw = websafe_base64_unescape(sections[1])
    if payload_raw is None:
        return PAYLOAD_BAD_BASE64, None
    payload = _json_object(payload_raw)
    if payload is None:
        return PAYLOAD_BAD_JSON, None
    typed = _claim_type_status(payload)
    if typed is not None:
        return typed, None
    if websafe_base64_unescape(sections[2]) is None:
        return SIGNATURE_BAD_BASE64, None
    return OK, payload


# -- where a probe carries what (extractor.cc) -----------------------------------------------------------------

# The placeholder for the minted token wherever the engine must show a header holding it (RBAC `request.headers`
# matches): a prefix or presence match behaves as with the real token, an exact or suffix match never holds.
MINTED_TEXT = "\u2039minted-jwt\u203a"
PAYLOAD_TEXT = "\u2039jwt-payload\u203a"
# Every minted token starts with these characters: base64url of `{"`, the start of its JSON header.
_TOKEN_START = "eyJ"
_TOKEN_CHARS = _B64URL | {"."}


@dataclass(frozen=True)
class Carried:
    """A header or query parameter value of a probe as Envoy sees it: a literal text, or a literal text followed
    by the token minted for the probe (`minted`)."""

    before: str
    minted: bool = False

    def text(self) -> str:
        return self.before + (MINTED_TEXT if self.minted else "")


@dataclass(frozen=True)
class Extracted:
    """What a location yields: the minted token exactly (`kind` "minted"), a literal text, or the minted token
    with other characters around it ("mangled": it cannot parse, how it fails depends on the token)."""

    kind: str  # "minted" | "literal" | "mangled"
    text: str | None  # the literal text
    header: str | None  # the header it came from (lower case), None for a query parameter


def carried_headers(request: Request) -> tuple[tuple[str, Carried], ...]:
    """The probe's request headers (lower-case names) with its token where `request.jwt.in` puts it."""
    out = [(k.lower(), Carried(v)) for k, v in request.headers]
    jwt = request.jwt
    if jwt is not None and jwt.location.header is not None:
        name = jwt.location.header.lower()
        if jwt.raw is not None:
            out.append((name, Carried(jwt.location.prefix + jwt.raw)))
        else:
            out.append((name, Carried(jwt.location.prefix, minted=True)))
    return tuple(out)


def carried_params(request: Request) -> tuple[tuple[str, Carried], ...]:
    """Http::Utility::QueryParamsMulti::parseAndDecodeQueryString of the path the target sends: the path's own
    query, then `<param>=<token>` when the token goes in a query parameter (appended last)."""
    out: list[tuple[str, Carried]] = []
    path = request.path.split("#", 1)[0]
    if "?" in path:
        for piece in path.split("?", 1)[1].split("&"):
            if not piece:
                continue
            key, sep, value = piece.partition("=")
            out.append((unquote_plus(key), Carried(unquote_plus(value) if sep else "")))
    jwt = request.jwt
    if jwt is not None and jwt.location.param is not None:
        out.append((jwt.location.param, Carried(jwt.raw) if jwt.raw is not None else Carried("", minted=True)))
    return tuple(out)


def _after_prefix(value: str, start: int) -> int:
    """extractor.cc extractJWT: the first base64url-or-dot character at or after `start` (-1: none)."""
    for i in range(start, len(value)):
        if value[i] in _TOKEN_CHARS:
            return i
    return -1


def extract(value: Carried, prefix: str, header: str | None) -> Extracted | None:
    """One header value through a fromHeaders location with `prefix` (a query parameter has no prefix): None
    when the prefix is not in the value.

    For the minted token the engine knows only its first characters: a prefix found nowhere in the literal part
    and the token's start is taken as absent (a prefix made only of token characters could occur inside a real
    token; the suite's scenarios use `Bearer `-like prefixes)."""
    if not value.minted:
        text = value.before
        if prefix == "":
            return Extracted("literal", text, header)
        pos = text.find(prefix)
        if pos < 0:
            return None
        start = _after_prefix(text, pos + len(prefix))
        return Extracted("literal", text if start < 0 else text[start:], header)
    if prefix == "":
        return Extracted("minted" if value.before == "" else "mangled", None, header)
    known = value.before + _TOKEN_START
    pos = known.find(prefix)
    if pos < 0:
        return None
    after = pos + len(prefix)
    if after > len(value.before):
        return Extracted("mangled", None, header)
    start = _after_prefix(value.before, after)
    return Extracted("minted" if start < 0 else "mangled", None, header)


# -- the providers istiod makes -------------------------------------------------------------------------------

DEFAULT_HEADER = ("authorization", "Bearer ")
DEFAULT_PARAM = "access_token"
DEFAULT_SPACE_DELIMITED = ("permission", "scope")


@dataclass(frozen=True)
class Provider:
    """One Envoy JwtProvider (`origins-<index>`) built from a jwtRule of `ra`."""

    index: int
    ra: RequestAuthentication
    rule: JwtRule
    space_delimited: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"origins-{self.index}"

    @property
    def header_locations(self) -> tuple[tuple[str, str], ...]:
        """(lower-case header, prefix), in the order of the extractor's map (header name + prefix, sorted)."""
        if self.default_locations:
            return (DEFAULT_HEADER,)
        locations = {name.lower() + prefix: (name.lower(), prefix) for name, prefix in self.rule.from_headers}
        return tuple(locations[k] for k in sorted(locations))

    @property
    def param_locations(self) -> tuple[str, ...]:
        if self.default_locations:
            return (DEFAULT_PARAM,)
        return tuple(sorted(set(self.rule.from_params)))

    @property
    def default_locations(self) -> bool:
        r = self.rule
        return not (r.from_headers or r.from_params or r.from_cookies)

    def describe_locations(self) -> str:
        parts = [f"{h}: {p}…" if p else f"{h}:" for h, p in self.header_locations]
        parts += [f"?{p}=" for p in self.param_locations]
        parts += [f"cookie {c}" for c in sorted(set(self.rule.from_cookies))]
        return ", ".join(parts)


def providers(ras: Sequence[RequestAuthentication], space_delimited_rule_field: bool) -> tuple[Provider, ...]:
    """convertToEnvoyJwtConfig's providers: every jwtRule of every applicable RequestAuthentication (in the order
    istiod lists them), sorted by issuer (Go's sort is an insertion sort at this size, so stable), numbered.
    `space_delimited_rule_field`: Istio ≥ 1.28 adds the rule's spaceDelimitedClaims to scope and permission
    (buildSpaceDelimitedClaims); before, only those two."""
    rules = [(ra, r) for ra in ras for r in ra.jwt_rules]
    rules.sort(key=lambda pair: pair[1].issuer or "")
    out = []
    for i, (ra, r) in enumerate(rules):
        extra = r.space_delimited_claims if space_delimited_rule_field else ()
        out.append(Provider(i, ra, r, tuple(sorted({*DEFAULT_SPACE_DELIMITED, *extra}))))
    return tuple(out)


# -- verification -------------------------------------------------------------------------------------------------


def sanitize_audience(aud: str) -> str:
    """jwt_verify_lib check_audience.cc sanitizeAudience: drop an `http://` or `https://` prefix and one trailing
    slash."""
    if not aud:
        return aud
    beg = 0
    if aud.startswith("http://"):
        beg = len("http://")
    elif aud.startswith("https://"):
        beg = len("https://")
    end = len(aud) - 1 if aud.endswith("/") else len(aud)
    return aud[beg:end]


def audiences_allowed(configured: Sequence[str], token_audiences: Sequence[str]) -> bool:
    """CheckAudience::areAudiencesAllowed: no configured audiences allows any token; else one of the token's
    audiences must be configured (both sides sanitized)."""
    if not configured:
        return True
    allowed = {sanitize_audience(a) for a in configured}
    return any(sanitize_audience(a) in allowed for a in token_audiences)


def minted_payload(spec: JwtSpec, issuer: Issuer | None) -> dict[str, Any]:
    """The claims of a minted token: the spec's, `iss` from its issuer, and the `iat` and `exp` the target adds
    (their values are the target's; only their presence and type matter here)."""
    payload = spec.payload()
    if issuer is not None:
        payload["iss"] = issuer.issuer
    payload.setdefault("iat", 0)
    payload.setdefault("exp", 0)
    return payload


@dataclass(frozen=True)
class TokenCheck:
    status: Status
    payload: dict[str, Any] | None = None


def check_token(provider: Provider, token: Extracted, spec: JwtSpec | None,
                issuers: Mapping[str, Issuer]) -> TokenCheck:
    """authenticator.cc startVerify for one extracted token at one provider, in its order: parse, issuer,
    time, audiences, signature."""
    rule = provider.rule
    if token.kind == "mangled":
        return TokenCheck(UNWORDED)
    if token.kind == "literal":
        assert token.text is not None
        status, payload = parse_token(token.text)
        if not status.ok:
            return TokenCheck(status)
        assert payload is not None
        if rule.issuer is not None and payload.get("iss", "") != rule.issuer:
            return TokenCheck(UNKNOWN_ISSUER)
        # nbf / exp against a clock the engine does not have, then a signature no key made at run time can
        # verify: rejected, in words the engine cannot know
        return TokenCheck(UNWORDED)
    assert spec is not None and spec.issuer is not None
    issuer = issuers.get(spec.issuer)
    payload = minted_payload(spec, issuer)
    typed = _claim_type_status(payload)
    if typed is not None:
        return TokenCheck(typed)
    if rule.issuer is not None and payload.get("iss") != rule.issuer:
        return TokenCheck(UNKNOWN_ISSUER)
    if spec.expired:
        return TokenCheck(EXPIRED)
    aud = payload.get("aud")
    token_audiences = [aud] if isinstance(aud, str) else list(aud or [])
    if not audiences_allowed(rule.audiences, token_audiences):
        return TokenCheck(AUDIENCE_NOT_ALLOWED)
    if not signed_by_these_keys(rule, spec.issuer):
        # another issuer's keys: no key verifies it; whether one has its kid decides the wording
        return TokenCheck(UNWORDED)
    if spec.signature == "invalid":
        # a key the JWKS does not hold, with the kid and alg of the issuer's key (the target's minting
        # contract): verify.cc finds the key and the signature fails
        return TokenCheck(VERIFICATION_FAILS)
    return TokenCheck(OK, payload)


def signed_by_these_keys(rule: JwtRule, issuer_name: str) -> bool:
    """Whether the rule's inline JWKS is the JWKS of the issuer that signs the token (`${jwks:<that name>}`)."""
    if rule.jwks is None:
        return False
    m = JWKS_PLACEHOLDER.fullmatch(rule.jwks.strip())
    return m is not None and m.group(1) == issuer_name


# -- the requirement tree ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderResult:
    provider: Provider
    status: Status
    tokens: tuple[Extracted, ...]
    payload: dict[str, Any] | None  # the verified payload (normalized), when status is OK
    good: tuple[Extracted, ...]  # tokens it verified


@dataclass(frozen=True)
class Outcome:
    """What the JWT filter did with a request."""

    rejected: bool
    status: Status  # OK, or the status of the reply
    by: Provider | None  # the provider whose status is the reply's (rejected) or that verified (accepted)
    payload: dict[str, Any] | None
    headers: tuple[tuple[str, str], ...]  # the request headers RBAC sees afterwards (lower-case names)
    results: tuple[ProviderResult, ...] = ()
    cors_preflight: bool = False
    notes: tuple[str, ...] = field(default=(), compare=False)


def _normalize(payload: dict[str, Any], claims: Sequence[str]) -> dict[str, Any]:
    """authenticator.cc setPayloadMetadata: a top-level string claim named in space_delimited_claims becomes the
    list of its space-separated words (an all-space or empty string stays as it is)."""
    out = dict(payload)
    for claim in claims:
        value = payload.get(claim)
        if isinstance(value, str):
            words = [w for w in value.split(" ") if w]
            if words:
                out[claim] = words
    return out


def _run_provider(provider: Provider, headers: Sequence[tuple[str, Carried]], params: Sequence[tuple[str, Carried]],
                  spec: JwtSpec | None, issuers: Mapping[str, Issuer]) -> ProviderResult:
    tokens: list[Extracted] = []
    for name, prefix in provider.header_locations:
        for hname, value in headers:
            if hname == name:
                got = extract(value, prefix, name)
                if got is not None:
                    tokens.append(got)
    for param in provider.param_locations:
        first = next((v for k, v in params if k == param), None)  # QueryParamsMulti getFirstValue
        if first is not None:
            got = extract(first, "", None)
            if got is not None:
                tokens.append(got)
    if not tokens:
        return ProviderResult(provider, MISSED, (), None, ())
    good: list[Extracted] = []
    payload: dict[str, Any] | None = None
    for token in reversed(tokens):  # authenticator.cc: tokens_.back() first
        checked = check_token(provider, token, spec, issuers)
        if not checked.status.ok:
            return ProviderResult(provider, checked.status, tuple(tokens), None, tuple(good))
        good.append(token)
        payload = checked.payload  # ContextImpl::addExtractedData: the last one verified wins
    assert payload is not None
    return ProviderResult(provider, OK, tuple(tokens), _normalize(payload, provider.space_delimited), tuple(good))


def _any_status(children: Sequence[Status], allow_missing: bool) -> Status:
    """AnyVerifierImpl::onComplete once every child failed: prefer a real error (the last one), then
    JwtUnknownIssuer, then JwtMissed; allow_missing turns JwtMissed into OK."""
    final = MISSED
    for s in children:
        if s.code not in (MISSED.code, UNKNOWN_ISSUER.code) or final.code == MISSED.code:
            final = s
    if allow_missing and final.code == MISSED.code:
        return OK
    return final


def is_cors_preflight(request: Request) -> bool:
    """filter.cc with bypass_cors_preflight (istiod sets it): OPTIONS with a non-empty Origin and
    Access-Control-Request-Method."""
    return (request.method == "OPTIONS" and bool(request.header("origin"))
            and bool(request.header("access-control-request-method")))


def authenticate(provs: Sequence[Provider], request: Request, issuers: Mapping[str, Issuer]) -> Outcome:
    """The JWT filter of a proxy with these providers, for one request."""
    headers = carried_headers(request)
    seen = tuple((k, v.text()) for k, v in headers)
    if not provs:
        return Outcome(False, OK, None, None, seen)
    if is_cors_preflight(request):
        return Outcome(False, OK, None, None, seen, cors_preflight=True)
    params = carried_params(request)
    spec = request.jwt if request.jwt is not None and request.jwt.raw is None else None
    results = [_run_provider(p, headers, params, spec, issuers) for p in provs]
    ran = len(results)
    accepted: ProviderResult | None = None
    for i, r in enumerate(results):  # BaseGroupVerifierImpl::verify stops at the first OK child
        if r.status.ok:
            accepted, ran = r, i + 1
            break
    if accepted is None:
        if len(results) == 1:
            status = _any_status([results[0].status], allow_missing=True)
            by = results[0].provider
        else:
            # requires_all[requires_any[origins-i, allow_missing]...]: the first child not OK
            inner = [(_any_status([r.status], allow_missing=True), r.provider) for r in results]
            all_status, all_by = next(((s, p) for s, p in inner if not s.ok), (OK, None))
            if all_status.ok:
                status, by = OK, None
            else:
                children = [r.status for r in results] + [all_status]
                status = _any_status(children, allow_missing=False)
                # the provider whose status became the reply's: the last child with it
                owners = [r.provider for r in results] + [all_by]
                by = next(p for s, p in zip(reversed(children), reversed(owners), strict=True) if s == status)
        if not status.ok:
            return Outcome(True, status, by, None, _sanitized(seen, provs[:ran]), tuple(results))
        return Outcome(False, OK, None, None, _sanitized(seen, provs[:ran]), tuple(results))
    after = _after_good(_sanitized(seen, provs[:ran]), accepted)
    return Outcome(False, OK, accepted.provider, accepted.payload, after, tuple(results))


def _sanitized(headers: tuple[tuple[str, str], ...], provs: Sequence[Provider]) -> tuple[tuple[str, str], ...]:
    """extractor.cc sanitizeHeaders, run by every provider verifier that ran: the headers it would write
    (outputPayloadToHeader, outputClaimToHeaders) are removed from the request first."""
    drop = set()
    for p in provs:
        if p.rule.output_payload_to_header:
            drop.add(p.rule.output_payload_to_header.lower())
        drop.update(h.lower() for h, _ in p.rule.output_claim_to_headers)
    return tuple((k, v) for k, v in headers if k not in drop)


def _claim_header_value(payload: Mapping[str, Any], claim: str) -> str | None:
    """authenticator.cc addJWTClaimToHeader: a string as is, a number as an integer when it is one, a bool as
    true/false; anything else, or an empty value, adds nothing."""
    value: Any = payload
    for part in claim.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value) if value >= 0 else f"{float(value):f}"
    if isinstance(value, float):
        return str(int(value)) if value >= 0 and value.is_integer() else f"{value:f}"
    return None


def _after_good(headers: tuple[tuple[str, str], ...], result: ProviderResult) -> tuple[tuple[str, str], ...]:
    """authenticator.cc handleGoodJwt for each verified token: the payload header and claim headers added, and,
    unless forwardOriginalToken, the header the token came from removed."""
    rule = result.provider.rule
    out = list(headers)
    raw_payload = result.payload or {}
    for token in result.good:
        if rule.output_payload_to_header:
            out.append((rule.output_payload_to_header.lower(), PAYLOAD_TEXT))
        for header, claim in rule.output_claim_to_headers:
            value = _claim_header_value(raw_payload, claim)
            if value is not None:
                out.append((header.lower(), value))
        if not rule.forward_original_token and token.header is not None:
            out = [(k, v) for k, v in out if k != token.header]
    return tuple(out)


# -- what the guard refuses ----------------------------------------------------------------------------------


def unmodelled_claims(spec: JwtSpec) -> tuple[str, ...]:
    """Claims of a minted token whose effect depends on what the target does at run time: `iat` (the target sets
    its own) and `nbf` (compared with the proxy's clock)."""
    return tuple(k for k in ("iat", "nbf") if k in spec.claims)
