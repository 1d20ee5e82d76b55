"""Prometheus metrics: the API's (by route template, jobs by model and team), the workers'
(fed by Celery signals, served on IMGFARM_METRICS_PORT), the farm gauges read from Postgres,
and prometheus-client's multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from dispatch.farm_metrics import FarmMetrics
from shared.db import session_scope
from shared.models import Job, Team, Worker, utcnow
from tests.factories import batch_body, job_body
from tests.services import free_port, port_open, wait_for
from worker.metrics import WorkerMetrics
from worker.tasks import RenderFailed


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- API ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(settings):
    """The api with /metrics on its own port, as asked for explicitly."""
    app = create_app(settings.model_copy(update={"metrics_on_api_port": True}))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    ("host", "update", "served"),
    [
        ("0.0.0.0", {}, False),  # README's by-hand `imgfarm api --host 0.0.0.0`
        ("10.1.2.3", {}, False),
        (None, {}, False),  # an app that does not say where it listens
        ("127.0.0.1", {}, True),  # `imgfarm up`
        ("0.0.0.0", {"metrics_on_api_port": True}, True),
        ("127.0.0.1", {"metrics_on_api_port": False}, False),
    ],
)
def test_metrics_share_the_public_port_only_on_loopback_or_when_asked(
    settings, host, update, served
):
    app = create_app(settings.model_copy(update=update), listen_host=host)
    with TestClient(app) as c:
        assert (c.get("/metrics").status_code == 200) is served


def test_requests_are_counted_by_route_template_not_path(client, new_key):
    key = new_key()
    labels = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"}
    before = sample("imgfarm_http_requests_total", **labels)
    for _ in range(2):
        assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(key)).status_code == 404
    assert client.get("/wp-admin/setup.php").status_code == 404

    metrics = scrape(client.get("/metrics").text)
    assert metrics[("imgfarm_http_requests_total", tuple(sorted(labels.items())))] == before + 2
    routes = {dict(k[1]).get("route") for k in metrics if k[0] == "imgfarm_http_requests_total"}
    assert "<unmatched>" in routes
    assert not any(r and ("wp-admin" in r or r.count("-") >= 4) for r in routes), routes
    count = (
        "imgfarm_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/jobs/{job_id}")),
    )
    assert metrics[count] >= 2


def test_metrics_route_needs_no_key_while_api_routes_do(client):
    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/models").status_code == 401


def test_committed_jobs_are_counted_by_model_and_team(client, new_key):
    team = f"metrics-{uuid.uuid4().hex[:6]}"
    key = new_key(team)
    before = sample("imgfarm_jobs_submitted_total", model="tiny", team=team)
    assert client.post("/v1/jobs", json=job_body(), headers=auth(key)).status_code == 202
    assert client.post("/v1/jobs", json=job_body(), headers=auth(key)).status_code == 202
    # Refused before anything is written: not a submitted job.
    assert client.post("/v1/jobs", json=job_body(strength=7), headers=auth(key)).status_code == 422
    # A batch's jobs go in by COPY, which the ORM never sees: counted all the same (12).
    assert client.post("/v1/batches", json=batch_body(), headers=auth(key)).status_code == 202
    text = client.get("/metrics").text
    assert f'imgfarm_jobs_submitted_total{{model="tiny",team="{team}"}} {before + 14:.1f}' in text


def test_bulk_inserted_jobs_count_at_commit_and_not_on_rollback(session_factory):
    from sqlalchemy import insert
    from sqlalchemy.orm import sessionmaker

    from api.metrics import track_submitted_jobs

    factory = sessionmaker(session_factory.kw["bind"], expire_on_commit=False)
    track_submitted_jobs(factory)
    model = f"bulk-{uuid.uuid4().hex[:6]}"
    with factory() as s:
        team = Team(name=f"team-{model}")
        s.add(team)
        s.flush()
        rows = [
            {"team_id": team.id, "model": model, "prompt": "p", "params": {}, "source_key": "k"}
            for _ in range(3)
        ]
        s.execute(insert(Job), rows)  # the batch route's path: one bulk INSERT
        s.rollback()
        assert sample("imgfarm_jobs_submitted_total", model=model, team=team.name) == 0
        team = Team(name=f"team-{model}")
        s.add(team)
        s.flush()
        for row in rows:
            row["team_id"] = team.id
        s.execute(insert(Job), rows)
        s.add(Job(team_id=team.id, model=model, prompt="p", params={}, source_key="k"))
        s.commit()
    assert sample("imgfarm_jobs_submitted_total", model=model, team=team.name) == 4


def test_metrics_port_moves_metrics_off_the_public_port(settings):
    port = free_port()
    app = create_app(
        settings.model_copy(update={"metrics_port": port, "metrics_address": "127.0.0.1"})
    )
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 404, "never on the public listener"
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert 'imgfarm_http_requests_total{method="GET",route="/healthz"' in response.text
    # The listener stops with the app.
    wait_for(lambda: not port_open(port), 10, f"metrics port {port} to close")


# --- worker (signals) ------------------------------------------------------------------


def run_task(
    metrics: WorkerMetrics,
    retval: object,
    state: str = "SUCCESS",
    args: tuple = (["j1"],),
    name: str = "imgfarm.render",
) -> None:
    task = SimpleNamespace(name=name)
    task_id = uuid.uuid4().hex
    metrics.on_task_prerun(task_id=task_id, task=task, args=args)
    metrics.on_task_postrun(task_id=task_id, task=task, args=args, retval=retval, state=state)


def test_render_summary_feeds_histograms_and_outcomes():
    model = f"m-{uuid.uuid4().hex[:6]}"
    metrics = WorkerMetrics(model=model)
    run_task(
        metrics,
        {
            "model": model,
            "batch_size": 3,
            "render_seconds": 0.8,
            "load": {"seconds": 2.5},
            "outcomes": {"succeeded": 2, "failed": 1},
            "queue_wait_seconds": [1.0, 2.0, 30.0],
        },
    )
    run_task(
        metrics,
        {
            "model": model,
            "batch_size": 0,
            "render_seconds": 0.0,
            "outcomes": {"skipped": 2},
            "queue_wait_seconds": [],
        },
    )
    assert sample("imgfarm_worker_jobs_total", model=model, outcome="succeeded") == 2
    assert sample("imgfarm_worker_jobs_total", model=model, outcome="failed") == 1
    assert sample("imgfarm_worker_jobs_total", model=model, outcome="skipped") == 2
    # Only the batch that rendered something is timed.
    assert sample("imgfarm_render_seconds_count", model=model) == 1
    assert sample("imgfarm_render_seconds_sum", model=model) == pytest.approx(0.8)
    assert sample("imgfarm_render_batch_size_sum", model=model) == 3
    assert sample("imgfarm_queue_wait_seconds_count", model=model) == 3
    assert sample("imgfarm_queue_wait_seconds_bucket", model=model, le="2.0") == 2
    assert sample("imgfarm_model_load_seconds", model=model) == 2.5
    assert sample("imgfarm_worker_tasks_total", task="imgfarm.render", state="SUCCESS") >= 2
    assert sample("imgfarm_worker_busy", model=model) == 0


def test_plain_string_results_and_raised_tasks_are_still_counted():
    model = f"m-{uuid.uuid4().hex[:6]}"
    metrics = WorkerMetrics(model=model)
    run_task(metrics, "succeeded")
    run_task(metrics, "skipped")
    run_task(metrics, RuntimeError("boom"), state="FAILURE", args=(["a", "b", "c"],))
    run_task(metrics, None, state="RETRY")  # comes back: not counted yet
    # What the render task raises when some jobs failed unexpectedly (the real task is run
    # in tests/worker/test_failures.py).
    failure = RenderFailed(
        "j: OverflowError", {"batch_size": 2, "outcomes": {"succeeded": 1, "failed": 1}}
    )
    run_task(metrics, failure, state="FAILURE", args=(["d", "e"],))
    run_task(metrics, {"garbage": True, "outcomes": "nope", "queue_wait_seconds": "x"})
    counts = {
        o: sample("imgfarm_worker_jobs_total", model=model, outcome=o)
        for o in ("succeeded", "skipped", "error", "failed", "retry")
    }
    assert counts == {"succeeded": 2, "skipped": 1, "error": 3, "failed": 1, "retry": 0}


def test_other_tasks_are_timed_but_not_counted_as_renders():
    model = f"m-{uuid.uuid4().hex[:6]}"
    metrics = WorkerMetrics(model=model)
    before = sample("imgfarm_worker_task_seconds_count", task="imgfarm.deliver_webhook")
    run_task(metrics, "succeeded", name="imgfarm.deliver_webhook")
    assert sample("imgfarm_worker_task_seconds_count", task="imgfarm.deliver_webhook") == before + 1
    assert sample("imgfarm_worker_jobs_total", model=model, outcome="succeeded") == 0


# --- farm gauges from Postgres ---------------------------------------------------------


def test_farm_gauges_read_backlog_age_running_and_expired_leases(session_factory):
    model = f"farm-{uuid.uuid4().hex[:6]}"
    now = utcnow()

    def job(team: Team, status: str, **values: object) -> Job:
        return Job(
            team_id=team.id,
            model=model,
            status=status,
            prompt="p",
            params={},
            source_key="k",
            **values,
        )

    with session_scope(session_factory) as s:
        team = Team(name=f"team-{model}")
        s.add(team)
        s.flush()
        s.add_all(
            [
                job(team, "queued", created_at=now - timedelta(seconds=120)),
                job(team, "queued", created_at=now - timedelta(seconds=5), enqueued_at=now),
                job(team, "running", lease_expires_at=now + timedelta(seconds=60)),
                job(team, "running", lease_expires_at=now - timedelta(seconds=1)),
                job(team, "succeeded"),
            ]
        )
        s.add(Worker(name=f"{model}-1@h", model=model, device="cpu", last_seen_at=now))
        s.add(
            Worker(
                name=f"{model}-2@h",
                model=model,
                device="cpu",
                last_seen_at=now - timedelta(hours=1),
            )
        )
    farm = FarmMetrics(interval=60)
    with session_factory() as s:
        assert farm.update(s)
        assert not farm.update(s), "throttled: a second call within the interval reads nothing"
    assert sample("imgfarm_farm_jobs_queued", model=model) == 2
    assert sample("imgfarm_farm_jobs_undispatched", model=model) == 1
    assert 119 <= sample("imgfarm_farm_oldest_queued_job_age_seconds", model=model) < 300
    assert sample("imgfarm_farm_jobs_running", model=model) == 2
    assert sample("imgfarm_farm_leases_expired", model=model) == 1
    assert sample("imgfarm_farm_workers_online", model=model) == 1

    # The model's queue empties: its gauges drop to zero instead of keeping stale values.
    with session_scope(session_factory) as s:
        for j in s.query(Job).filter(Job.model == model):
            j.status = "succeeded"
    with session_factory() as s:
        assert farm.update(s, force=True)
    assert sample("imgfarm_farm_jobs_queued", model=model) == 0
    assert sample("imgfarm_farm_oldest_queued_job_age_seconds", model=model) == 0
    assert sample("imgfarm_farm_leases_expired", model=model) == 0


def test_farm_metrics_survive_a_database_error(session_factory):
    farm = FarmMetrics()
    with session_factory() as s:
        s.close()
        broken = SimpleNamespace(execute=lambda *_a, **_k: (_ for _ in ()).throw(OSError("db")))
        assert farm.update(broken) is False  # type: ignore[arg-type]


# --- multiprocess mode -----------------------------------------------------------------


def test_multiprocess_mode_sums_every_process(tmp_path):
    """Two processes count into PROMETHEUS_MULTIPROC_DIR; one /metrics shows the total."""
    script = textwrap.dedent("""
        import multiprocessing, sys
        from worker.metrics import JOBS
        from shared.metrics import exposition_registry
        from prometheus_client import generate_latest

        def work(n):
            JOBS.labels("tiny", "succeeded").inc(n)

        if __name__ == "__main__":
            procs = [multiprocessing.Process(target=work, args=(n,)) for n in (2, 3)]
            for p in procs: p.start()
            for p in procs: p.join()
            JOBS.labels("tiny", "succeeded").inc()
            sys.stdout.write(generate_latest(exposition_registry()).decode())
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.getcwd(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'imgfarm_worker_jobs_total{model="tiny",outcome="succeeded"} 6.0' in result.stdout


# --- a real worker process --------------------------------------------------------------


@pytest.mark.integration
def test_worker_process_serves_render_metrics_and_json_logs(
    client, new_key, spawn, start_worker, start_dispatcher
):
    port = free_port()
    worker = start_worker(
        "tiny", env={"IMGFARM_METRICS_PORT": str(port), "IMGFARM_LOG_FORMAT": "json"}
    )
    start_dispatcher()
    key = new_key()
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth(key)).json()["id"]
    wait_for(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["status"] == "succeeded",
        # Wide: a loaded CI machine (2 cores, several processes) can stall a first render.
        180,
        "the job to render",
        interval=0.2,
    )

    def metrics() -> dict:
        return scrape(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)

    # postrun runs right after the job row is marked succeeded: wait for the count.
    succeeded = ("imgfarm_worker_jobs_total", (("model", "tiny"), ("outcome", "succeeded")))
    m = wait_for(
        lambda: (lambda m: m if m.get(succeeded, 0) >= 1 else None)(metrics()),
        60,
        "the worker to count the job",
    )
    assert m[("imgfarm_worker_ready", (("model", "tiny"),))] == 1
    assert m[("imgfarm_model_load_seconds", (("model", "tiny"),))] > 0
    assert m[("imgfarm_render_seconds_count", (("model", "tiny"),))] >= 1
    assert m[("imgfarm_queue_wait_seconds_count", (("model", "tiny"),))] >= 1
    # The device lane counted at least the load and the render (the GPU duty-cycle panel).
    busy = m[("imgfarm_worker_device_busy_seconds_total", (("model", "tiny"),))]
    assert busy >= m[("imgfarm_render_seconds_sum", (("model", "tiny"),))] > 0
    # Each lane call (load and warm-up, then at least one render) noted its wait in line.
    assert m[("imgfarm_worker_device_wait_seconds_count", (("model", "tiny"),))] >= 2
    # Back to idle once its tasks end (the session's leftover tiny jobs may still reach this
    # worker through its queue under load, so wait for it rather than read it once).
    busy_now = ("imgfarm_worker_busy", (("model", "tiny"),))
    wait_for(lambda: metrics().get(busy_now) == 0, 120, "no task left in progress")

    # Every worker line is one JSON object; the ones about the job name it and the worker.
    entries = [
        __import__("json").loads(line) for line in worker.log().splitlines() if line.startswith("{")
    ]
    assert entries, worker.log()[-2000:]
    # A batch task names all its jobs (job_ids): other tests' queued tiny jobs may join ours.
    about_job = [
        e
        for e in entries
        if job_id == e.get("job_id") or job_id in str(e.get("job_ids", "")).split(",")
    ]
    assert about_job, "no log line carries the job id"
    assert all(str(e.get("worker", "")).startswith("tiny-") for e in about_job)
