"""A team's limits at intake, checked before anything of the request is written.

``check_quotas`` is called once, from ``check_jobs`` (api/submit.py), the one path of
``POST /v1/jobs`` and ``POST /v1/batches``: a job costs 1, a batch its job count. In order,
cheapest and most useful answer first:

- ``max_batch``: a batch larger than the team's limit is a request to fix: 422 naming
  ``images x prompts x variants`` (the field the farm-wide 10,000 limit names too).
- ``max_queued`` and ``monthly_images``: the request is fine but the team's state forbids
  it now: 403 naming the limit and the current use.
- ``rate_per_second``: a token bucket on ``teams.rate_tokens`` / ``rate_checked_at``: 429
  with ``Retry-After``. Last, so only a request that passed the rest spends tokens.

The queue and month checks read counts without a lock: two requests racing past a limit
can both be accepted (the overshoot is at most one request each). The rate bucket is exact:
each take is one compare-and-set UPDATE, so api processes never both spend the same tokens.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.errors import Forbidden, TooBusy
from shared.errors import InvalidRequest, TransientError
from shared.models import Team, utcnow
from shared.usage import month_images, month_of, unfinished_jobs

# A full bucket holds this many seconds of the team's rate (and at least one job): the
# burst a client may send at once before the rate applies.
BURST_SECONDS = 1.0
# Compare-and-set rounds before giving up (each lost round means another process took
# tokens in between, which only a storm of concurrent submissions does).
MAX_TAKE_ROUNDS = 8


def check_quotas(session: Session, team: Team, job_count: int, *, is_batch: bool) -> None:
    """Refuse a request of ``job_count`` jobs over one of ``team``'s limits (see module).

    Spends the request's rate tokens when it passes (committed at once, see ``take_tokens``).
    """
    if is_batch and team.max_batch is not None and job_count > team.max_batch:
        raise InvalidRequest(
            "images x prompts x variants",
            f"this batch has {job_count:,} jobs; your team's limit is {team.max_batch:,} "
            "per batch (max_batch): split it into several batches",
        )
    if team.max_queued is not None or team.monthly_images is not None:
        queued = unfinished_jobs(session, team.id)
        _check_queued(team, queued, job_count)
        _check_month(session, team, queued, job_count)
    if team.rate_per_second is not None:
        take_tokens(session, team.id, job_count)


def _check_queued(team: Team, queued: int, job_count: int) -> None:
    if team.max_queued is not None and queued + job_count > team.max_queued:
        raise Forbidden(
            f"your team has {queued:,} jobs queued or running and this request adds "
            f"{job_count:,}; its limit is {team.max_queued:,} queued (max_queued): wait for "
            "some to finish"
        )


def _check_month(session: Session, team: Team, queued: int, job_count: int) -> None:
    # Queued jobs count too: otherwise a team one image under its quota could queue 50,000.
    if team.monthly_images is None:
        return
    month = month_of()
    used = month_images(session, team.id, month)
    if used + queued + job_count > team.monthly_images:
        raise Forbidden(
            f"your team rendered {used:,} images in {month} and has {queued:,} queued or "
            f"running; this request adds {job_count:,} and its limit is "
            f"{team.monthly_images:,} images a month (monthly_images)"
        )


@dataclass(frozen=True)
class Bucket:
    """A token bucket refilled at ``rate`` tokens (jobs) a second, holding ``capacity``.

    A request is let through when the bucket holds its cost, or is full for one costlier
    than a full bucket (a 10,000-job batch at 10/s); the tokens then go negative, so the
    team waits the batch off: the average stays at ``rate``.
    """

    rate: float

    @property
    def capacity(self) -> float:
        return max(self.rate * BURST_SECONDS, 1.0)

    def available(self, tokens: float | None, checked_at: datetime | None, now: datetime) -> float:
        """Tokens at ``now``: a bucket never used (or just re-rated) is full."""
        if tokens is None or checked_at is None:
            return self.capacity
        elapsed = max(0.0, (now - checked_at).total_seconds())  # another api's clock may lead
        return min(self.capacity, tokens + elapsed * self.rate)

    def wait(self, available: float, cost: int) -> float:
        """Seconds until ``cost`` may pass; 0 when it may now."""
        return max(0.0, min(cost, self.capacity) - available) / self.rate


def take_tokens(session: Session, team_id: uuid.UUID, cost: int) -> None:
    """Spend ``cost`` tokens of the team's bucket, or raise ``TooBusy`` with the wait.

    One conditional UPDATE per round, matching the values read: if another api process
    took tokens in between it matches nothing and the round is read again. Committed at
    once, so the team row is locked for one statement, not for the request's fetches.
    """
    for _ in range(MAX_TAKE_ROUNDS):
        rate, tokens, checked_at = session.execute(
            select(Team.rate_per_second, Team.rate_tokens, Team.rate_checked_at).where(
                Team.id == team_id
            )
        ).one()
        if rate is None:
            return  # cleared since the key was read
        bucket, now = Bucket(rate), utcnow()
        available = bucket.available(tokens, checked_at, now)
        wait = bucket.wait(available, cost)
        if wait > 0:
            raise TooBusy(
                f"your team's submission rate is {rate:g} jobs a second (rate_per_second) "
                f"and this request costs {cost:,}: retry after {math.ceil(wait)} s",
                retry_after=max(1, math.ceil(wait)),
            )
        unchanged = [
            Team.id == team_id,
            Team.rate_per_second == rate,
            Team.rate_tokens.is_(None) if tokens is None else Team.rate_tokens == tokens,
            Team.rate_checked_at.is_(None)
            if checked_at is None
            else Team.rate_checked_at == checked_at,
        ]
        taken = session.execute(
            update(Team)
            .where(*unchanged)
            .values(rate_tokens=available - cost, rate_checked_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
        if taken:
            return
    raise TransientError("the submission-rate bucket is contended; retry shortly")
