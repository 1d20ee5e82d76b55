"""The render path on the real tiny pipeline, in process: batching and determinism."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from PIL import Image

from shared.batching import group_compatible
from shared.models import Job
from shared.registry import BUILTINS
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.factories import png_bytes
from worker.pipelines import load_model
from worker.render import RenderItem, prepare, render_batch, run_pipeline

PARAMS = {
    "strength": 0.75,
    "steps": 4,
    "guidance_scale": 7.5,
    "width": 64,
    "height": 64,
    "output_format": "png",
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(BUILTINS["tiny"], Settings(data_dir=tmp_path_factory.mktemp("data")))


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "objects", "http://test", "secret")


def make_job(storage, seed: int, prompt: str = "a red sneaker", **params) -> Job:
    key = f"sources/{uuid.uuid4()}"
    storage.put(key, png_bytes(80, 96), "image/png")
    return Job(
        id=uuid.uuid4(),
        team_id=uuid.uuid4(),
        model="tiny",
        prompt=prompt,
        negative_prompt=None,
        params={**PARAMS, "seed": seed, **params},
        source_key=key,
    )


def as_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def test_batch_is_reproducible_item_by_item(model, storage):
    jobs = [make_job(storage, s, p) for s, p in [(1, "snow"), (2, "beach"), (3, "autumn")]]
    items = [prepare(model, storage, j) for j in jobs]
    first = [as_array(i) for i in run_pipeline(model, items)]
    second = [as_array(i) for i in run_pipeline(model, items)]
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], first[1]), "each item has its own seed and prompt"


def test_render_batch_stores_each_output_with_provenance(model, storage):
    jobs = [make_job(storage, s) for s in (5, 6)]
    items = [prepare(model, storage, j) for j in jobs]
    results = render_batch(model, storage, items, worker="w1")
    assert [r.job_id for r in results] == [j.id for j in jobs]
    for job, result in zip(jobs, results, strict=True):
        (output,) = result.outputs
        assert output["key"] == f"outputs/{job.team_id}/{job.id}/0.png"
        assert Image.open(storage._path(output["key"])).size == (64, 64)
        assert result.provenance["batch_size"] == 2
        assert result.provenance["params"]["seed"] == job.params["seed"]
        assert storage.head(output["key"])["metadata"]["batch-size"] == "2"


def test_interrupt_flag_stops_denoising_early(model, storage):
    items: list[RenderItem] = [prepare(model, storage, make_job(storage, 9, steps=40))]
    calls = []

    def stop() -> bool:
        calls.append(1)
        return True

    run_pipeline(model, items, should_stop=stop)
    assert len(calls) == 1, "the pipeline must leave the loop after the first step"


def test_group_compatible_splits_by_params_and_max_batch():
    a = {**PARAMS, "seed": 1}
    b = {**PARAMS, "seed": 2, "steps": 8}
    ids = [uuid.uuid4() for _ in range(7)]
    rows = [
        (ids[0], a),
        (ids[1], b),
        (ids[2], a),
        (ids[3], a),
        (ids[4], b),
        (ids[5], a),
        (ids[6], a),
    ]
    groups = group_compatible(rows, max_batch=3)
    assert groups == [[ids[0], ids[2], ids[3]], [ids[5], ids[6]], [ids[1], ids[4]]]


def test_dispatcher_fails_malformed_rows_and_dispatches_the_rest(settings, session_factory):
    """One bad row (say, written by hand) must not block its model's queue."""
    from sqlalchemy import insert, select

    from dispatch.dispatcher import Dispatcher
    from shared.broker import make_celery
    from shared.db import session_scope
    from shared.teams import ensure_team

    model = f"mixed-{uuid.uuid4().hex[:6]}"
    good, bad = uuid.uuid4(), uuid.uuid4()
    with session_scope(session_factory) as s:
        team = ensure_team(s, f"t-{uuid.uuid4().hex[:6]}")
        s.execute(
            insert(Job),
            [
                {
                    "id": bad,
                    "team_id": team.id,
                    "model": model,
                    "prompt": "p",
                    "params": {},
                    "source_key": "k",
                },
                {
                    "id": good,
                    "team_id": team.id,
                    "model": model,
                    "prompt": "p",
                    "params": {**PARAMS, "seed": 1},
                    "source_key": "k",
                },
            ],
        )
    registry = {model: BUILTINS["tiny"].__class__(alias=model, source="builtin:tiny")}
    stats = Dispatcher(settings, session_factory, make_celery(settings), registry).tick()
    assert stats.sent_jobs == 1
    with session_factory() as s:
        rows = dict(s.execute(select(Job.id, Job.status).where(Job.id.in_([good, bad]))).all())
    assert rows == {good: "queued", bad: "failed"}
