"""The dispatcher's pick: which waiting jobs of a model go into the room left in its queue.

The order is dispatch/fair_share.py's (weighted fair share between teams, then each team's
own priority and age, with the bounded interactive lane). This module reads just enough of
the backlog to apply it, however big the backlog is:

1. the teams with jobs waiting for the model, with their weights, and those with
   interactive jobs waiting (``Waiting``): read in full on a dispatcher's first tick (a
   loose index scan of ix_jobs_waiting, one probe per such team, and the same over the
   small ix_jobs_waiting_interactive), then kept: each tick re-reads the next
   ``SWEEP_TEAMS`` of them round the uuid order (so any change, a re-armed job, a new
   weight, is seen within a lap) and adds the teams with jobs submitted since the last
   tick; a team whose line reads empty is dropped until a sweep finds it again. At 1,000
   waiting teams the full read costs ~20 ms, a tick's ~2 ms;
2. how many slots each team would get (``FairShare.plan``, a heap, no database);
3. that many of each planned team's jobs (interactive teams: enough to use the fast lane):
   Postgres reads them with one LATERAL probe per team and class, each a range scan of
   ix_jobs_waiting that reads only what it returns; SQLite (embedded, small backlogs) with
   one ordinary query per team;
4. a team that had fewer jobs than planned leaves its slots to the others (planned again,
   at most ``ROUNDS`` times a tick; what is still empty fills next tick);
5. the jobs in the fair order, locked ``FOR UPDATE SKIP LOCKED`` and marked handed over in
   one UPDATE: rows another dispatcher holds, or that it handed over meanwhile, are skipped
   (that tick sends fewer).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, select, text
from sqlalchemy.orm import Session

from dispatch.fair_share import PRIORITIES, RANK, Candidate, FairShare
from shared.jobs import WAITING_SQL, JobStatus, hand_over, waiting_clauses
from shared.models import Job, Team

ROUNDS = 3
# Waiting teams a tick re-reads (after the first tick, which reads them all).
SWEEP_TEAMS = 100
# Jobs created this long before the last tick still count as new at this one: created_at is
# the api's clock when it wrote the row, which commits (and becomes visible) a little later.
ARRIVAL_MARGIN = timedelta(seconds=10)

_PROBE = " UNION ALL ".join(
    f"""(SELECT j.id, j.team_id, j.batch_id, {rank} AS rank, j.created_at FROM jobs j
        WHERE j.model = :model AND j.team_id = w.team_id AND j.priority = '{name}'
          AND j.status = 'queued' AND j.enqueued_at IS NULL
          AND (j.not_before IS NULL OR j.not_before <= :now)
        ORDER BY j.created_at LIMIT w.n)"""
    for rank, name in enumerate(PRIORITIES)
)
# Postgres: each wanted team's first n jobs, class by class, one index range scan each; the
# outer LIMIT stops the Append once n came, so the classes after are not probed at all.
# (ORDER BY created_at alone: a batch's jobs share it, and an id tie-break would make every
# probe sort the whole batch; ties are ordered by id in Python.)
LINES = text(
    "SELECT c.id, c.team_id, c.batch_id, c.rank, c.created_at FROM"
    " unnest(CAST(:teams AS uuid[]), CAST(:limits AS int[])) AS w(team_id, n)"
    f" CROSS JOIN LATERAL (SELECT * FROM ({_PROBE}) p LIMIT w.n) c"
)
# Postgres, one round trip: the first :limit teams from :first on (uuid order) with jobs
# waiting, by a loose scan of ix_jobs_waiting (one probe per team, however many teams the
# farm has: reading ``teams`` instead costs a probe per team in the farm, ~1 s a tick at
# 20,000), and the teams with jobs created since :since (ix_jobs_waiting_created: only those
# rows); each with its weight and whether it has interactive jobs waiting (one probe of
# ix_jobs_waiting_interactive). ORDER BY ... LIMIT 1, not min(): Postgres has no min() on uuid.
TEAMS = text(
    f"""
    WITH RECURSIVE swept(team_id, n) AS (
        SELECT (SELECT j.team_id FROM jobs j WHERE {WAITING_SQL} AND j.team_id >= :first
                ORDER BY j.team_id LIMIT 1), 1
        UNION ALL
        SELECT (SELECT j.team_id FROM jobs j WHERE {WAITING_SQL} AND j.team_id > s.team_id
                ORDER BY j.team_id LIMIT 1), s.n + 1
        FROM swept s WHERE s.team_id IS NOT NULL AND s.n < :limit
    ), found(team_id, swept) AS (
        SELECT team_id, true FROM swept WHERE team_id IS NOT NULL
        UNION ALL
        SELECT DISTINCT j.team_id, false FROM jobs j WHERE {WAITING_SQL} AND j.created_at >= :since
    )
    SELECT t.id, t.weight, f.swept, EXISTS (
        SELECT FROM jobs j WHERE {WAITING_SQL} AND j.team_id = t.id
          AND j.priority = '{PRIORITIES[0]}') AS fast
    FROM found f JOIN teams t ON t.id = f.team_id
    """
)


@dataclass
class Waiting:
    """The teams with jobs waiting for one model as a dispatcher last read them (see the
    module: read in full once, then swept ``SWEEP_TEAMS`` a tick from ``cursor``).

    Between sweeps it may name a team whose jobs are gone (its line then reads empty and it
    is dropped) or miss one whose only jobs came back (re-armed, retried): that team waits
    at most a lap of the sweep, which is the tick itself while ``SWEEP_TEAMS`` or fewer
    teams wait."""

    weights: dict[uuid.UUID, float] = field(default_factory=dict)
    fast: set[uuid.UUID] = field(default_factory=set)  # those with interactive jobs waiting
    cursor: uuid.UUID | None = None  # the next sweep reads the teams after this one
    read_at: datetime | None = None  # the last tick's time; None: never read

    def refresh(self, session: Session, model: str, now: datetime, postgres: bool) -> None:
        if not postgres:  # SQLite: embedded, small backlogs: read in full every tick
            self.weights = teams_waiting(session, model)
            self.fast = set(teams_waiting(session, model, interactive=True))
        elif self.read_at is None:
            self._read(session, model, None, None, None)
        else:
            self._read(session, model, self.cursor, SWEEP_TEAMS, self.read_at - ARRIVAL_MARGIN)
        self.read_at = now

    def drop(self, teams: Iterable[uuid.UUID]) -> None:
        for team in teams:
            self.weights.pop(team, None)
            self.fast.discard(team)

    def _read(
        self,
        session: Session,
        model: str,
        after: uuid.UUID | None,
        limit: int | None,
        since: datetime | None,
    ) -> None:
        """Sweep the ``limit`` waiting teams after ``after`` (all of them: None) and add
        those with jobs created since ``since``."""
        first = uuid.UUID(int=0 if after is None else after.int + 1)
        params = {"model": model, "first": first, "limit": limit or 2**31 - 1, "since": since}
        rows = session.execute(TEAMS, params).tuples().all()
        swept = [team for team, _, is_swept, _ in rows if is_swept]
        # A full segment ends at its last team; a short one reaches the end of the order.
        upto = max(swept) if limit is not None and len(swept) == limit else None
        if after is None and upto is None:
            self.weights, self.fast = {}, set()
        else:
            gone = [t for t in self.weights if t >= first and (upto is None or t <= upto)]
            self.drop(gone)
        for team, weight, _, fast in rows:
            self.weights[team] = weight
            if fast:
                self.fast.add(team)
            else:
                self.fast.discard(team)
        self.cursor = upto


def pick(
    session: Session,
    share: FairShare,
    model: str,
    room: int,
    now: datetime,
    urgent: Collection[uuid.UUID] = (),
    *,
    lateral: bool | None = None,
    waiting: Waiting | None = None,
) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    """Take (``shared.jobs.hand_over``: marked handed over, locked till commit) and return
    (id, params) of up to ``room`` waiting jobs of ``model`` in the order they are handed
    over; ``urgent`` batches' jobs count one priority class up. ``lateral`` (default: on
    Postgres) reads with the loose scans and LATERAL probes. ``waiting``: the dispatcher's
    kept view of the waiting teams (default: one read in full for this pick)."""
    postgres = session.get_bind().dialect.name == "postgresql" if lateral is None else lateral
    waiting = Waiting() if waiting is None else waiting
    waiting.refresh(session, model, now, postgres)
    if not waiting.weights:
        return []
    lines = read_lines(
        session, share, model, room, now, waiting.weights, waiting.fast, urgent, postgres
    )
    waiting.drop(t for t, line in lines.items() if not line)
    order = share.order(waiting.weights, lines, room)
    return hand_over(session, model, now, [c.id for c in order])


def teams_waiting(
    session: Session, model: str, *, interactive: bool = False
) -> dict[uuid.UUID, float]:
    """Team id -> weight of the teams with jobs (interactive ones only, if asked) waiting:
    the plain query the embedded SQLite reads (Postgres reads ``TEAMS``)."""
    query = select(Job.team_id).where(
        Job.model == model, Job.status == JobStatus.QUEUED.value, Job.enqueued_at.is_(None)
    )
    if interactive:
        query = query.where(Job.priority == PRIORITIES[0])
    found = query.distinct().subquery()
    rows = session.execute(select(Team.id, Team.weight).join(found, found.c.team_id == Team.id))
    return dict(rows.tuples().all())


def read_lines(
    session: Session,
    share: FairShare,
    model: str,
    room: int,
    now: datetime,
    weights: Mapping[uuid.UUID, float],
    fast: Collection[uuid.UUID],
    urgent: Collection[uuid.UUID],
    postgres: bool,
) -> dict[uuid.UUID, list[Candidate]]:
    """Each planned team's first jobs in its own order: as many as the plan gives it."""
    lane = share.interactive_budget(room)
    lines: dict[uuid.UUID, list[Candidate]] = {}
    done: set[uuid.UUID] = set()  # teams whose whole line is read
    for _ in range(ROUNDS):
        left = room - sum(len(lines[t]) for t in done)
        # (No copies of the 1,000-team maps while no team ran out: the first round.)
        plan = share.plan(weights, left, [t for t in weights if t not in done] if done else None)
        # Interactive teams also get what the fast lane would give them (at most ``lane``
        # slots in all, shared by their virtual times).
        lane_teams = [t for t in fast if t not in done] if done else fast
        for team, n in share.plan(weights, lane, lane_teams).items():
            plan[team] = max(plan.get(team, 0), n)
        wanted = {t: n for t, n in plan.items() if n > len(lines.get(t, ()))}
        if not wanted:
            break
        read = _read(session, model, now, wanted, urgent, postgres)
        for team, n in wanted.items():
            lines[team] = read.get(team, [])
            if len(lines[team]) < n:
                done.add(team)
        if not done.intersection(wanted):
            break  # everyone had what the plan gave them: the room is covered
    return lines


