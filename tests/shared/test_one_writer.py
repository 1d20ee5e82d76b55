"""One writer of job state: only shared/jobs.py changes ``jobs.status`` and emits job events.

Two nets. The tree is read (ast): an ``update(Job)`` whose ``.values(...)`` may set
``status``, a bulk ``execute(update(Job), rows)``, a ``query(Job).update(...)``, raw SQL
naming ``UPDATE jobs``, or a call of ``emit_job_event(s)`` anywhere but shared/jobs.py fails
the test, naming the line. And SQLAlchemy is hooked (``before_cursor_execute``) while the
api, the fake worker and the dispatcher move jobs: every ``UPDATE jobs SET status`` that
reaches the database must come through shared/jobs.py (an ORM ``job.status = ...`` flush,
which no source rule can see, included).
"""

from __future__ import annotations

import ast
import re
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import event, insert, select, update
from sqlalchemy.engine import Engine

from shared.db import session_scope
from shared.models import Job
from shared.teams import ensure_team

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "dispatch", "worker", "api", "imgfarm", "bench")
WRITER = "shared/jobs.py"
OUTBOX = "shared/events.py"  # defines the emitters
EMITTERS = {"emit_job_event", "emit_job_events"}
RAW_UPDATE = re.compile(r"\bUPDATE\s+jobs\b", re.IGNORECASE)
# jobs.review: a person's decisions (shared/review.py), the worker's verdict at success and a
# rerender's clearing (both transitions of shared/jobs.py).
REVIEW_WRITERS = frozenset({"shared/review.py", WRITER})


# --- the source rule --------------------------------------------------------------------------


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _calls(node: ast.AST, name: str, arg: str) -> bool:
    """``node`` is a call of ``name`` (plain or dotted) whose first argument names ``arg``."""
    return (
        isinstance(node, ast.Call)
        and _name(node.func) == name
        and bool(node.args)
        and _name(node.args[0]) == arg
    )


def _chain(node: ast.AST) -> Iterator[ast.AST]:
    """The receivers of a method chain: ``update(Job).where(...).values`` yields each link."""
    while isinstance(node, ast.Call | ast.Attribute):
        yield node
        node = node.func if isinstance(node, ast.Call) else node.value


def _may_set_status(call: ast.Call, column: str = "status") -> bool:
    """``.values(...)`` / ``.update(...)`` arguments that set, or might set, ``column``."""
    for kw in call.keywords:
        if kw.arg == column:
            return True
        if kw.arg is None and not (
            isinstance(kw.value, ast.Dict) and not _dict_has_status(kw.value, column)
        ):
            return True  # **something: cannot prove it leaves status alone
    return any(isinstance(a, ast.Dict) and _dict_has_status(a, column) for a in call.args) or any(
        not isinstance(a, ast.Dict) for a in call.args
    )


def _dict_has_status(node: ast.Dict, column: str = "status") -> bool:
    return any(
        k is None or (isinstance(k, ast.Constant) and k.value == column) or _name(k) == column
        for k in node.keys
    )


def review_offenders_in(path: str, source: str) -> list[str]:
    """Every ``update(Job).values(...)`` in ``source`` that may set ``jobs.review`` outside
    its writers (a raw ``UPDATE jobs`` is refused by the status rule already)."""
    if path in REVIEW_WRITERS:
        return []
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "values"
            and _may_set_status(node, "review")
            and any(_calls(r, "update", "Job") for r in _chain(node.func.value))
        ):
            found.append(f"{path}:{node.lineno}: update(Job).values(...) sets review")
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def offenders_in(path: str, source: str) -> list[str]:
    """Every place in ``source`` that writes job status or job events without the writer."""
    if path == WRITER:
        return []
    tree = ast.parse(source, path)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receivers = node.func.attr, list(_chain(node.func.value))
            if method == "values" and _may_set_status(node):
                if any(_calls(r, "update", "Job") for r in receivers):
                    found.append(f"{where}: update(Job).values(...) sets status")
            elif method == "update" and any(_calls(r, "query", "Job") for r in receivers):
                if _may_set_status(node):
                    found.append(f"{where}: query(Job).update(...) sets status")
            elif (
                method == "execute" and len(node.args) > 1 and _calls(node.args[0], "update", "Job")
            ):
                found.append(f"{where}: execute(update(Job), rows) may set status")
        if isinstance(node, ast.Call) and _name(node.func) in EMITTERS and path != OUTBOX:
            found.append(f"{where}: {_name(node.func)}(...) outside the state machine")
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and RAW_UPDATE.search(node.value)
        ):
            found.append(f"{where}: raw SQL UPDATE jobs")
    return sorted(found, key=lambda o: int(o.split(":")[1]))


