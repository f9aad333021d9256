"""Who a signed-in person is: the pipeline's user id (the partition key of their batches) and whether
they are an operator — both from the identity provider's token, never from an e-mail address.

The user id
-----------
``u-`` + the first 160 bits of ``sha256(issuer key NUL subject key)`` in lower-case base32 (34 characters,
inside the id alphabet of ``USER_ID_PATTERN``). The keys are the provider's stable, non-reassignable
identifiers of the account:

- Microsoft Entra ID (the token carries ``tid`` and ``oid`` and its issuer is Entra's own for that
  ``tid``): ``entra:<tenant id>`` and the object id ``oid``, which is the same for the person across
  applications (Entra's ``sub`` is per application). From any other issuer, tid/oid are claims like any
  other and are ignored: a second accepted provider could otherwise mint an Entra user's id;
- any other OpenID Connect provider: the issuer URL ``iss`` and ``sub``.

Two different accounts get two different ids (a collision would need a SHA-256 collision in 160 bits);
the e-mail is shown, never used: it can be unverified, optional, changed, or set by a tenant admin or a
guest. Only tokens from configured issuers are accepted (``IMGPIPE_OIDC_ISSUERS``; for Entra ID that is
``https://login.microsoftonline.com/<tenant id>/v2.0``, which pins the tenant).

Operators
---------
A role claim, never an address: the token's ``IMGPIPE_OPERATOR_CLAIM`` (default ``roles``, where Entra ID
puts app roles) must contain ``IMGPIPE_OPERATOR_ROLE`` (default ``imgpipe.operator``), in a token issued
less than ``IMGPIPE_OPERATOR_RECHECK_MINUTES`` (15) ago: the role is re-checked at the provider by a new
sign-in at least that often, so one removed there stops working within that time.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from orchestration.domain.manifest import USER_ID_PATTERN


class IdentityRefused(ValueError):
    """The token does not identify an accepted account; the message says why (shown to the person)."""


@dataclass(frozen=True)
class Identity:
    user_id: str     # opaque, stable, collision-free: the only thing used for authorisation
    display: str     # for display only (e-mail or name); grants nothing
    operator: bool
    operator_lapsed: bool = False  # the token carries the role, but was issued too long ago to count


def _norm_issuer(value: str) -> str:
    return value.strip().rstrip("/")


def opaque_user_id(issuer_key: str, subject_key: str) -> str:
    digest = hashlib.sha256(f"{issuer_key}\x00{subject_key}".encode("utf-8")).digest()[:20]
    uid = "u-" + base64.b32encode(digest).decode("ascii").lower()
    assert re.fullmatch(USER_ID_PATTERN, uid)
    return uid


def _has_role(claims: Mapping[str, Any], claim: str, role: str) -> bool:
    value = claims.get(claim)
    if isinstance(value, str):
        values: Iterable[Any] = value.split()
    elif isinstance(value, (list, tuple, set)):
        values = value
    else:
        return False
    return bool(role) and any(isinstance(v, str) and v == role for v in values)


# Entra ID's issuers for a tenant: v2.0 and v1 tokens, the US Government and China clouds, and External ID.
_ENTRA_ISSUERS = ("https://login.microsoftonline.com/{tid}/v2.0", "https://sts.windows.net/{tid}",
                  "https://login.microsoftonline.us/{tid}/v2.0", "https://login.partner.microsoftonline.cn/{tid}/v2.0",
                  "https://{tid}.ciamlogin.com/{tid}/v2.0")


def _is_entra_issuer_of(iss: str, tid: str) -> bool:
    """Whether ``iss`` is Microsoft Entra ID's issuer for tenant ``tid`` (v2.0 or v1 tokens). Only then do
    ``tid``/``oid`` name the account: any other issuer may put an Entra user's tid and oid in its tokens."""
    return any(iss.lower() == pattern.format(tid=tid).lower() for pattern in _ENTRA_ISSUERS)


def identify(claims: Mapping[str, Any], *, issuers: Iterable[str], operator_claim: str = "roles",
             operator_role: str = "imgpipe.operator", operator_max_age_seconds: float | None = None,
             now: float | None = None) -> Identity:
    """The identity in an OIDC ID token's claims (as ``st.user`` holds them).

    ``operator_max_age_seconds``: the role counts only while the token is that young (its ``iat``, issued
    at). The web app's sign-in lasts 30 days (Streamlit's cookie) and keeps the token of the sign-in, so
    without this a role removed at the provider would work until sign-out; with it, an operator signs in
    again every so often and the provider says again whether the role is still theirs."""
    accepted = {_norm_issuer(i) for i in issuers if i.strip()}
    iss = _norm_issuer(str(claims.get("iss") or ""))
    if not accepted:
        raise IdentityRefused("no identity provider is configured for sign-in (IMGPIPE_OIDC_ISSUERS is empty)")
    if not iss or iss not in accepted:
        raise IdentityRefused("accounts from this identity provider are not accepted here")
    tid, oid = str(claims.get("tid") or ""), str(claims.get("oid") or "")
    if tid and oid and _is_entra_issuer_of(iss, tid):
        uid = opaque_user_id(f"entra:{tid.lower()}", oid.lower())
    else:
        sub = str(claims.get("sub") or "")
        if not sub:
            raise IdentityRefused("the identity provider sent no subject (sub) for this account")
        uid = opaque_user_id(iss, sub)
    display = str(claims.get("email") or claims.get("preferred_username") or claims.get("name") or uid)
    operator = _has_role(claims, operator_claim, operator_role)
    lapsed = False
    if operator and operator_max_age_seconds is not None:
        issued = claims.get("iat")
        age = (time.time() if now is None else now) - issued if isinstance(issued, (int, float)) else None
        lapsed = age is None or age > operator_max_age_seconds or age < -300  # (no iat, or from the future)
    return Identity(uid, display[:200], operator and not lapsed, operator and lapsed)
