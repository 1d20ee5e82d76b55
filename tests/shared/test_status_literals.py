"""``jobs.status`` compared with a state is written into the SQL as that literal
(shared/models.py StatusName), so the generic plan Postgres keeps for a prepared statement
can still use the partial indexes whose predicates name a state; anything else stays a
parameter."""

from __future__ import annotations

import re

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from dispatch.dispatcher import ROOM
from shared.job_status import JobStatus
from shared.models import Job

PG = postgresql.dialect()


def sql(statement) -> str:  # noqa: ANN001 - any SQLAlchemy statement
    return str(statement.compile(dialect=PG))


def test_states_are_literals_and_other_values_parameters():
    query = select(Job.id).where(
        Job.status == JobStatus.QUEUED,
        Job.status.in_(["running", JobStatus.FAILED]),
        Job.status != "queued' OR '1'='1",  # a client's value: never written into SQL
        Job.status.not_in(["succeeded", "bogus"]),
    )
    text = sql(query)
    assert "jobs.status = 'queued'" in text
    assert "jobs.status IN ('failed', 'running')" in text
    assert "OR '1'='1" not in text and "jobs.status != %(status_1)s" in text
    assert "bogus" not in text  # a list with a stranger in it stays parameters


def test_the_rooms_generic_plan_uses_the_handed_over_index(settings):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("generic plans are Postgres's")
    # The statement as psycopg prepares it: each value a $n parameter.
    compiled = ROOM.compile(dialect=PG)
    values = {**compiled.params, "model": "echo", "cutoff": "now"}
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", str(compiled))))
    room = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}", str(compiled))
    args = ", ".join(f"'{values[n]}'" for n in names)
    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET enable_seqscan = off")  # a test table is small: compare indexes
        conn.execute(f"PREPARE room AS {room}")
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE room({args})"))
    assert "ix_jobs_handed_over" in plan, plan
