"""How long an ``Idempotency-Key`` holds, and pruning the ones that no longer do.

Here in ``shared`` (not ``api``) because the dispatcher, which must not import ``api``,
does the pruning. The claim-and-replay logic itself is ``api/idempotency.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from shared.db import delete_oldest
from shared.models import IdempotencyKey, utcnow

# A key replays for 24 h, the window clients are used to (Stripe's): long enough to outlast
# any sane retry loop, short enough that the table stays small. Setting:
# ``idempotency_ttl_seconds``.
IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60

# Rows one prune deletes at most: a first prune over a large backlog must not hold a long
# transaction (and the dispatcher's tick); the next sweep takes the rest.
PRUNE_BATCH = 10_000


def expiry_cutoff(ttl_seconds: float, now: datetime | None = None) -> datetime:
    """Keys created at or before this moment have expired."""
    return (now or utcnow()) - timedelta(seconds=ttl_seconds)


def prune_idempotency_keys(session: Session, older_than: datetime, limit: int = PRUNE_BATCH) -> int:
    """Delete up to ``limit`` keys created before ``older_than``, oldest first; returns how many.

    Safe beside live requests: an expired key is already treated as new, so deleting it
    changes no answer, and a key still being claimed is not visible here until it commits.
    """
    return delete_oldest(session, IdempotencyKey, older_than, limit)
