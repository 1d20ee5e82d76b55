"""How a batch's rows are built and inserted: the per-batch seed deriver agrees with
``derive_seed`` whatever the names, and shared/bulk.py's COPY stores what the ORM would
(JSON given as objects or already encoded, NULLs) inside the session's transaction."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import create_engine, select

from api.batches import _with_seed, derive_seed, seed_deriver
from shared.bulk import JsonText, insert_rows
from shared.models import Base, Job, Team
from shared.models import utcnow as now

NAMES = ["SKU-1", 'say "cheese"', "back\\slash", "café", "雪", "emoji 🎄", "", "tab\there"]


@pytest.mark.parametrize("batch_seed", [0, 1234, 2**53 - 1])
def test_seed_deriver_gives_derive_seeds_seed_for_any_name(batch_seed):
    seed = seed_deriver(batch_seed)
    for sku in NAMES:
        for name in reversed(NAMES):
            assert seed(sku, name, 3) == derive_seed(batch_seed, sku, name, 3)


def test_job_params_are_the_batchs_with_the_jobs_seed():
    params = {"strength": 0.75, "steps": 4, "review": {"min_ssim": 0.5}, "note": 'a "b"'}
    assert json.loads(_with_seed(json.dumps(params), 7)) == {**params, "seed": 7}
    assert json.loads(_with_seed(json.dumps({}), 0)) == {"seed": 0}


def _rows(team_id: uuid.UUID, model: str) -> list[dict[str, object]]:
    common = {
        "team_id": team_id,
        "model": model,
        "prompt": 'a "quoted"\nprompt',
        "status": "queued",
        "attempts": 0,
    }
    return [
        {**common, "id": uuid.uuid4(), "params": {"seed": 1, "x": [1, 2]}, "source_key": "k\t1",
         "negative_prompt": None, "created_at": now()},
        {**common, "id": uuid.uuid4(), "params": JsonText('{"seed": 2, "y": "\\u00e9"}'),
         "source_key": "k\\2", "negative_prompt": "blurry", "created_at": now()},
    ]  # fmt: skip


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_insert_rows_stores_what_the_orm_reads_back_and_rolls_back(
    backend, session_factory, tmp_path
):
    if backend == "postgres":
        factory = session_factory
    else:
        engine = create_engine(f"sqlite:///{tmp_path / 'rows.db'}")
        Base.metadata.create_all(engine)
        factory = type(session_factory)(engine, expire_on_commit=False)
    model = f"rows-{uuid.uuid4().hex[:6]}"
    with factory() as s:
        team = Team(name=f"team-{model}")
        s.add(team)
        s.flush()
        rows = _rows(team.id, model)
        assert insert_rows(s, Job, rows) == 2
        s.rollback()
        assert s.scalars(select(Job).where(Job.model == model)).all() == []
        team = Team(name=f"team-{model}")
        s.add(team)
        s.flush()
        rows = _rows(team.id, model)
        insert_rows(s, Job, rows)
        s.commit()
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.model == model))}
    first, second = (jobs[r["id"]] for r in rows)  # type: ignore[index]
    assert first.params == {"seed": 1, "x": [1, 2]} and second.params == {"seed": 2, "y": "é"}
    assert (first.source_key, second.source_key) == ("k\t1", "k\\2")
    assert first.prompt == 'a "quoted"\nprompt'
    assert (first.negative_prompt, second.negative_prompt) == (None, "blurry")
    assert first.priority == "standard"  # not named: the column's server default
