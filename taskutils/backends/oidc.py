"""The ``Trust`` port off App Engine: the OIDC token Cloud Tasks attaches to an HTTP task.

Cloud Tasks sends an HTTP task with ``Authorization: Bearer <JWT>``, an ID token Google
signs for the task's service account and audience. ``OidcTrust.verify`` checks its RS256
signature against Google's certs (or ``oidc_certs_url``'s), then ``aud``, ``iss``,
``email`` (in ``allowed_senders``), ``email_verified``, ``exp`` and ``iat``. The certs
are cached as their ``Cache-Control: max-age`` allows; a token seen before is checked
again against the claims and the clock, without a second RSA verify.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..config import CloudSettings
from ..exc import CertsUnavailableError, UntrustedRequestError

log = logging.getLogger("taskutils.backends.oidc")

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CLOCK_SKEW = 5.0  # seconds a token's exp and iat may be off from this clock
FETCH_TIMEOUT = 5.0  # seconds for one certs request
DEFAULT_MAX_AGE = 300.0  # seconds certs are kept when their answer says nothing
MAX_MAX_AGE = 24 * 3600.0
REFETCH_INTERVAL = 5.0  # at most one fetch this often for an unknown kid or after a failed fetch
MAX_TOKENS = 1024  # verified tokens remembered; Cloud Tasks sends one token for many tasks

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*(\d+)", re.IGNORECASE)
_SHA256 = hashes.SHA256()
_PKCS1 = padding.PKCS1v15()


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64_int(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("not a base64url string")
    return int.from_bytes(_b64(value), "big")


def parse_certs(document: object) -> dict[str, rsa.RSAPublicKey]:
    """The RSA keys by kid of either format Google publishes: the PEM map of ``oauth2/v1/certs``
    (``{kid: "-----BEGIN CERTIFICATE-----..."}``) or the JWKS of ``oauth2/v3/certs``
    (``{"keys": [{"kid", "kty": "RSA", "n", "e"}, ...]}``)."""
    if not isinstance(document, dict):
        raise ValueError("the certs are not a JSON object")
    keys: dict[str, rsa.RSAPublicKey] = {}
    if isinstance(document.get("keys"), list):
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not isinstance(jwk.get("kid"), str):
                continue
            if jwk.get("alg", "RS256") != "RS256" or jwk.get("use", "sig") != "sig":
                continue
            numbers = rsa.RSAPublicNumbers(_b64_int(jwk.get("e")), _b64_int(jwk.get("n")))
            keys[jwk["kid"]] = numbers.public_key()
        return keys
    for kid, pem in document.items():
        if not isinstance(pem, str):
            raise ValueError(f"the cert of kid {kid!r} is not a PEM string")
        public_key = x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            keys[kid] = public_key
    return keys


def max_age(headers: Mapping[str, str]) -> float:
    """How long an answer's certs may be kept: its Cache-Control max-age, else Expires - Date."""
    found = _MAX_AGE.search(headers.get("Cache-Control", ""))
    if found:
        return min(float(found.group(1)), MAX_MAX_AGE)
    try:
        expires = email.utils.parsedate_to_datetime(headers["Expires"])
        date = email.utils.parsedate_to_datetime(headers["Date"])
        return min(max((expires - date).total_seconds(), 0.0), MAX_MAX_AGE)
    except (KeyError, TypeError, ValueError):
        return DEFAULT_MAX_AGE


