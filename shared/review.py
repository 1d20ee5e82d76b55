"""A person's review of rendered outputs: the only code that records their decisions.

A job that succeeded carries the worker's verdict in ``jobs.review`` (``passed`` or
``needs_review``, shared/jobs.py ``mark_succeeded_bulk``). A person then approves or
rejects it: from any review state of a succeeded job to ``approved`` or ``rejected`` (the
first decision, a change of mind, or the same decision again with a new note). Each
decision is one conditional UPDATE (``WHERE status = 'succeeded'``), so a job that is not
(or no longer) succeeded is never decided, and it records who (the API key's id), when and
why. A batch whose outputs are all settled sends ``batch.reviewed`` (shared/events.py).
tests/shared/test_one_writer.py keeps other modules from writing ``jobs.review``.

A rejected output can be rendered again (shared/jobs.py ``rerender_rejected_of_batch``):
the attempt it replaces is kept in ``jobs.history`` (``attempt_record``) and the new
attempt takes a seed derived from the batch seed and the round (``rerender_seed``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from shared.events import settle_review
from shared.job_events import JOB_REVIEWED, log_events
from shared.job_status import JobStatus
from shared.models import Job, utcnow
from shared.review_status import ReviewState

Decision = Literal["approve", "reject"]
DECISIONS: dict[str, ReviewState] = {
    "approve": ReviewState.APPROVED,
    "reject": ReviewState.REJECTED,
}
# A note is for people (why an output was rejected), not a document store.
MAX_NOTE_CHARS = 2000
# Decisions one request may list, each with its own job and note (one transaction).
MAX_DECISIONS = 1000
# Derived seeds keep to 53 bits, as a batch's do (api/batches.py derive_seed).
SEED_BITS = 53


@dataclass(frozen=True)
class Decided:
    """A decision recorded on a job: which job, and its batch (settled afterwards)."""

    job_id: uuid.UUID
    batch_id: uuid.UUID | None


def _record(
    session: Session,
    where: ColumnElement[bool],
    decision: Decision,
    note: str | None,
    reviewer: uuid.UUID | None,
) -> list[Decided]:
    rows = session.execute(
        update(Job)
        .where(where, Job.status == JobStatus.SUCCEEDED.value)
        .values(
            review=DECISIONS[decision].value,
            review_note=note,
            reviewed_by=reviewer,
            reviewed_at=utcnow(),
        )
        .returning(Job.id, Job.batch_id)
        .execution_options(synchronize_session=False)
    ).all()
    return [Decided(r.id, r.batch_id) for r in rows]


def _settle(session: Session, decided: Sequence[Decided]) -> None:
    # The live streams' log (shared/job_events.py): one job.reviewed row per decision.
    log_events(session, [d.job_id for d in decided], JOB_REVIEWED)
    # Sorted: two transactions settling the same batches lock them in one order.
    for batch_id in sorted({d.batch_id for d in decided if d.batch_id is not None}):
        settle_review(session, batch_id)


def decide(
    session: Session,
    job_id: uuid.UUID,
    decision: Decision,
    note: str | None,
    reviewer: uuid.UUID | None,
) -> bool:
    """Record a person's ``decision`` on one job; False if it is not succeeded (nothing
    written). Settles its batch's review (``batch.reviewed``). The caller commits."""
    decided = _record(session, Job.id == job_id, decision, note, reviewer)
    _settle(session, decided)
    return bool(decided)


@dataclass(frozen=True)
class JobDecision:
    """One entry of a batch's list of decisions."""

    job_id: uuid.UUID
    decision: Decision
    note: str | None = None


def decide_each(
    session: Session,
    batch_id: uuid.UUID,
    decisions: Sequence[JobDecision],
    reviewer: uuid.UUID | None,
) -> list[uuid.UUID]:
    """Record each decision on its job of ``batch_id`` that succeeded: one UPDATE per
    distinct (decision, note), so "reject these 300 because the logo drifts" is one
    statement. Returns the ids decided; the caller commits (or rolls back) them together."""
    groups: dict[tuple[Decision, str | None], list[uuid.UUID]] = {}
    for d in decisions:
        groups.setdefault((d.decision, d.note), []).append(d.job_id)
    decided: list[Decided] = []
    for (decision, note), ids in groups.items():
        where = (Job.batch_id == batch_id) & Job.id.in_(ids)
        decided += _record(session, where, decision, note, reviewer)
    _settle(session, decided)
    return [d.job_id for d in decided]


def decide_where(
    session: Session,
    batch_id: uuid.UUID,
    decision: Decision,
    states: Sequence[ReviewState],
    note: str | None,
    reviewer: uuid.UUID | None,
) -> int:
    """Record ``decision`` on every succeeded job of ``batch_id`` whose review is one of
    ``states`` ("approve all passed"), in one UPDATE. Returns how many were decided."""
    where = (Job.batch_id == batch_id) & Job.review.in_([s.value for s in states])
    decided = _record(session, where, decision, note, reviewer)
    _settle(session, decided)
    return len(decided)


# --- rerendering rejected outputs (the transition itself is shared/jobs.py's) ---------------


def rerender_seed(batch_seed: int, sku: str, prompt_name: str, variant: int, round_: int) -> int:
    """The seed of a job's ``round_``-th rerender (1 for the first): SHA-256 of the batch
    seed, the job's names and the round, top 53 bits. Deterministic, so rerendering the
    same batch reproduces the same images; a new round, a new seed."""
    material = json.dumps(
        ["imgfarm-rerender-seed-v1", batch_seed, sku, prompt_name, variant, round_]
    )
    digest = hashlib.sha256(material.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def attempt_record(row: Any) -> dict[str, Any]:
    """The entry ``jobs.history`` keeps of an attempt a rerender replaces (JSON-ready):
    its round, seed, outputs (their objects stay in storage), scores and review."""

    def iso(value: Any) -> str | None:
        return None if value is None else value.isoformat().replace("+00:00", "Z")

    return {
        "round": len(row.history or []),
        "seed": row.params["seed"],
        "outputs": row.outputs or [],
        "fidelity": row.fidelity,
        "review": row.review,
        "review_note": row.review_note,
        "reviewed_by": None if row.reviewed_by is None else str(row.reviewed_by),
        "reviewed_at": iso(row.reviewed_at),
        "finished_at": iso(row.finished_at),
    }
