"""Who a signed-in person is, as the pipeline's user id (the partition key of their batches)."""

from __future__ import annotations

import re

from orchestration.domain.manifest import USER_ID_PATTERN


def user_id_for(email: str | None, subject: str | None = None) -> str:
    """The pipeline's user id for a signed-in person: the e-mail address (lower case), with characters
    outside the id alphabet replaced; the OIDC subject when there is no e-mail."""
    raw = (email or subject or "").strip().lower()
    uid = re.sub(r"[^a-z0-9_.@-]", "-", raw)[:128].lstrip("._@-")
    if not re.match(USER_ID_PATTERN, uid):
        raise ValueError("the signed-in account has no usable e-mail or subject")
    return uid