class Certs:
    """The public keys at one certs URL, fetched when first needed and kept as long as the answer allows.

    An unknown kid fetches them again (a key Google just rotated in), but at most once per
    ``REFETCH_INTERVAL``, so a flood of made-up kids costs the URL one request; a failed
    fetch is not retried sooner either.
    """

    def __init__(self, url: str, timeout: float = FETCH_TIMEOUT, refetch_interval: float = REFETCH_INTERVAL) -> None:
        self.url = url
        self.timeout = timeout
        self.refetch_interval = refetch_interval
        self.keys: dict[str, rsa.RSAPublicKey] = {}
        self.expires = 0.0  # time.monotonic() after which the keys are fetched again
        self._last_try = -refetch_interval  # monotonic time of the last forced or failed fetch
        self._error: str | None = None
        self._lock = threading.Lock()

    def key(self, kid: str) -> rsa.RSAPublicKey:
        """The key called kid; UntrustedRequestError when the certs have none, CertsUnavailableError
        when they cannot be fetched."""
        if time.monotonic() >= self.expires:
            self._refresh(force=False)
        found = self.keys.get(kid)
        if found is None:
            self._refresh(force=True)
            found = self.keys.get(kid)
            if found is None:
                raise UntrustedRequestError(f"token kid {kid[:100]!r} is not in the certs at {self.url}")
        return found

    def holds(self, kid: str) -> bool:
        """True while the certs are fresh and hold kid: a token it verified still counts."""
        return time.monotonic() < self.expires and kid in self.keys

    def _refresh(self, force: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now < self.expires:  # another thread fetched them meanwhile
                return
            if (force or self._error is not None) and now - self._last_try < self.refetch_interval:
                if self._error is not None and not self.keys:
                    raise CertsUnavailableError(f"cannot fetch the certs at {self.url}: {self._error}")
                return
            if force:
                self._last_try = now
            try:
                self.keys, ttl = self._fetch()
            except CertsUnavailableError as e:
                self._error, self._last_try = str(e.__cause__ or e), now
                if now >= self.expires:  # keys still fresh keep verifying: a made-up kid cannot void them
                    self.keys, self.expires = {}, 0.0
                raise
            self._error = None
            self.expires = time.monotonic() + ttl

    def _fetch(self) -> tuple[dict[str, rsa.RSAPublicKey], float]:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 (a configured URL)
                document = json.loads(answer.read())
                ttl = max_age(answer.headers)
            keys = parse_certs(document)
        except (OSError, urllib.error.URLError, ValueError, TypeError) as e:
            raise CertsUnavailableError(f"cannot fetch the certs at {self.url}: {type(e).__name__}: {e}") from e
        log.info("fetched %d OIDC keys from %s, kept %.0f s", len(keys), self.url, ttl)
        return keys, ttl


@dataclass(frozen=True)
class Claims:
    """What a verified token says, as far as the handler checks it."""

    kid: str
    iss: object
    aud: object
    email: object
    email_verified: object
    exp: float
    iat: float


class OidcTrust:
    """The ``Trust`` port on Cloud Tasks: verifies a task request's ``Authorization: Bearer`` ID token
    against the certs and the ``CloudSettings`` (audience, allowed senders)."""

    def __init__(self, certs: Certs, cloud: CloudSettings) -> None:
        self.certs = certs
        self.cloud = cloud
        self._verified: dict[str, Claims] = {}  # token -> its claims, once its signature checked out

    def verify(self, environ: Mapping[str, Any]) -> str:
        """The sender's email when the request's token proves it comes from an allowed sender;
        UntrustedRequestError saying why not (never quoting the token) otherwise."""
        authorization = environ.get("HTTP_AUTHORIZATION")
        if not authorization:
            raise UntrustedRequestError("no Authorization header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise UntrustedRequestError("the Authorization header is not a Bearer token")
        cloud = self.cloud
        seen = self._verified.get(token)
        if (  # checked before: what can change since is the clock, the settings and the certs
            seen is not None
            and time.time() <= seen.exp + CLOCK_SKEW
            and seen.aud == cloud.resolved_audience()
            and seen.email in cloud.senders()
            and self.certs.holds(seen.kid)
        ):
            return str(seen.email)
        claims = self._signed_claims(token)
        sender = self._check(claims, cloud)
        if len(self._verified) >= MAX_TOKENS:
            self._verified.clear()
        self._verified[token] = claims
        return sender

    def _signed_claims(self, token: str) -> Claims:
        try:
            head, body, signature = token.strip().split(".")
            header = json.loads(_b64(head))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise UntrustedRequestError("malformed token: not a JWT") from None
        if not isinstance(header, dict):
            raise UntrustedRequestError("malformed token: its header is not an object")
        alg, kid = header.get("alg"), header.get("kid")
        if alg != "RS256":  # never "none", never HS256 keyed with a public key
            raise UntrustedRequestError(f"token alg {str(alg)[:20]!r}: only RS256 is accepted")
        if not isinstance(kid, str):
            raise UntrustedRequestError("token header has no kid")
        key = self.certs.key(kid)
        try:
            key.verify(_b64(signature), f"{head}.{body}".encode("ascii"), _PKCS1, _SHA256)
        except (InvalidSignature, ValueError, binascii.Error, UnicodeEncodeError):
            raise UntrustedRequestError(f"token signature does not verify with kid {kid[:100]!r}") from None
        try:
            payload = json.loads(_b64(body))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise UntrustedRequestError("malformed token: its payload is not JSON") from None
        if not isinstance(payload, dict):
            raise UntrustedRequestError("malformed token: its payload is not an object")
        exp, iat = payload.get("exp"), payload.get("iat")
        if not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)) or not math.isfinite(exp + iat):
            raise UntrustedRequestError("token has no numeric exp and iat")
        return Claims(
            kid,
            payload.get("iss"),
            payload.get("aud"),
            payload.get("email"),
            payload.get("email_verified"),
            float(exp),
            float(iat),
        )

    @staticmethod
    def _check(claims: Claims, cloud: CloudSettings) -> str:
        now = time.time()
        if claims.exp + CLOCK_SKEW < now:
            raise UntrustedRequestError(f"token expired {now - claims.exp:.0f} s ago")
        if claims.iat - CLOCK_SKEW > now:
            raise UntrustedRequestError(f"token issued {claims.iat - now:.0f} s in the future")
        if not isinstance(claims.iss, str) or claims.iss not in ISSUERS:
            raise UntrustedRequestError(f"token issuer {str(claims.iss)[:100]!r} is not Google's")
        audience = cloud.resolved_audience()
        if audience is None or claims.aud != audience:
            raise UntrustedRequestError(f"token audience {str(claims.aud)[:200]!r} is not {audience!r}")
        if not isinstance(claims.email, str) or claims.email not in cloud.senders():
            raise UntrustedRequestError(f"token email {str(claims.email)[:200]!r} is not an allowed sender")
        if claims.email_verified is not True and claims.email_verified != "true":
            raise UntrustedRequestError(f"token email {claims.email!r} is not verified")
        return claims.email


_trusts: dict[str, OidcTrust] = {}
_trusts_lock = threading.Lock()


def trust(cloud: CloudSettings) -> OidcTrust:
    """The process's verifier for these settings and the certs URL they name (Google's by default):
    made once, so the certs and the tokens already verified are kept between requests."""
    url = cloud.oidc_certs_url or GOOGLE_CERTS_URL
    found = _trusts.get(url)
    if found is None or found.cloud is not cloud:
        with _trusts_lock:
            found = _trusts.get(url)
            if found is None or found.cloud is not cloud:
                found = _trusts[url] = OidcTrust(Certs(url), cloud)
    return found
