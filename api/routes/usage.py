"""``/v1/usage``: what the team used this month and has queued now, against its quotas."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, TeamDep
from api.errors import KEYED_ERRORS
from shared.schemas import ModelUsage, UsageCount, UsagePublic
from shared.usage import month_of, month_usage, unfinished_jobs

router = APIRouter(prefix="/v1/usage", tags=["usage"], responses=KEYED_ERRORS)


@router.get("", response_model=UsagePublic)
def get_usage(team: TeamDep, session: SessionDep) -> UsagePublic:
    """This month's images and GPU-seconds (by model), jobs queued or running now, and the
    team's limits (null: unlimited). Images count when a job succeeds."""
    month = month_of()
    rows = month_usage(session, team.id, month)
    return UsagePublic(
        month=month,
        images=UsageCount(used=sum(r.images for r in rows), limit=team.monthly_images),
        gpu_seconds=round(sum(r.gpu_seconds for r in rows), 3),
        models=[
            ModelUsage(model=r.model, images=r.images, gpu_seconds=round(r.gpu_seconds, 3))
            for r in rows
        ],
        queued=UsageCount(used=unfinished_jobs(session, team.id), limit=team.max_queued),
        max_batch=team.max_batch,
        rate_per_second=team.rate_per_second,
    )