def _read(
    session: Session,
    model: str,
    now: datetime,
    wanted: Mapping[uuid.UUID, int],
    urgent: Collection[uuid.UUID],
    postgres: bool,
) -> dict[uuid.UUID, list[Candidate]]:
    rows: list[Any]
    if postgres:
        rows = list(
            session.execute(
                LINES,
                {
                    "teams": list(wanted),
                    "limits": list(wanted.values()),
                    "model": model,
                    "now": now,
                },
            ).all()
        )
    else:
        rows = [
            row for team, n in wanted.items() for row in _read_team(session, model, now, team, n)
        ]
    if urgent:
        rows += _read_urgent(session, model, now, wanted, urgent)
    best: dict[uuid.UUID, Candidate] = {}
    for row in rows:
        # An urgent batch goes one class up (interactive stays the top).
        rank = max(0, row.rank - 1) if row.batch_id in urgent else row.rank
        if row.id not in best or rank < best[row.id].rank:
            best[row.id] = Candidate(row.id, row.team_id, rank, row.created_at)
    lines: dict[uuid.UUID, list[Candidate]] = {}
    for cand in sorted(best.values(), key=lambda c: c.order):
        line = lines.setdefault(cand.team_id, [])
        if len(line) < wanted[cand.team_id]:
            line.append(cand)
    return lines


def _rank() -> ColumnElement[int]:
    return case(RANK, value=Job.priority, else_=len(PRIORITIES))


def _read_team(session: Session, model: str, now: datetime, team: uuid.UUID, n: int) -> list[Any]:
    return list(
        session.execute(
            select(Job.id, Job.team_id, Job.batch_id, _rank().label("rank"), Job.created_at)
            .where(Job.team_id == team, *waiting_clauses(Job, model, now))
            .order_by(_rank(), Job.created_at, Job.id)
            .limit(n)
        )
    )


def _read_urgent(
    session: Session,
    model: str,
    now: datetime,
    wanted: Mapping[uuid.UUID, int],
    urgent: Collection[uuid.UUID],
) -> list[Any]:
    # Few batches are ever urgent at once; ix_jobs_batch_status finds each one's jobs.
    return list(
        session.execute(
            select(Job.id, Job.team_id, Job.batch_id, _rank().label("rank"), Job.created_at)
            .where(
                Job.batch_id.in_(list(urgent)),
                Job.team_id.in_(list(wanted)),
                *waiting_clauses(Job, model, now),
            )
            .order_by(Job.created_at, Job.id)
            .limit(max(wanted.values()) * len(urgent))
        )
    )
