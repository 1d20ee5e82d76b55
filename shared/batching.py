"""Which jobs may share one pipeline call: the rule the dispatcher groups by and the worker
re-checks. Here, in ``shared``, because both sides need it and neither may import the other
(the dispatcher must not load torch)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any


def compatibility_key(params: dict[str, Any]) -> tuple[Any, ...]:
    """Jobs render in one pipeline call only if these match (prompts and seeds may differ)."""
    return (
        params["steps"],
        params["strength"],
        params["guidance_scale"],
        params["width"],
        params["height"],
        # Adapters change the UNet's weights for the whole call: jobs with other adapters
        # (or other scales) never share one (issue 18).
        tuple((a["sha256"], a["scale"]) for a in params.get("adapters", [])),
    )


def group_compatible(
    jobs: Iterable[tuple[uuid.UUID, dict[str, Any]]], max_batch: int
) -> list[list[uuid.UUID]]:
    """Batches of at most ``max_batch`` compatible jobs, in the order the jobs come (fair order)."""
    groups: dict[tuple[Any, ...], list[uuid.UUID]] = defaultdict(list)
    batches: list[list[uuid.UUID]] = []
    for job_id, params in jobs:
        group = groups[compatibility_key(params)]
        group.append(job_id)
        if len(group) == max_batch:
            batches.append(list(group))
            group.clear()
    batches.extend(g for g in groups.values() if g)
    return batches
