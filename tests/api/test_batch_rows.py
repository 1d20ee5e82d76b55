"""How a batch's rows are built and inserted: the per-batch seed deriver agrees with
``derive_seed`` whatever the names, and shared/bulk.py's COPY stores what the ORM would
(JSON given as objects or already encoded, NULLs) inside the session's transaction."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import create_engine, select

from api.batches import _with_seed, derive_seed, own_cells, seed_deriver
from shared.bulk import Cells, JsonText, cells, copy_text, insert_rows
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


@pytest.mark.parametrize("params", [{}, {"note": 'tab\there, back\\slash, "quoted"', "s": 0.5}])
def test_a_jobs_own_cells_are_its_params_and_variant_as_cells_would_encode_them(params):
    encoded = json.dumps(params)
    own = own_cells(encoded)(12345, 3)
    assert own == cells(_with_seed(encoded, 12345), 3)
    assert json.loads(own.values[0]) == {**params, "seed": 12345}


COLUMNS = ("id", "team_id", "model", "prompt", "status", "attempts", "params", "source_key",
           "negative_prompt", "created_at")  # fmt: skip
# Every character COPY's text format escapes, and a cell that spells its NULL marker.
TRICKY = 'a "quoted"\nprompt\r\twith\\backslash and \\N'


def _rows(team_id: uuid.UUID, model: str) -> list[tuple[Cells, ...]]:
    common = cells(team_id, model, TRICKY, "queued", 0)  # shared by both rows, encoded once
    return [
        (cells(uuid.uuid4()), common,
         cells({"seed": 1, "x": [1, 2]}, "k\t1", None, now())),
        (cells(uuid.uuid4()), common,
         cells(JsonText('{"seed": 2, "y": "\\u00e9"}'), "k\\2", "\\N", now())),
    ]  # fmt: skip


def test_copy_text_refuses_what_a_column_cannot_hold():
    with pytest.raises(ValueError, match="NUL"):
        copy_text("a\x00b")
    with pytest.raises(TypeError, match="bytes"):
        copy_text(b"raw")


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
        assert insert_rows(s, Job, COLUMNS, rows) == 2
        s.rollback()
        assert s.scalars(select(Job).where(Job.model == model)).all() == []
        team = Team(name=f"team-{model}")
        s.add(team)
        s.flush()
        rows = _rows(team.id, model)
        insert_rows(s, Job, COLUMNS, rows)
        s.commit()
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.model == model))}
    first, second = (jobs[row[0].values[0]] for row in rows)
    assert first.params == {"seed": 1, "x": [1, 2]} and second.params == {"seed": 2, "y": "é"}
    assert (first.source_key, second.source_key) == ("k\t1", "k\\2")
    assert first.prompt == second.prompt == TRICKY
    assert (first.negative_prompt, second.negative_prompt) == (None, "\\N")
    assert first.priority == "standard"  # not named: the column's server default


def test_a_row_without_an_id_gets_one_from_the_database(session_factory):
    model = f"rows-{uuid.uuid4().hex[:6]}"
    with session_factory() as s:
        team = Team(name=f"team-{model}")
        s.add(team)
        s.flush()
        rows = [row[1:] for row in _rows(team.id, model)]
        insert_rows(s, Job, COLUMNS[1:], rows)
        s.commit()
        ids = s.scalars(select(Job.id).where(Job.model == model)).all()
    assert len(set(ids)) == 2 and all(i.version == 4 for i in ids)
