"""JWT issuers a run plays, on every target: a signing key per issuer made at run time, its JWKS, a token per probe.

A scenario names issuers (`spec.issuers`: a handle and the `iss` its tokens carry), puts their public keys
into RequestAuthentications as `${jwks:<handle>}`, and gives probes a `request.jwt` (model.JwtSpec). The
keys exist only for one run: `IssuerKeys` makes them (RSA 2048, RS256, with PyJWT on `cryptography`, the
algorithm Istio's own test tokens use, tests/common/jwt), `jwks` gives the JSON Web Key Set a
RequestAuthentication's `jwks` holds inline (so istiod, and here the compiler, fetch nothing), and `mint`
signs the token a probe carries:

- the claims of the spec (`sub`, `aud` as a string or a list, `azp`, nested `claims`), `iss` the issuer's,
  `iat` now and `exp` an hour ahead, or, `expired`, both a day in the past: far beyond the 60 s clock skew
  Envoy's JWT filter allows (jwt_authn authenticator.cc kClockSkewInSecond, which Istio leaves unset);
- `signature: invalid`: signed by a key of the run that no JWKS holds, under the issuer's own `kid`, so the
  filter finds the key by kid and the signature check itself fails (`Jwt verification fails`);
- `raw`: the literal string, sent as it is (Istio's malformed-token cases, `deadbeef`).

`carry` puts the token where the spec's `in` says: a header (with its prefix, `Bearer ` by default) or a
query parameter appended to the path. Nothing here interprets policies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import rsa

from conformance.errors import TargetError
from conformance.model import Issuer, JwtSpec, Request

ALGORITHM = "RS256"
LIFETIME = 3600  # a valid token's exp is an hour after iat
EXPIRED_AGO = 86400  # an expired token's exp: a day ago, far past Envoy's 60 s skew


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_KEYS: list[rsa.RSAPrivateKey] = []  # made once per process, lent out by position (KeyRing)
_KEYS_LOCK = threading.Lock()


def _key(position: int) -> rsa.RSAPrivateKey:
    """The process's `position`-th RSA key, made when first asked for (an RSA-2048 key costs ~50-100 ms of CPU,
    paid by every JWT scenario run before). A run takes positions 0, 1, 2, ... for its keys, so no two keys of
    one run are the same key, which is all a run's tokens depend on: a stranger key that is another issuer's
    key in the same run would verify, and never is; keys of two runs may be equal, and no token or JWKS of one
    run ever reaches another's proxies."""
    with _KEYS_LOCK:
        while len(_KEYS) <= position:
            _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEYS[position]


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    """The public half of `key` as a JWK (RFC 7517/7518 §6.3.1): what a JWKS may hold, nothing private."""
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "alg": ALGORITHM, "use": "sig", "kid": kid,
            "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}


@dataclass(frozen=True)
class _Signer:
    issuer: Issuer
    kid: str
    key: rsa.RSAPrivateKey


class IssuerKeys:
    """The run's keys: one per scenario issuer, and one stranger key that signs `signature: invalid` tokens.

    Keys are made lazily (an RSA key takes tens of milliseconds) and live only in memory.
    """

    def __init__(self, issuers: Sequence[Issuer]):
        self._issuers = {i.name: i for i in issuers}
        self._signers: dict[str, _Signer] = {}
        self._stranger: rsa.RSAPrivateKey | None = None
        self._made = 0  # keys this run has taken (`_key` positions)
        # apply() renders the JWKS while the enforcement-gap loop (gap.py) already mints tokens in another
        # thread: without the lock both made a key for the same issuer, Envoy got one, tokens the other, and
        # every token was refused "Jwks doesn't have key to match kid" (found running two JWT scenarios)
        self._lock = threading.Lock()

    def _next_key(self) -> rsa.RSAPrivateKey:
        """A key no other issuer of this run (nor its stranger) has; the caller holds the lock."""
        self._made += 1
        return _key(self._made - 1)

    def _signer(self, name: str) -> _Signer:
        with self._lock:
            return self._signer_locked(name)

    def _signer_locked(self, name: str) -> _Signer:
        signer = self._signers.get(name)
        if signer is None:
            issuer = self._issuers.get(name)
            if issuer is None:
                raise TargetError(f"JWT issuer {name!r} is not one of the scenario's issuers")
            key = self._next_key()
            kid = hashlib.sha256(json.dumps(public_jwk(key, ""), sort_keys=True).encode()).hexdigest()[:16]
            signer = self._signers[name] = _Signer(issuer, kid, key)
        return signer

    def jwks(self, name: str) -> str:
        """The JWKS (JSON text) of issuer `name`: its one public key."""
        signer = self._signer(name)
        return json.dumps({"keys": [public_jwk(signer.key, signer.kid)]}, sort_keys=True)

    def all_jwks(self) -> dict[str, str]:
        """name -> JWKS for every issuer of the scenario (what Manifest.rendered(jwks=...) fills in)."""
        return {name: self.jwks(name) for name in self._issuers}

    def mint(self, spec: JwtSpec, now: float | None = None) -> str:
        """The token `spec` describes, signed now (see the module docstring)."""
        import jwt as pyjwt  # PyJWT; imported here so that a missing package is a clear refusal, not an import error

        if spec.raw is not None:
            return spec.raw
        if spec.issuer is None:
            raise TargetError(f"{spec.describe()}: a minted token needs an issuer")
        signer = self._signer(spec.issuer)
        issued = int(now if now is not None else time.time())
        if spec.expired:
            issued -= 2 * EXPIRED_AGO
            expires = issued + EXPIRED_AGO
        else:
            expires = issued + LIFETIME
        claims: dict[str, Any] = {"iss": signer.issuer.issuer, "iat": issued, "exp": expires}
        claims.update(spec.payload())
        key = signer.key
        if spec.signature == "invalid":
            with self._lock:
                if self._stranger is None:
                    self._stranger = self._next_key()
                key = self._stranger
        return str(pyjwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": signer.kid}))


def carry(request: Request, token: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(path, headers) of `request` with `token` where its JwtSpec's `in` says: a header `<prefix><token>`
    after the request's own headers, or `?<param>=<token>` (`&` when the path has a query already)."""
    assert request.jwt is not None
    where = request.jwt.location
    if where.param is not None:
        sep = "&" if "?" in request.path else "?"
        return f"{request.path}{sep}{quote(where.param, safe='')}={quote(token, safe='')}", request.headers
    assert where.header is not None
    return request.path, (*request.headers, (where.header, f"{where.prefix}{token}"))


def jwks_keys(jwks: str) -> list[Mapping[str, Any]]:
    """The keys of a JWKS document (for tests and reports)."""
    keys = json.loads(jwks).get("keys")
    return list(keys) if isinstance(keys, list) else []
