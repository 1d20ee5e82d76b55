"""A read transaction ended by ROLLBACK (a bare session's close) against one ended by COMMIT
(shared/db.py session_scope), side by side on one pooled connection: the client's and the
Postgres backend's CPU per read, and the statements the connection holds prepared at the end
of each block. Prints figures; never fails on time.

    python bench/read_endings.py                       # the tests' Postgres, 3 x 2,000 reads
    python bench/read_endings.py --reads 5000 --rounds 5

psycopg answers every ROLLBACK with DEALLOCATE ALL, so after one the connection's prepared
statements are gone and the next five runs of each query are parsed and planned again (psycopg
prepares a query from its fifth run; Postgres plans a prepared one afresh for its first five
executions too). Each read here is what a render task's cancel check sends (worker/tasks.py
job_states: 16 jobs' status), against 20,000 jobs (``--jobs``) in a database of its own. Between two
read also looks up one job's batch, a second query text, as a task's transactions send several.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import insert, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.farm import cpu_seconds  # noqa: E402
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.models import Job  # noqa: E402
from shared.teams import ensure_team  # noqa: E402
from tests.services import PostgresDatabase  # noqa: E402

GROUP = 16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reads", type=int, default=2000, help="reads per block")
    p.add_argument("--rounds", type=int, default=3, help="blocks of each ending, alternated")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs in the table")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    db = PostgresDatabase(name=f"imgfarm_bench_{uuid.uuid4().hex[:8]}")
    db.create()
    try:
        figures = run(db.url, args.reads, args.rounds, args.jobs)
    finally:
        db.drop()
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


def run(url: str, reads: int, rounds: int, jobs: int) -> dict[str, list[dict[str, float]]]:
    """Per ending, each block's client and backend ms per read and statements left prepared."""
    upgrade(url)
    engine = make_engine(url, pool_size=1, max_overflow=0)
    factory = make_session_factory(engine)
    ids = seed(factory, jobs)
    groups = [ids[i : i + GROUP] for i in range(0, len(ids), GROUP)]
    states = select(Job.id, Job.status, Job.worker)
    batch_of = select(Job.batch_id, Job.team_id)
    with session_scope(factory) as s:
        backend = int(s.scalar(text("SELECT pg_backend_pid()")))
    figures: dict[str, list[tuple[float, float, int]]] = {"rollback": [], "commit": []}
    for _ in range(rounds):
        for ending in ("rollback", "commit"):
            client0, server0 = time.process_time(), cpu_seconds(backend) or 0.0
            for n in range(reads):
                group = groups[n % len(groups)]
                session = factory()
                try:
                    session.execute(states.where(Job.id.in_(group))).all()
                    session.execute(batch_of.where(Job.id == group[0])).all()
                    if ending == "commit":
                        session.commit()
                finally:
                    session.close()  # with its transaction open: ROLLBACK
            client = time.process_time() - client0
            server = (cpu_seconds(backend) or 0.0) - server0
            figures[ending].append((client, server, prepared(factory)))
    engine.dispose()
    print(f"imgfarm read endings: {reads} reads a block, {rounds} blocks each, alternated")
    for ending, rows in figures.items():
        client = ", ".join(f"{1e3 * c / reads:.3f}" for c, _, _ in rows)
        server = ", ".join(f"{1e3 * s / reads:.3f}" for _, s, _ in rows)
        held = ", ".join(str(p) for _, _, p in rows)
        print(
            f"  {ending:8}  client ms/read [{client}]  Postgres backend ms/read [{server}]"
            f"  prepared at the end [{held}]"
        )
    best = {e: min(s for _, s, _ in rows) for e, rows in figures.items()}
    ratio = best["commit"] / best["rollback"] if best["rollback"] else float("nan")
    print(f"  backend CPU, commit / rollback (best of each): {ratio:.2f}")
    return {
        ending: [
            {"client_ms": 1e3 * c / reads, "backend_ms": 1e3 * s / reads, "prepared": p}
            for c, s, p in rows
        ]
        for ending, rows in figures.items()
    }


def prepared(factory) -> int:  # noqa: ANN001 - a sessionmaker
    """Statements the pooled connection holds prepared now (none right after a ROLLBACK)."""
    with session_scope(factory) as s:
        return int(s.scalar(text("SELECT count(*) FROM pg_prepared_statements")))


def seed(factory, n: int) -> list[uuid.UUID]:  # noqa: ANN001 - a sessionmaker
    ids = [uuid.uuid4() for _ in range(n)]
    with session_scope(factory) as s:
        team = ensure_team(s, "read-endings")
        row = {"team_id": team.id, "model": "echo", "prompt": "p", "params": {}, "source_key": "k"}
        s.execute(insert(Job), [{"id": i, **row} for i in ids])
    with session_scope(factory) as s:
        s.execute(text("ANALYZE jobs"))
    return ids


if __name__ == "__main__":
    main()
