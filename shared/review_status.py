"""The values of ``jobs.review`` and the counts of them per batch. Only shared/review.py
writes a person's decision, and shared/jobs.py the worker's verdict at success and the
clearing of a rerender; this module holds the names, so the outbox (shared/events.py) and
the api can read them without importing a writer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest
from shared.models import Job


class ReviewState(StrEnum):
    # Set by the worker when the job succeeds (its fidelity scores against the thresholds).
    PASSED = "passed"
    NEEDS_REVIEW = "needs_review"
    # Set by a person (POST /v1/jobs/{id}/review, POST /v1/batches/{id}/review).
    APPROVED = "approved"
    REJECTED = "rejected"


# What a batch is done being reviewed with: no output left for a person to look at.
SETTLED_STATES = frozenset({ReviewState.PASSED, ReviewState.APPROVED, ReviewState.REJECTED})


def parse_review_states(text: str | None, field: str = "review") -> list[ReviewState] | None:
    """A ``?review=`` filter: one state or a comma list (``passed,approved``); None when
    absent. An unknown state is refused naming ``field`` (422)."""
    if text is None:
        return None
    states = []
    for name in (part.strip() for part in text.split(",")):
        try:
            states.append(ReviewState(name))
        except ValueError:
            known = ", ".join(s.value for s in ReviewState)
            raise InvalidRequest(field, f"{name!r} is not a review state ({known})") from None
    return states


def review_counts(
    session: Session, batch_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    """Outputs of each batch by review state, every state present (zeros included): one
    GROUP BY on ix_jobs_batch_review. Jobs without an output (no review yet) are not
    counted."""
    counts = {b: {s.value: 0 for s in ReviewState} for b in batch_ids}
    if not counts:
        return counts
    rows = session.execute(
        select(Job.batch_id, Job.review, func.count())
        .where(Job.batch_id.in_(list(batch_ids)), Job.review.is_not(None))
        .group_by(Job.batch_id, Job.review)
    ).tuples()
    for batch_id, review, count in rows:
        if batch_id in counts and review in counts[batch_id]:
            counts[batch_id][review] = count
    return counts