def tree_sources(root: Path = ROOT) -> Iterable[tuple[str, str]]:
    for package in PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            yield file.relative_to(root).as_posix(), file.read_text(encoding="utf-8")


def offenders(sources: Iterable[tuple[str, str]]) -> list[str]:
    return [o for path, source in sources for o in offenders_in(path, source)]


def test_only_shared_jobs_changes_job_status_or_emits_job_events():
    found = offenders(tree_sources())
    assert found == [], "job state has one writer (shared/jobs.py); move these there:\n" + (
        "\n".join(found)
    )


def test_only_the_review_writers_change_job_review():
    found = [o for path, source in tree_sources() for o in review_offenders_in(path, source)]
    assert found == [], "jobs.review is written by shared/review.py and shared/jobs.py:\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize(
    "snippet",
    [
        "update(Job).where(Job.id == i).values(review='approved', reviewed_at=now)",
        "update(Job).values({'review': 'rejected'})",
        "update(models.Job).values(**decision)",
    ],
)
def test_the_review_rule_sees_each_way_of_writing_review(snippet):
    assert review_offenders_in("api/routes/review.py", snippet)
    assert review_offenders_in("shared/review.py", snippet) == []
    assert review_offenders_in("api/x.py", "update(Job).values(enqueued_at=now)") == []


FLAGGED = {
    "values keyword": "update(Job).where(Job.id == i).values(status='failed')",
    "dotted model": "update(models.Job).values(status=JobStatus.QUEUED.value, error=None)",
    "values dict": "sa.update(Job).values({'status': 'queued'})",
    "values splat": "update(Job).where(x).values(**changes)",
    "bulk by primary key": "session.execute(update(Job), [{'id': i, 'status': 'failed'}])",
    "legacy query": "session.query(Job).filter(Job.id == i).update({Job.status: 'failed'})",
    "raw sql": "session.execute(text('update jobs set status = :s where id = :i'))",
    "emit": "emit_job_events(session, ids, JOB_FAILED)",
    "emit one": "events.emit_job_event(session, i, 'job.failed')",
}
LEFT_ALONE = {
    "dispatch state": "update(Job).where(Job.id.in_(sent)).values(enqueued_at=now)",
    "another table": "update(WebhookDelivery).values(status='failed')",
    "a docstring": 'def f():\n    """Runs UPDATE jobs SET status=... through shared/jobs.py."""',
}


@pytest.mark.parametrize("snippet", FLAGGED.values(), ids=list(FLAGGED))
def test_the_source_rule_sees_each_way_of_writing_status(snippet):
    assert offenders_in("api/elsewhere.py", snippet)
    assert offenders_in(WRITER, snippet) == [], "the writer itself may"


@pytest.mark.parametrize("snippet", LEFT_ALONE.values(), ids=list(LEFT_ALONE))
def test_the_source_rule_leaves_other_writes_alone(snippet):
    assert offenders_in("dispatch/dispatcher.py", snippet) == []


# --- the runtime rule -------------------------------------------------------------------------

# Anywhere in the statement: on Postgres a move is a CTE of the statement that logs it.
STATUS_UPDATE = re.compile(
    r"\bUPDATE\s+jobs\s+SET\s+(?P<set>.*?)(?:\s+WHERE\s|\s+RETURNING\s|$)",
    re.IGNORECASE | re.DOTALL,
)
WRITER_FILE = str(ROOT / WRITER)


