"""Who a token names: Entra's tid/oid only from Entra's own issuer for that tenant."""

from __future__ import annotations

import pytest

from orchestration.domain.identity import IdentityRefused, identify, opaque_user_id

TID, OID = "72f988bf-86f1-41af-91ab-2d7cd011db47", "00000000-0000-0000-66f3-3332eca7ea81"
ENTRA = f"https://login.microsoftonline.com/{TID}/v2.0"
OTHER = "https://idp.partner.example"


def test_an_entra_token_is_the_tenants_object():
    me = identify({"iss": ENTRA, "sub": "per-app-subject", "tid": TID, "oid": OID}, issuers=[ENTRA, OTHER])
    assert me.user_id == opaque_user_id(f"entra:{TID}", OID)
    # The same person through another app registration (another sub) is the same user.
    assert identify({"iss": ENTRA, "sub": "another-app", "tid": TID.upper(), "oid": OID},
                    issuers=[ENTRA]).user_id == me.user_id
    v1 = f"https://sts.windows.net/{TID}/"
    assert identify({"iss": v1, "sub": "s", "tid": TID, "oid": OID}, issuers=[v1]).user_id == me.user_id


def test_another_accepted_issuer_cannot_claim_an_entra_users_tid_and_oid():
    victim = identify({"iss": ENTRA, "sub": "x", "tid": TID, "oid": OID}, issuers=[ENTRA, OTHER])
    forged = identify({"iss": OTHER, "sub": "attacker", "tid": TID, "oid": OID}, issuers=[ENTRA, OTHER])
    assert forged.user_id != victim.user_id
    assert forged.user_id == opaque_user_id(OTHER, "attacker")  # issuer + subject, as for any provider
    # Nor can a token of another Entra tenant carry this tenant's tid.
    other_tenant = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
    assert identify({"iss": other_tenant, "sub": "s", "tid": TID, "oid": OID},
                    issuers=[ENTRA, other_tenant]).user_id != victim.user_id


def test_a_token_from_an_issuer_not_configured_is_refused():
    with pytest.raises(IdentityRefused):
        identify({"iss": OTHER, "sub": "s"}, issuers=[ENTRA])


def test_the_operator_role_counts_only_in_a_recent_token():
    claims = {"iss": ENTRA, "sub": "s", "tid": TID, "oid": OID, "roles": ["imgpipe.operator"], "iat": 1_000_000}
    fresh = identify(claims, issuers=[ENTRA], operator_max_age_seconds=900, now=1_000_000 + 899)
    assert fresh.operator and not fresh.operator_lapsed
    stale = identify(claims, issuers=[ENTRA], operator_max_age_seconds=900, now=1_000_000 + 901)
    assert not stale.operator and stale.operator_lapsed and stale.user_id == fresh.user_id
    undated = identify({k: v for k, v in claims.items() if k != "iat"}, issuers=[ENTRA], operator_max_age_seconds=900)
    assert not undated.operator


def test_entra_issuers_of_other_clouds_and_external_id_name_the_tenants_object():
    for iss in (f"https://login.microsoftonline.us/{TID}/v2.0", f"https://{TID}.ciamlogin.com/{TID}/v2.0"):
        assert identify({"iss": iss, "sub": "s", "tid": TID, "oid": OID}, issuers=[iss]).user_id == \
            opaque_user_id(f"entra:{TID}", OID)
