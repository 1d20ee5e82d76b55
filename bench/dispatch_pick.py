"""The dispatcher's fair pick against the number of teams in the farm. Prints figures; never
fails on time.

    python bench/dispatch_pick.py                          # 100 vs 20,000 teams
    python bench/dispatch_pick.py --teams 10,1000,100000 --jobs-per-team 50000
    python bench/dispatch_pick.py --teams 10,100 --jobs-per-team 50 --repeat 1   # seconds
    python bench/dispatch_pick.py --teams 10,100,1000 --active-teams 0 --jobs-per-team 1000

Each tick, for each model with work, the dispatcher picks up to ``room`` waiting jobs by
weighted fair share across the teams that have some (dispatch/pick.py, ``pick``).
Most teams of a large farm have nothing waiting for a given model at a given moment, so the
pick must cost what the *waiting* teams cost, not what the ``teams`` table holds. This
builds, in a database of its own on the local PostgreSQL server, a farm with each number of
teams (weights 1, 2, 3 in turn) of which ``--active-teams`` have ``--jobs-per-team`` jobs
waiting (0: every team; 1% interactive, the rest half standard, half bulk: every team uses
the fast lane), and times the locking pick side by side, each rolled back: a dispatcher's
first (every waiting team read), then ``--repeat`` more with its state kept between them
as the dispatcher keeps it (median and p95). The issue's size, 1,000,000 jobs waiting over
1,000 teams, is the last of ``--teams 10,100,1000 --active-teams 0 --jobs-per-team 1000``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import log, write_json  # noqa: E402
from dispatch.fair_share import FairShare  # noqa: E402
from dispatch.pick import Waiting, pick  # noqa: E402
from shared.db import make_engine  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from tests.services import PostgresDatabase  # noqa: E402

MODEL = "tiny"


def fill(url: str, teams: int, active: int, jobs_per_team: int) -> None:
    """``teams`` teams (adding to those there), ``active`` of them (0: all) with jobs waiting."""
    engine = create_engine(url)
    with engine.begin() as conn:
        have = conn.execute(text("SELECT count(*) FROM teams")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO teams (id, name, created_at, weight) SELECT gen_random_uuid(),"
                " 'bench-' || g, now(), 1 + g % 3"
                " FROM generate_series(CAST(:first AS int), CAST(:last AS int)) g"
            ),
            {"first": have + 1, "last": teams},
        )
        busy = conn.execute(text("SELECT count(DISTINCT team_id) FROM jobs")).scalar_one()
        if (want := min(active or teams, teams) - busy) > 0:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, team_id, model, status, prompt, params, source_key,"
                    " created_at, attempts, priority) SELECT gen_random_uuid(), t.id, :model,"
                    " 'queued', 'p', '{}'::json, 'k', now() - make_interval(secs => g), 0,"
                    " CASE WHEN g % 100 = 0 THEN 'interactive' WHEN g % 2 = 0 THEN 'bulk'"
                    " ELSE 'standard' END"
                    " FROM (SELECT id FROM teams t WHERE NOT EXISTS (SELECT FROM jobs j WHERE"
                    " j.team_id = t.id) ORDER BY name LIMIT :want) t,"
                    " generate_series(1, CAST(:jobs AS int)) g"
                ),
                {"model": MODEL, "want": want, "jobs": jobs_per_team},
            )
        conn.execute(text("ANALYZE"))
    engine.dispose()


def time_pick(url: str, room: int, repeat: int) -> tuple[list[float], int]:
    """Seconds of the locking pick (database reads and the fair order): a dispatcher's first,
    then ``repeat`` with its ``FairShare`` and ``Waiting`` kept; and how many the last picked."""
    engine = make_engine(url)  # as the dispatcher's: JIT off
    seconds, picked = [], 0
    try:
        for i in range(repeat + 2):  # the first one warms caches and the plan
            if i < 2:
                share, waiting = FairShare(), Waiting()
            with Session(engine) as session, session.begin():
                started = time.perf_counter()
                picked = len(pick(session, share, MODEL, room, datetime.now(UTC), waiting=waiting))
                seconds.append(time.perf_counter() - started)
                session.rollback()
    finally:
        engine.dispose()
    return seconds[1:], picked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teams", default="100,20000", help="farm sizes, ascending, comma-separated")
    p.add_argument("--active-teams", type=int, default=3, help="teams with jobs waiting; 0: all")
    p.add_argument("--jobs-per-team", type=int, default=20_000)
    p.add_argument("--room", type=int, default=64, help="jobs one tick may hand over")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    sizes = sorted(int(n) for n in args.teams.split(","))

    db = PostgresDatabase(name=f"imgfarm_bench_pick_{uuid.uuid4().hex[:8]}")
    db.create()
    figures: dict[str, dict[str, float]] = {}
    first = 0.0
    try:
        upgrade(db.url)
        log(
            f"fair pick of {args.room} jobs, {args.active_teams or 'all'} teams x "
            f"{args.jobs_per_team:,} jobs, {args.repeat} ticks after the first"
        )
        for teams in sizes:
            fill(db.url, teams, args.active_teams, args.jobs_per_team)
            (once, *kept), picked = time_pick(db.url, args.room, args.repeat)
            median = statistics.median(kept)
            p95 = statistics.quantiles(kept, n=20, method="inclusive")[-1] if kept[1:] else kept[0]
            ms = {"ms": median * 1000, "p95_ms": p95 * 1000, "first_ms": once * 1000}
            figures[str(teams)] = {k: round(v, 3) for k, v in ms.items()} | {"picked": picked}
            first = first or median
            waiting = min(args.active_teams or teams, teams) * args.jobs_per_team
            log(
                f"  {teams:>9,} teams, {waiting:>9,} jobs waiting: median {ms['ms']:7.2f} ms,"
                f" p95 {ms['p95_ms']:7.2f} ms (first tick {ms['first_ms']:7.2f} ms),"
                f" {picked} picked   ({median / first:.2f}x the smallest farm)"
            )
    finally:
        db.drop()
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