@dataclass
class StatusWrites:
    """Every ``UPDATE jobs SET status`` sent while installed, and who sent it."""

    through_writer: int = 0
    offenders: list[str] = field(default_factory=list)

    def seen(self, statement: str) -> None:
        match = STATUS_UPDATE.search(statement)
        if match is None or not re.search(r"(^|,)\s*status\s*=", match["set"]):
            return
        frame = sys._getframe(2)  # past this and the hook: whoever executed it
        caller = None
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename == WRITER_FILE:
                self.through_writer += 1
                return
            if caller is None and filename.startswith(str(ROOT)) and "/.venv/" not in filename:
                caller = f"{Path(filename).relative_to(ROOT)}:{frame.f_lineno}"
            frame = frame.f_back
        self.offenders.append(f"{caller}: {statement.split(' WHERE ')[0][:120]}")


@pytest.fixture
def status_writes() -> Iterator[StatusWrites]:
    writes = StatusWrites()

    def hook(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        writes.seen(statement)

    event.listen(Engine, "before_cursor_execute", hook)
    try:
        yield writes
    finally:
        event.remove(Engine, "before_cursor_execute", hook)


def test_the_runtime_rule_catches_a_status_write_from_elsewhere(status_writes, session_factory):
    with session_factory() as s:
        s.execute(update(Job).where(Job.id == uuid.uuid4()).values(status="failed"))
        job = Job(team_id=ensure_team(s, "one-writer").id, model="m", prompt="p", params={})
        job.source_key = "k"
        s.add(job)
        s.flush()
        job.status = "failed"  # an ORM flush: invisible to the source rule
        s.flush()
        s.rollback()
    assert len(status_writes.offenders) == 2, status_writes.offenders
    assert all(o.startswith("tests/shared/test_one_writer.py:") for o in status_writes.offenders)


@pytest.mark.integration
def test_every_status_write_of_a_short_run_goes_through_shared_jobs(
    status_writes, client, new_key, session_factory, settings
):
    """The api (submit, cancel, batch cancel and retry), the fake worker (claim, succeed,
    fail) and the dispatcher (unknown model, malformed params, lease sweep) move jobs; no
    status UPDATE reaches the database from anywhere else."""
    from dispatch.dispatcher import Dispatcher
    from shared.broker import make_celery
    from shared.jobs import expire_leases
    from shared.storage import storage_from_settings
    from tests.factories import batch_body, finish_jobs, job_body

    headers = {"Authorization": f"Bearer {new_key()}"}
    job = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    assert client.post(f"/v1/jobs/{job}/cancel", headers=headers).json()["status"] == "canceled"
    batch = client.post("/v1/batches", json=batch_body(), headers=headers).json()["id"]
    with session_factory() as s:
        ids = list(s.scalars(select(Job.id).where(Job.batch_id == uuid.UUID(batch))))
    storage = storage_from_settings(settings)
    finish_jobs(session_factory, storage, ids[:1])
    finish_jobs(session_factory, storage, ids[1:2], "failed")
    for action in ("cancel", "retry", "cancel"):  # the last leaves nothing for a tiny worker
        assert client.post(f"/v1/batches/{batch}/{action}", headers=headers).status_code == 200

    model = f"gone-{uuid.uuid4().hex[:6]}"
    with session_scope(session_factory) as s:
        team = ensure_team(s, f"one-writer-{model}")
        rows = [
            {"id": uuid.uuid4(), "team_id": team.id, "model": model, "prompt": "p", "params": {}}
            for _ in range(4)
        ]
        s.execute(insert(Job), [{**r, "source_key": "k"} for r in rows])
    dispatcher = Dispatcher(settings, session_factory, make_celery(settings), {})
    with session_scope(session_factory) as s:
        malformed = s.execute(select(Job.id, Job.params).where(Job.id == rows[0]["id"])).all()
        assert dispatcher._drop_malformed(s, malformed) == []
        dispatcher._fail_unknown_model(s, model)
        expire_leases(s, settings.max_attempts)
    with session_factory() as s:
        statuses = set(s.scalars(select(Job.status).where(Job.model == model)))
    assert statuses == {"failed"}
    assert status_writes.offenders == [], "\n".join(status_writes.offenders)
    # submit+cancel, 2 claims, succeed, fail, cancel, retry, cancel, 2 dispatcher fails, sweep
    assert status_writes.through_writer >= 10
