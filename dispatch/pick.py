"""The dispatcher's pick: which waiting jobs of a model go into the room left in its queue.

The order is dispatch/fair_share.py's (weighted fair share between teams, then each team's
own priority and age, with the bounded interactive lane). This module reads just enough of
the backlog to apply it, however big the backlog is:

1. the teams with jobs waiting for the model, with their weights (a loose index scan of
   ix_jobs_waiting: one probe per such team), and those with interactive jobs waiting (the
   same over the small ix_jobs_waiting_interactive);
2. how many slots each team would get (``FairShare.plan``, a heap, no database);
3. that many of each planned team's jobs (interactive teams: enough to use the fast lane):
   Postgres reads them with one LATERAL probe per team and class, each a range scan of
   ix_jobs_waiting that reads only what it returns; SQLite (embedded, small backlogs) with
   one ordinary query per team;
4. a team that had fewer jobs than planned leaves its slots to the others (planned again,
   at most ``ROUNDS`` times a tick; what is still empty fills next tick);
5. the jobs in the fair order, locked ``FOR UPDATE SKIP LOCKED``: rows another dispatcher
   holds, or that it handed over meanwhile, are skipped (that tick sends fewer).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import CTE, ColumnElement, ScalarSelect, case, or_, select, text
from sqlalchemy.orm import Session, aliased

from dispatch.fair_share import PRIORITIES, RANK, Candidate, FairShare
from shared.jobs import JobStatus
from shared.models import Job, Team

ROUNDS = 3

_PROBE = " UNION ALL ".join(
    f"""(SELECT j.id, j.team_id, j.batch_id, {rank} AS rank, j.created_at FROM jobs j
        WHERE j.model = :model AND j.team_id = w.team_id AND j.priority = '{name}'
          AND j.status = 'queued' AND j.enqueued_at IS NULL
          AND (j.not_before IS NULL OR j.not_before <= :now)
        ORDER BY j.created_at LIMIT w.n)"""
    for rank, name in enumerate(PRIORITIES)
)
# Postgres: each wanted team's first n jobs of each class, one index range scan each.
# (ORDER BY created_at alone: a batch's jobs share it, and an id tie-break would make every
# probe sort the whole batch; ties are ordered by id in Python.)
LINES = text(
    "SELECT c.id, c.team_id, c.batch_id, c.rank, c.created_at FROM"
    " unnest(CAST(:teams AS uuid[]), CAST(:limits AS int[])) AS w(team_id, n)"
    f" CROSS JOIN LATERAL ({_PROBE}) c"
)


def waiting_clauses(jobs: type[Job], model: str, now: datetime) -> list[ColumnElement[bool]]:
    """Rows of ``jobs`` (``Job`` or an alias) the dispatcher may hand over at ``now``."""
    return [
        jobs.model == model,
        jobs.status == JobStatus.QUEUED.value,
        jobs.enqueued_at.is_(None),
        or_(jobs.not_before.is_(None), jobs.not_before <= now),
    ]


def pick(
    session: Session,
    share: FairShare,
    model: str,
    room: int,
    now: datetime,
    urgent: Collection[uuid.UUID] = (),
    *,
    lateral: bool | None = None,
) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    """Lock and return (id, params) of up to ``room`` waiting jobs of ``model`` in the order
    they are handed over; ``urgent`` batches' jobs count one priority class up. ``lateral``
    (default: on Postgres) reads with the loose scans and LATERAL probes."""
    postgres = session.get_bind().dialect.name == "postgresql" if lateral is None else lateral
    weights = teams_waiting(session, model, postgres)
    if not weights:
        return []
    fast = teams_waiting(session, model, postgres, interactive=True).keys()
    lines = read_lines(session, share, model, room, now, weights, fast, urgent, postgres)
    order = share.order(weights, lines, room)
    return lock(session, model, now, [c.id for c in order])


def teams_waiting(
    session: Session, model: str, postgres: bool, *, interactive: bool = False
) -> dict[uuid.UUID, float]:
    """Team id -> weight of the teams with jobs (interactive ones only, if asked) waiting."""
    if not postgres:
        query = select(Job.team_id).where(
            Job.model == model, Job.status == JobStatus.QUEUED.value, Job.enqueued_at.is_(None)
        )
        if interactive:
            query = query.where(Job.priority == PRIORITIES[0])
        found: Any = query.distinct().subquery()
    else:
        found = _loose_scan(model, interactive)
    rows = session.execute(select(Team.id, Team.weight).join(found, found.c.team_id == Team.id))
    return dict(rows.tuples().all())


def _loose_scan(model: str, interactive: bool) -> CTE:
    """The teams with jobs waiting for ``model`` (column ``team_id``): one probe of the
    waiting index per such team, however many teams exist. Reading the ``teams`` table
    instead costs a probe per team in the farm (20,000 teams: ~1 s a tick)."""

    def next_team(after: ColumnElement[Any] | None) -> ScalarSelect[Any]:
        jobs = aliased(Job)
        query = select(jobs.team_id).where(
            jobs.model == model,
            jobs.status == JobStatus.QUEUED.value,
            jobs.enqueued_at.is_(None),
        )
        if interactive:
            query = query.where(jobs.priority == PRIORITIES[0])
        if after is not None:
            query = query.where(jobs.team_id > after)
        # ORDER BY ... LIMIT 1, not min(): Postgres has no min() over uuid.
        return query.order_by(jobs.team_id).limit(1).scalar_subquery()

    teams = select(next_team(None).label("team_id")).cte("teams_waiting", recursive=True)
    return teams.union_all(select(next_team(teams.c.team_id)).where(teams.c.team_id.is_not(None)))


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
        plan = share.plan({t: w for t, w in weights.items() if t not in done}, left)
        # Interactive teams also get what the fast lane would give them (at most ``lane``
        # slots in all, shared by their virtual times).
        for team, n in share.plan({t: weights[t] for t in fast if t not in done}, lane).items():
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


def lock(
    session: Session, model: str, now: datetime, ids: list[uuid.UUID]
) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    """(id, params) of the ``ids`` still waiting and not locked by another dispatcher, in
    the order given."""
    if not ids:
        return []
    rows = session.execute(
        select(Job.id, Job.params)
        .where(Job.id.in_(ids), *waiting_clauses(Job, model, now))
        .with_for_update(skip_locked=True)
    ).tuples()
    params: dict[uuid.UUID, dict[str, Any]] = dict(rows.all())
    return [(i, params[i]) for i in ids if i in params]
