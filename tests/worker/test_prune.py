"""Data lifecycle on a real farm (issue 17): the api, the dispatcher (in a thread) and an
``echo`` worker process on a database of the module's own, objects in moto S3.

Old data is made by rendering for real and then moving the jobs' ``finished_at`` (and their
batch's ``completed_at``) back in time, as if retention had passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Interval, func, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from dispatch.dispatcher import Dispatcher
from shared.broker import make_celery
from shared.db import session_scope
from shared.models import (
    Batch,
    Job,
    JobEvent,
    Team,
    Upload,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from shared.prune import prune
from shared.registry import load_registry
from shared.storage import Storage, storage_from_settings
from shared.teams import set_team_limits
from tests.conftest import PrivateDatabase
from tests.factories import data_url, png_bytes
from tests.services import launch_worker, wait_for

pytestmark = pytest.mark.integration

SIZE = {"width": 8, "height": 8}  # echo: the cost is the control plane, not the render
OLD = timedelta(days=2)


@dataclass
class Farm:
    api: TestClient
    session_factory: sessionmaker[Session]
    db: PrivateDatabase
    storage: Storage
    env: dict[str, str]

    def team(self, retention_days: int = 30) -> tuple[str, str, uuid.UUID]:
        name = f"prune-{uuid.uuid4().hex[:8]}"
        key = self.db.new_key(name)
        with session_scope(self.session_factory) as s:
            team = s.scalar(select(Team).where(Team.name == name))
            assert team is not None
            set_team_limits(s, team.id, retention_days=retention_days)
            return name, key, team.id

    def batch(self, key: str, images: list[bytes], variants: int = 1) -> uuid.UUID:
        body = {
            "model": "echo",
            "images": [data_url(i) for i in images],
            "prompts": ["p"],
            "variants": variants,
            **SIZE,
        }
        answer = self.api.post("/v1/batches", json=body, headers=_auth(key))
        assert answer.status_code == 202, answer.text
        return uuid.UUID(answer.json()["id"])

    def job(self, key: str, image: bytes) -> uuid.UUID:
        body = {"model": "echo", "prompt": "p", "image": data_url(image), **SIZE}
        answer = self.api.post("/v1/jobs", json=body, headers=_auth(key))
        assert answer.status_code == 202, answer.text
        return uuid.UUID(answer.json()["id"])

    def upload(self, key: str, image: bytes) -> uuid.UUID:
        files = {"files": ("u.png", image, "image/png")}
        answer = self.api.post("/v1/uploads", files=files, headers=_auth(key))
        assert answer.status_code in (200, 201), answer.text
        return uuid.UUID(answer.json()["uploads"][0]["id"])

    def rendered(self, *job_or_batch: uuid.UUID, timeout: float = 60) -> None:
        ids = list(job_or_batch)

        def done() -> bool:
            with self.session_factory() as s:
                left = s.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.id.in_(ids) | Job.batch_id.in_(ids))
                    .where(Job.status.in_(("queued", "running")))
                )
                return left == 0

        wait_for(done, timeout, "the jobs rendered")

    def jobs(self, *, batch: uuid.UUID | None = None, ids: list[uuid.UUID] = ()) -> list[Job]:
        with self.session_factory() as s:
            where = Job.batch_id == batch if batch is not None else Job.id.in_(list(ids))
            return list(s.scalars(select(Job).where(where)))

    def age(self, *job_or_batch: uuid.UUID, by: timedelta = OLD) -> None:
        """Move finished jobs (and batches) back in time by ``by``."""
        ids = list(job_or_batch)
        with session_scope(self.session_factory) as s:
            s.execute(
                update(Job)
                .where(Job.id.in_(ids) | Job.batch_id.in_(ids))
                .values(finished_at=Job.finished_at - literal(by, Interval()))
            )
            s.execute(
                update(Batch)
                .where(Batch.id.in_(ids))
                .values(completed_at=Batch.completed_at - literal(by, Interval()))
            )
            s.execute(update(Upload).where(Upload.id.in_(ids)).values(created_at=utcnow() - by))

    def exists(self, key: str) -> bool:
        return self.storage.exists(key)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def farm(private_db: PrivateDatabase, module_spawn) -> Iterator[Farm]:
    env = {
        "IMGFARM_DATABASE_URL": private_db.settings.database_url,
        "IMGFARM_DISPATCH_POLL_SECONDS": "0.05",
    }
    launch_worker(module_spawn, "echo", env=env)
    # The real dispatcher, in a thread of this process: a process more would cost seconds.
    settings = private_db.settings.model_copy(update={"dispatch_poll_seconds": 0.05})
    registry = load_registry(settings.models)
    dispatcher = Dispatcher(settings, private_db.session_factory, make_celery(settings), registry)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with TestClient(create_app(private_db.settings)) as api:
            storage = storage_from_settings(private_db.settings)
            yield Farm(api, private_db.session_factory, private_db, storage, env)
    finally:
        stop.set()
        thread.join(timeout=10)


def image(n: int) -> bytes:
    """A source of its own (content-addressed: a distinct key per ``n``)."""
    return png_bytes(24, 24, color=(n % 256, (n * 7) % 256, 90))


def prune_cli(farm: Farm, *args: str) -> dict[str, object]:
    env = {**os.environ, **farm.env}
    out = subprocess.run(
        [sys.executable, "-m", "imgfarm", "prune", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_prune_deletes_exactly_what_is_past_retention_while_the_farm_renders(farm):
    name, key, team = farm.team(retention_days=1)
    _, other_key, _ = farm.team()  # retention 30: two days old is young for this team
    seed = uuid.uuid4().int % 200
    shared, own, single, unused, younger = (image(seed + i) for i in range(5))
    old_batch = farm.batch(key, [own, shared])
    old_job = farm.job(key, single)
    young_job = farm.job(key, shared)  # the shared source outlives the old batch
    other_batch = farm.batch(other_key, [image(seed + 9)])
    farm.rendered(old_batch, old_job, young_job, other_batch)
    old_upload, young_upload = farm.upload(key, unused), farm.upload(key, younger)
    # An earlier attempt kept by a rerender: its object goes with the job.
    history_key = f"outputs/{team}/{old_job}/earlier.png"
    farm.storage.put(history_key, image(1), "image/png")
    with session_scope(farm.session_factory) as s:
        s.execute(
            update(Job)
            .where(Job.id == old_job)
            .values(history=[{"round": 0, "outputs": [{"key": history_key}], "finished_at": None}])
        )
    with session_scope(farm.session_factory) as s:  # a delivered webhook and its attempt
        delivery = WebhookDelivery(
            team_id=team, event_id=uuid.uuid4().hex, event_type="job.succeeded", job_id=old_job,
            url="https://example.com/hook", body="{}", status="delivered",
        )  # fmt: skip
        s.add(delivery)
        s.flush()
        s.add(WebhookAttempt(delivery_id=delivery.id, attempt=1, latency_ms=5, outcome="delivered"))
    farm.age(old_batch, old_job, other_batch, old_upload)

    gone = farm.jobs(batch=old_batch) + farm.jobs(ids=[old_job])
    kept = farm.jobs(ids=[young_job]) + farm.jobs(batch=other_batch)
    gone_keys = [o["key"] for j in gone for o in j.outputs] + [history_key]
    gone_keys += [j.source_key for j in gone if j.source_key != kept[0].source_key]
    with farm.session_factory() as s:
        upload_key = s.get(Upload, old_upload).object_key
        young_upload_key = s.get(Upload, young_upload).object_key
    gone_keys.append(upload_key)
    kept_keys = [o["key"] for j in kept for o in j.outputs] + [j.source_key for j in kept]
    kept_keys.append(young_upload_key)
    assert kept[0].source_key in {j.source_key for j in gone}, "a source the two share"
    assert all(farm.exists(k) for k in gone_keys + kept_keys)
    with farm.session_factory() as s:
        assert s.scalar(select(func.count()).where(JobEvent.job_id.in_([j.id for j in gone])))
    expected = {"jobs": 3, "batches": 1, "uploads": 1, "objects": 7}
    assert len(gone_keys) == expected["objects"]

    dry = prune_cli(farm, "--dry-run", "--team", name)
    assert dry == {"dry_run": True, **expected, "finished": True}
    assert all(farm.exists(k) for k in gone_keys), "a dry run deletes nothing"

    rendering = farm.batch(key, [image(seed + 20)], variants=120)  # young: must all render
    wait_for(lambda: any(j.finished_at for j in farm.jobs(batch=rendering)), 30, "rendering")
    unfinished = [j for j in farm.jobs(batch=rendering) if j.status in ("queued", "running")]
    counts = prune(farm.session_factory, farm.storage, chunk=2)  # many short transactions
    assert len(unfinished) > 50, "prune ran while the farm rendered"

    assert vars(counts) == {**expected, "finished": True}
    assert not [k for k in gone_keys if farm.exists(k)]
    assert all(farm.exists(k) for k in kept_keys)
    with farm.session_factory() as s:
        ids = [j.id for j in gone]
        assert not s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids)))
        assert not s.scalar(select(func.count()).where(JobEvent.job_id.in_(ids)))
        assert s.get(WebhookDelivery, delivery.id) is None
        assert not s.scalar(select(func.count()).where(WebhookAttempt.delivery_id == delivery.id))
        assert s.get(Batch, old_batch) is None and s.get(Upload, old_upload) is None
        assert s.get(Batch, other_batch) is not None and s.get(Upload, young_upload) is not None
    assert {j.id for j in farm.jobs(ids=[j.id for j in kept])} == {j.id for j in kept}
    farm.rendered(rendering)
    statuses = {j.status for j in farm.jobs(batch=rendering)}
    assert statuses == {"succeeded"}, "every job rendered while prune ran completed"
    again = vars(prune(farm.session_factory, farm.storage))
    assert again == {**dict.fromkeys(expected, 0), "finished": True}


def test_delete_batch_removes_its_objects_and_rows_once(farm):
    _, key, team = farm.team()
    _, stranger, _ = farm.team()
    seed = uuid.uuid4().int % 200
    own, shared = image(seed + 30), image(seed + 31)
    batch = farm.batch(key, [own, shared], variants=2)
    keeper = farm.job(key, shared)
    farm.rendered(batch, keeper)
    answer = farm.api.get(f"/v1/batches/{batch}", headers=_auth(key)).json()
    with farm.session_factory() as s:
        completed = s.get(Batch, batch).completed_at
    expires = completed + timedelta(days=30)
    assert answer["expires_at"].replace("Z", "+00:00") == expires.isoformat()
    jobs, kept = farm.jobs(batch=batch), farm.jobs(ids=[keeper])[0]
    gone_keys = [o["key"] for j in jobs for o in j.outputs]
    gone_keys += sorted({j.source_key for j in jobs} - {kept.source_key})
    assert len(gone_keys) == 5 and all(farm.exists(k) for k in gone_keys)
    for size in (256, 1024):  # the console's cached previews go with their output
        thumb = farm.api.get(f"/v1/jobs/{jobs[0].id}/thumbnail?size={size}", headers=_auth(key))
        assert thumb.status_code == 200, thumb.text
    thumbnails = f"thumbnails/{team}/"
    assert len(list(farm.storage.list_objects(thumbnails))) == 2  # type: ignore[attr-defined]

    assert farm.api.delete(f"/v1/batches/{batch}", headers=_auth(stranger)).status_code == 404
    assert all(farm.exists(k) for k in gone_keys), "another team deletes nothing"

    answer = farm.api.delete(f"/v1/batches/{batch}", headers=_auth(key))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"id": str(batch), "status": "deleting", "jobs_left": 0}
    assert not [k for k in gone_keys if farm.exists(k)]
    assert farm.exists(kept.source_key) and farm.exists(kept.outputs[0]["key"])
    assert not farm.jobs(batch=batch)
    assert not list(farm.storage.list_objects(thumbnails))  # type: ignore[attr-defined]
    assert farm.api.get(f"/v1/batches/{batch}", headers=_auth(key)).status_code == 404
    assert farm.api.delete(f"/v1/batches/{batch}", headers=_auth(key)).status_code == 404


def test_a_job_of_a_batch_being_deleted_reads_as_gone_on_every_job_route(farm):
    # Between DELETE's answer and the sweep, a job canceled while it ran keeps its row (its
    # worker may yet store an output): its own routes must say 404, as its batch's do. Set up
    # by hand, with a lease that does not run out, so the row is certain to be there.
    _, key, _ = farm.team()
    batch = farm.batch(key, [image(uuid.uuid4().int % 200 + 50)])
    farm.rendered(batch)
    (job,) = farm.jobs(batch=batch)
    routes = [
        ("get", f"/v1/jobs/{job.id}"),
        ("get", f"/v1/jobs/{job.id}/events"),
        ("get", f"/v1/jobs/{job.id}/thumbnail?of=source"),
        ("post", f"/v1/jobs/{job.id}/cancel"),
        ("post", f"/v1/jobs/{job.id}/review"),
    ]

    def answers() -> list[int]:
        review = {"json": {"decision": "approve"}}
        return [
            getattr(farm.api, verb)(
                path, headers=_auth(key), **(review if verb == "post" else {})
            ).status_code
            for verb, path in routes
        ]

    def deleting(at: datetime | None) -> None:
        with session_scope(farm.session_factory) as s:
            s.execute(update(Batch).where(Batch.id == batch).values(deleting_at=at))

    with session_scope(farm.session_factory) as s:
        leased = {"status": "canceled", "lease_expires_at": utcnow() + timedelta(hours=1)}
        s.execute(update(Job).where(Job.id == job.id).values(**leased))
    deleting(utcnow())
    assert answers() == [404] * len(routes)
    assert farm.jobs(ids=[job.id]), "the row was there all along"
    deleting(None)  # the same row, its batch no longer deleting, is the team's again
    assert answers() == [200, 200, 200, 200, 409]  # a canceled job is not reviewable


def test_delete_batch_while_it_renders_cancels_then_removes_everything(farm):
    _, key, team = farm.team()
    batch = farm.batch(key, [image(uuid.uuid4().int % 200 + 40)], variants=300)
    wait_for(lambda: any(j.status == "succeeded" for j in farm.jobs(batch=batch)), 30, "a render")
    open_jobs = [j for j in farm.jobs(batch=batch) if j.status in ("queued", "running")]
    answer = farm.api.delete(f"/v1/batches/{batch}", headers=_auth(key))
    assert answer.status_code == 202, answer.text
    assert len(open_jobs) > 100, "the DELETE came while the batch rendered"
    # Gone for the team at once, whatever is still running; listed nowhere.
    for path in (
        f"/v1/batches/{batch}",
        f"/v1/batches/{batch}/jobs",
        f"/v1/batches/{batch}/events",
    ):
        assert farm.api.get(path, headers=_auth(key)).status_code == 404, path
    assert farm.api.delete(f"/v1/batches/{batch}", headers=_auth(key)).status_code == 404
    listed = farm.api.get("/v1/batches", headers=_auth(key)).json()["batches"]
    assert str(batch) not in [b["id"] for b in listed]
    assert farm.api.get(f"/v1/jobs?batch_id={batch}", headers=_auth(key)).json()["jobs"] == []

    def removed() -> bool:  # what running jobs held, removed by the dispatcher's sweep
        with farm.session_factory() as s:
            return s.get(Batch, batch) is None and not farm.jobs(batch=batch)

    wait_for(removed, 30, "the dispatcher to finish the deletion", interval=0.2)
    leftovers = list(farm.storage.list_objects(f"outputs/{team}/"))  # type: ignore[attr-defined]
    assert not leftovers, leftovers[:3]


def test_the_dispatcher_prunes_on_its_schedule(farm):
    _, key, _ = farm.team(retention_days=1)
    old = farm.job(key, image(uuid.uuid4().int % 200 + 60))
    farm.rendered(old)
    farm.age(old)
    spent = prune(farm.session_factory, farm.storage, budget_seconds=0)  # no time: no chunk
    assert not spent.finished and spent.jobs == 0 and farm.jobs(ids=[old])
    settings = farm.db.settings.model_copy(update={"prune_interval_seconds": 0.2})
    dispatcher = Dispatcher(
        settings, farm.session_factory, make_celery(settings), {}, storage=farm.storage
    )
    dispatcher._prune_retention()  # the first run waits an interval after start
    assert farm.jobs(ids=[old]), "not pruned before its interval"
    wait_for(lambda: (dispatcher._prune_retention(), not farm.jobs(ids=[old]))[1], 10, "pruned")
