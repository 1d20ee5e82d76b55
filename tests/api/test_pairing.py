"""A batch's ``pairing`` (api/pairing.py): which jobs cross, zip and explicit pairs make, their
seeds, and the counts quotas, the dry run and the 413 see. The 422s of a pairing that does
not fit are rows of tests/api/test_hostile_inputs.py (nothing written)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from api import pairing
from shared.db import session_scope
from shared.models import Job
from shared.schemas import BatchCreate
from shared.teams import create_api_key, ensure_team, set_team_limits
from tests.api.test_batches import auth, leave_no_work_behind  # noqa: F401 (autouse fixture)
from tests.factories import batch_body, data_url, png_bytes

PAIRS = [{"image": 1, "prompt": 0}, {"image": 0, "prompt": 2}, {"image": 1, "prompt": 1}]


def body_of(**overrides: object) -> BatchCreate:
    return BatchCreate.model_validate(batch_body(**overrides))


def three_images(**overrides: object) -> dict[str, object]:
    """batch_body with three images (its three prompts), so zip has equal counts."""
    images = [{"image": data_url(png_bytes(color=(9, 9, c))), "sku": f"P{c}"} for c in (1, 2, 3)]
    return batch_body(images=images, **overrides)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, [(i, p) for i in range(2) for p in range(3)]),
        ({"pairing": PAIRS}, [(1, 0), (0, 2), (1, 1)]),
    ],
)
def test_triples_are_the_pairs_times_variants_in_a_stable_order(overrides, expected):
    body = body_of(**overrides)
    triples = list(pairing.triples(body))
    assert triples == [(i, p, v) for i, p in expected for v in (1, 2)]
    assert body.job_count == len(triples)


def test_zip_pairs_image_i_with_prompt_i():
    body = BatchCreate.model_validate(three_images(pairing="zip", variants=1))
    assert list(pairing.triples(body)) == [(0, 0, 1), (1, 1, 1), (2, 2, 1)]
    assert body.job_count == 3


def jobs_of(session_factory, batch_id: str) -> dict[tuple[str, str, int], int]:
    with session_factory() as s:
        rows = s.execute(
            select(Job.sku, Job.prompt_name, Job.variant, Job.params).where(
                Job.batch_id == uuid.UUID(batch_id)
            )
        )
        return {(sku, name, variant): params["seed"] for sku, name, variant, params in rows}


def test_zip_and_pairs_make_their_jobs_with_the_seeds_the_cross_batch_gives(
    client, new_key, session_factory
):
    key = new_key()
    made = {}
    for name, pairing_ in (("cross", "cross"), ("zip", "zip"), ("pairs", PAIRS)):
        body = three_images(pairing=pairing_) if name == "zip" else batch_body(pairing=pairing_)
        response = client.post("/v1/batches", json=body, headers=auth(key))
        assert response.status_code == 202, response.text
        batch_id = response.json()["id"]
        made[name] = jobs_of(session_factory, batch_id)
        assert response.json()["job_count"] == len(made[name])
        public = client.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
        assert public["pairing"] == name and "pairing" not in public["params"]
    assert set(made["zip"]) == {
        (sku, name, v)
        for sku, name in (
            ("P1", "winter"),
            ("P2", "summer"),
            ("P3", "the-product-among-autumn-leaves"),
        )
        for v in (1, 2)
    }
    assert set(made["pairs"]) == {
        (sku, name, v)
        for sku, name in (
            ("SKU-BLUE", "winter"),
            ("SKU-RED", "the-product-among-autumn-leaves"),
            ("SKU-BLUE", "summer"),
        )
        for v in (1, 2)
    }
    # the same names under the same batch seed: the seed the cross batch gave them
    assert made["pairs"].items() <= made["cross"].items()


def test_the_dry_run_and_max_batch_count_the_paired_jobs(client, session_factory):
    with session_scope(session_factory) as s:
        team = ensure_team(s, f"pairing-{uuid.uuid4().hex[:8]}")
        set_team_limits(s, team.id, max_batch=4)  # cross would be 2 x 3 x 2 = 12
        key = create_api_key(s, team)
    body = batch_body(pairing=PAIRS, variants=1)
    response = client.post("/v1/batches?dry_run=true", json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    assert response.json()["job_count"] == 3
    over = client.post(
        "/v1/batches?dry_run=true", json=batch_body(pairing=PAIRS), headers=auth(key)
    )
    assert over.status_code == 422 and "this batch has 6 jobs" in over.json()["detail"]


def test_a_paired_batch_over_the_limit_is_413_spelling_its_pairing(client, new_key):
    body = three_images(pairing="zip", variants=3334)  # 3 x 3,334 = 10,002
    response = client.post("/v1/batches", json=body, headers=auth(new_key()))
    assert response.status_code == 413, response.text
    assert response.json()["errors"][0]["field"] == "images x variants"
    assert "3 zipped x 3334 = 10,002 jobs" in response.json()["detail"]
