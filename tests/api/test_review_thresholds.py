"""A batch's own fidelity thresholds (``review``): checked with a 4xx naming the field and
nothing written, else stored with the batch and carried by each job to the worker."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from shared.models import Batch, Job
from shared.schemas import REVIEW_THRESHOLDS
from tests.factories import batch_body


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rows(session_factory) -> tuple[int, int]:
    with session_factory() as s:
        jobs = s.scalar(select(func.count()).select_from(Job))
        batches = s.scalar(select(func.count()).select_from(Batch))
        return jobs, batches


@pytest.mark.parametrize(
    ("review", "field"),
    [
        ({"min_structure": 1.5}, "review.min_structure"),
        ({"min_structure": -0.1}, "review.min_structure"),
        ({"max_colour_drift": -1}, "review.max_colour_drift"),
        ({"max_colour_drift": "lots"}, "review.max_colour_drift"),
        ({"min_ssim": 0.9}, "review.min_ssim"),  # not a threshold of ours: refused, not ignored
        ("strict", "review"),
    ],
)
def test_bad_thresholds_are_a_422_naming_the_field_and_write_nothing(
    client, new_key, session_factory, review, field
):
    before = rows(session_factory)
    answer = client.post("/v1/batches", json=batch_body(review=review), headers=auth(new_key()))
    assert answer.status_code == 422, answer.text
    assert [e["field"] for e in answer.json()["errors"]] == [field]
    assert rows(session_factory) == before


def test_thresholds_are_stored_with_the_batch_and_copied_into_each_jobs_params(
    client, new_key, session_factory
):
    body = batch_body(variants=1, review={"max_colour_drift": 2.5})
    answer = client.post("/v1/batches", json=body, headers=auth(new_key()))
    assert answer.status_code == 202, answer.text
    batch_id = uuid.UUID(answer.json()["id"])
    with session_factory() as s:
        batch = s.get(Batch, batch_id)
        params = s.scalars(select(Job.params).where(Job.batch_id == batch_id)).all()
    assert batch is not None and batch.review == {"max_colour_drift": 2.5}  # only what was set
    assert len(params) == 6 and all(p[REVIEW_THRESHOLDS] == batch.review for p in params)
    # Without an override nothing is copied: the worker uses the model's thresholds.
    plain = client.post("/v1/batches", json=batch_body(variants=1), headers=auth(new_key()))
    with session_factory() as s:
        plain_id = uuid.UUID(plain.json()["id"])
        assert s.get(Batch, plain_id).review is None  # type: ignore[union-attr]
        params = s.scalars(select(Job.params).where(Job.batch_id == plain_id)).all()
    assert params and all(REVIEW_THRESHOLDS not in p for p in params)
