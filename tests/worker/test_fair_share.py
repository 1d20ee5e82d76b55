"""Fair share in the dispatcher: each model's room is shared across teams by weight (equal
weights: round-robin), each team's jobs by priority then age.

Real Postgres and Redis (the session's), plus one embedded SQLite run. Every test uses a
model alias of its own, so the rest of the session's jobs never enter its ticks, and with no
worker online for it the room is ``dispatch_depth_per_worker * max_batch``.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
import redis as redis_lib
from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from dispatch import pick as pick_module
from dispatch.dispatcher import Dispatcher, NotifyWaiter
from dispatch.fair_share import FairShare
from dispatch.pick import Waiting, pick
from shared.broker import make_celery, render_queue
from shared.db import make_engine, make_session_factory, session_scope
from shared.dispatch import CHANNEL as DISPATCH_CHANNEL
from shared.dispatch import nudge
from shared.migrate import upgrade
from shared.models import Job, Team, utcnow
from shared.registry import ModelSpec
from shared.settings import Settings
from shared.teams import ensure_team, set_team_limits

pytestmark = pytest.mark.integration

MAX_BATCH = 4
PARAMS = {
    "strength": 0.5,
    "steps": 2,
    "guidance_scale": 7.5,
    "seed": 1,
    "width": 64,
    "height": 64,
    "output_format": "png",
}


@dataclass
class Farm:
    """One model alias of the test's own, and what the dispatcher sent for it."""

    model: str
    settings: Settings
    session_factory: sessionmaker[Session]
    redis_url: str

    def dispatcher(self, depth: int = 2) -> Dispatcher:
        """A dispatcher whose room for this model is ``depth * MAX_BATCH`` jobs."""
        settings = Settings(**{**self.settings.model_dump(), "dispatch_depth_per_worker": depth})
        registry = {self.model: ModelSpec(self.model, "builtin:tiny", max_batch=MAX_BATCH)}
        return Dispatcher(settings, self.session_factory, make_celery(settings), registry)

    def team(self) -> uuid.UUID:
        with session_scope(self.session_factory) as s:
            return ensure_team(s, f"fair-{uuid.uuid4().hex[:8]}").id

    def sent_batches(self) -> list[list[uuid.UUID]]:
        """Job ids of each render message in this model's Redis queue, oldest message first."""
        client = redis_lib.Redis.from_url(self.redis_url)
        batches = []
        # kombu pushes on the left: the oldest message is the last element.
        for raw in reversed(client.lrange(render_queue(self.model), 0, -1)):
            args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
            batches.append([uuid.UUID(i) for i in args[0]])
        return batches


@pytest.fixture
def farm(private_db, redis_url) -> Iterator[Farm]:
    # A database of the module's own: its queued jobs are invisible to other tests'
    # dispatchers (which would fail them as unknown models), and it needs no cleanup.
    model = f"fair-{uuid.uuid4().hex[:8]}"
    yield Farm(model, private_db.settings, private_db.session_factory, redis_url)
    redis_lib.Redis.from_url(redis_url).delete(render_queue(model))


def other_model(model: str) -> str:
    """A second alias whose waiting jobs must never enter ``model``'s ticks."""
    return f"{model}-other"


def add_jobs(
    session_factory: sessionmaker[Session],
    model: str,
    team_id: uuid.UUID,
    count: int,
    start: datetime,
    **columns: object,
) -> list[uuid.UUID]:
    """``count`` queued jobs of ``team_id``, one millisecond apart from ``start``, oldest first."""
    rows = [
        {
            "id": uuid.uuid4(),
            "team_id": team_id,
            "model": model,
            "prompt": "p",
            "params": PARAMS,
            "source_key": "k",
            "created_at": start + timedelta(milliseconds=i),
            **columns,
        }
        for i in range(count)
    ]
    with session_scope(session_factory) as s:
        s.execute(insert(Job), rows)
    return [r["id"] for r in rows]


def handed_over(session_factory: sessionmaker[Session], model: str) -> set[uuid.UUID]:
    with session_factory() as s:
        return set(
            s.scalars(select(Job.id).where(Job.model == model, Job.enqueued_at.is_not(None)))
        )


def test_lone_job_behind_a_big_batch_goes_in_the_first_tick(farm):
    base = utcnow() - timedelta(hours=1)
    big = add_jobs(farm.session_factory, farm.model, farm.team(), 10_000, base)
    (lone,) = add_jobs(
        farm.session_factory, farm.model, farm.team(), 1, base + timedelta(minutes=1)
    )

    stats = farm.dispatcher(depth=2).tick()

    assert stats.sent_jobs == 2 * MAX_BATCH
    assert handed_over(farm.session_factory, farm.model) == {lone, *big[: 2 * MAX_BATCH - 1]}
    # Round one is each team's oldest job, oldest first: the big batch's head, then the lone one.
    assert farm.sent_batches()[0][:2] == [big[0], lone]


def test_a_broker_failing_mid_tick_leaves_what_it_refused_waiting(farm, monkeypatch):
    # The pick marks its jobs handed over as it locks them; what the broker then refuses
    # must commit as waiting again, and what it took as handed over (sent once, no more).
    from dispatch import dispatcher as dispatcher_module

    real_send, sends = dispatcher_module.send_render, []

    def second_send_fails(app, job_ids, model):
        sends.append(job_ids)
        if len(sends) > 1:  # what kombu raises once its retries to a lost Redis ran out
            raise redis_lib.exceptions.ConnectionError("Error 111 connecting: refused")
        real_send(app, job_ids, model)

    monkeypatch.setattr(dispatcher_module, "send_render", second_send_fails)
    jobs = add_jobs(farm.session_factory, farm.model, farm.team(), 20, utcnow())

    stats = farm.dispatcher(depth=3).tick()

    assert stats.sent_jobs == MAX_BATCH and stats.errors
    assert handed_over(farm.session_factory, farm.model) == set(jobs[:MAX_BATCH])
    assert farm.sent_batches() == [jobs[:MAX_BATCH]]
    monkeypatch.setattr(dispatcher_module, "send_render", real_send)  # the broker is back
    assert farm.dispatcher(depth=3).tick().sent_jobs == 2 * MAX_BATCH  # the room left


def test_three_teams_share_the_room_round_robin(farm):
    base = utcnow() - timedelta(hours=1)
    # Submitted one team after the other, as three big batches would be.
    a, b, c = (
        add_jobs(farm.session_factory, farm.model, farm.team(), 50, base + timedelta(minutes=i))
        for i in range(3)
    )

    stats = farm.dispatcher(depth=3).tick()

    assert stats.sent_jobs == 12
    assert handed_over(farm.session_factory, farm.model) == {*a[:4], *b[:4], *c[:4]}
    assert farm.sent_batches() == [
        [a[0], b[0], c[0], a[1]],
        [b[1], c[1], a[2], b[2]],
        [c[2], a[3], b[3], c[3]],
    ]


def test_a_team_with_few_jobs_leaves_the_rest_of_its_share_to_the_others(farm):
    base = utcnow() - timedelta(hours=1)
    a = add_jobs(farm.session_factory, farm.model, farm.team(), 50, base)
    b = add_jobs(farm.session_factory, farm.model, farm.team(), 50, base + timedelta(minutes=1))
    c = add_jobs(farm.session_factory, farm.model, farm.team(), 2, base + timedelta(minutes=2))

    stats = farm.dispatcher(depth=3).tick()

    assert stats.sent_jobs == 12, "the room is used in full"
    assert handed_over(farm.session_factory, farm.model) == {*a[:5], *b[:5], *c}


def test_a_team_alone_fills_the_whole_room(farm):
    jobs = add_jobs(farm.session_factory, farm.model, farm.team(), 100, utcnow())
    dispatcher = farm.dispatcher(depth=4)

    first, second = dispatcher.tick(), dispatcher.tick()

    assert (first.sent_jobs, first.sent_batches) == (16, 4)
    assert second.sent_jobs == 0, "the queue is full until a worker takes some"
    assert handed_over(farm.session_factory, farm.model) == set(jobs[:16])
    assert [j for batch in farm.sent_batches() for j in batch] == jobs[:16]


def test_jobs_not_yet_due_or_already_handed_over_are_skipped(farm):
    base = utcnow() - timedelta(hours=1)
    a = add_jobs(farm.session_factory, farm.model, farm.team(), 30, base)
    later = add_jobs(
        farm.session_factory,
        farm.model,
        farm.team(),
        3,
        base - timedelta(minutes=1),
        not_before=utcnow() + timedelta(minutes=5),
    )
    c = add_jobs(farm.session_factory, farm.model, farm.team(), 10, base + timedelta(minutes=1))
    with session_scope(farm.session_factory) as s:
        s.execute(update(Job).where(Job.id.in_(c[:2])).values(enqueued_at=utcnow()))

    stats = farm.dispatcher(depth=3).tick()

    # Two of c's are in flight: room for 10, shared by a and c (later's are backing off).
    assert stats.sent_jobs == 10
    assert handed_over(farm.session_factory, farm.model) == {*a[:5], *c[:7]}
    assert not handed_over(farm.session_factory, farm.model) & set(later)


def test_lateral_and_plain_rankings_pick_the_same_jobs(farm):
    """Postgres reads each planned team's line by LATERAL probes, SQLite by a query per
    team: the same picks, in the same order."""
    base = utcnow() - timedelta(hours=1)
    teams = [farm.team() for _ in range(4)]
    for i, team in enumerate(teams):
        add_jobs(farm.session_factory, farm.model, team, 20 + 7 * i, base + timedelta(seconds=i))
        add_jobs(farm.session_factory, farm.model, team, 5, base, status="succeeded")
        add_jobs(farm.session_factory, other_model(farm.model), team, 5, base)
        add_jobs(farm.session_factory, farm.model, team, 3, base, priority="bulk")
    add_jobs(farm.session_factory, farm.model, teams[1], 4, base, priority="interactive")
    add_jobs(
        farm.session_factory, farm.model, teams[0], 5, base, not_before=utcnow() + timedelta(1)
    )
    with session_scope(farm.session_factory) as s:
        set_team_limits(s, teams[2], weight=3.0)
    now = utcnow()
    for room in (1, 3, 10, 40, 200):
        picks = {}
        for lateral in (True, False):
            with farm.session_factory() as s:
                picks[lateral] = pick(s, FairShare(), farm.model, room, now, lateral=lateral)
                s.rollback()
        assert picks[True] == picks[False], room
        assert len(picks[True]) == min(room, 20 + 27 + 34 + 41 + 4 * 3 + 4)


def test_two_dispatchers_hand_each_job_over_once_across_teams(farm):
    base = utcnow() - timedelta(hours=1)
    jobs = [
        j
        for i in range(3)
        for j in add_jobs(
            farm.session_factory, farm.model, farm.team(), 200, base + timedelta(minutes=i)
        )
    ]
    errors: list[BaseException] = []

    def run() -> None:
        dispatcher = farm.dispatcher(depth=2)
        try:
            idle = 0
            while idle < 3:
                idle = idle + 1 if dispatcher.tick().sent_jobs == 0 else 0
                # Play the workers: what was handed over is done, so the room frees up and
                # both dispatchers keep competing for the same rows tick after tick.
                with session_scope(farm.session_factory) as s:
                    s.execute(
                        update(Job)
                        .where(Job.model == farm.model, Job.enqueued_at.is_not(None))
                        .values(status="succeeded")
                    )
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    sent = Counter(j for batch in farm.sent_batches() for j in batch)
    assert set(sent) == set(jobs), "every job handed over"
    assert max(sent.values()) == 1, "no job handed over twice"


def test_embedded_sqlite_shares_fairly_too(tmp_path):
    # What `imgfarm demo` runs on: SQLite and Celery's filesystem broker, no server.
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'imgfarm.db'}",
        broker_url="filesystem://",
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    try:
        model = "tiny"
        with session_scope(session_factory) as s:
            big_team, lone_team = ensure_team(s, "big").id, ensure_team(s, "lone").id
        base = utcnow() - timedelta(hours=1)
        big = add_jobs(session_factory, model, big_team, 500, base)
        (lone,) = add_jobs(session_factory, model, lone_team, 1, base + timedelta(minutes=1))
        registry = {model: ModelSpec(model, "builtin:tiny", max_batch=MAX_BATCH)}
        dispatcher = Dispatcher(settings, session_factory, make_celery(settings), registry)

        stats = dispatcher.tick()

        assert stats.sent_jobs == 2 * MAX_BATCH
        assert handed_over(session_factory, model) == {lone, *big[: 2 * MAX_BATCH - 1]}
    finally:
        engine.dispose()


# --- weights, priorities, the interactive lane and deadlines (issue 17) ---------------------


def test_weights_two_to_one_share_the_room_two_to_one(farm):
    base = utcnow() - timedelta(hours=1)
    heavy, light = farm.team(), farm.team()
    with session_scope(farm.session_factory) as s:
        set_team_limits(s, heavy, weight=2.0)
    a = add_jobs(farm.session_factory, farm.model, heavy, 60, base)
    b = add_jobs(farm.session_factory, farm.model, light, 60, base)

    stats = farm.dispatcher(depth=3).tick()

    assert stats.sent_jobs == 12
    assert handed_over(farm.session_factory, farm.model) == {*a[:8], *b[:4]}


def test_a_team_s_own_jobs_go_by_priority_then_age(farm):
    base = utcnow() - timedelta(hours=1)
    team = farm.team()
    bulk = add_jobs(farm.session_factory, farm.model, team, 5, base, priority="bulk")
    standard = add_jobs(farm.session_factory, farm.model, team, 5, base + timedelta(minutes=1))
    urgent = add_jobs(
        farm.session_factory,
        farm.model,
        team,
        3,
        base + timedelta(minutes=2),
        priority="interactive",
    )

    farm.dispatcher(depth=2).tick()

    order = [j for batch in farm.sent_batches() for j in batch]
    assert order == [*urgent, *standard[:5]]
    assert not set(order) & set(bulk)


def test_interactive_jobs_jump_other_teams_turns_in_at_most_3_of_4_slots(farm):
    base = utcnow() - timedelta(hours=1)
    big, quick = farm.team(), farm.team()
    with session_scope(farm.session_factory) as s:
        set_team_limits(s, big, weight=100.0)  # by weight alone, quick would wait ~100 slots
    a = add_jobs(farm.session_factory, farm.model, big, 100, base, priority="bulk")
    b = add_jobs(
        farm.session_factory,
        farm.model,
        quick,
        30,
        base + timedelta(minutes=1),
        priority="interactive",
    )

    farm.dispatcher(depth=4).tick()  # room for 16

    order = [j for batch in farm.sent_batches() for j in batch]
    lane = [j in set(b) for j in order]
    assert sum(lane) == 12, "3 of every 4 slots, no more"
    assert all(sum(lane[i : i + 4]) <= 3 for i in range(len(lane) - 3)), lane
    assert [j for j in order if j in set(b)] == b[:12], "oldest first"
    assert [j for j in order if j in set(a)] == a[:4]


def test_a_batch_near_its_deadline_goes_one_class_up(farm):
    from dispatch.urgency import urgent_batches
    from shared.models import Batch

    base = utcnow() - timedelta(hours=1)
    team = farm.team()
    batch_id = uuid.uuid4()
    with session_scope(farm.session_factory) as s:
        for bid, deadline in ((batch_id, utcnow() + timedelta(minutes=2)), (uuid.uuid4(), None)):
            s.add(
                Batch(
                    id=bid, team_id=team, model=farm.model, seed=1, params=PARAMS,
                    image_count=1, prompt_count=1, variants=1, job_count=4, deadline=deadline,
                )
            )  # fmt: skip
    # Without the deadline the standard jobs go first (bulk is the lowest class).
    standard = add_jobs(farm.session_factory, farm.model, team, 6, base + timedelta(minutes=1))
    late = add_jobs(
        farm.session_factory, farm.model, team, 4, base, priority="bulk", batch_id=batch_id
    )

    with farm.session_factory() as s:
        # Nothing of this model rendered lately: a deadline closer than the window is urgent.
        assert urgent_batches(s, farm.model, utcnow()) == [batch_id]
    farm.dispatcher(depth=1).tick()  # room for 4

    assert handed_over(farm.session_factory, farm.model) == set(late), (
        "bulk raised to standard, older"
    )
    assert not handed_over(farm.session_factory, farm.model) & set(standard)


def test_the_kept_view_of_waiting_teams_sweeps_a_lap_and_sees_new_jobs_at_once(farm, monkeypatch):
    """After its first tick (every waiting team read) a dispatcher re-reads SWEEP_TEAMS
    teams a tick round the uuid order, and at once the teams with jobs just submitted: a
    team whose old jobs came back is seen within a lap, one whose jobs went is dropped."""
    monkeypatch.setattr(pick_module, "SWEEP_TEAMS", 2)
    base = utcnow() - timedelta(hours=1)
    # Teams in a known uuid order: t1 < t2 < t3 < t4 < t5 < rearmed < newcomer.
    t1, t2, t3, t4, t5, rearmed, newcomer = (
        uuid.UUID(int=(k << 124) | uuid.uuid4().int >> 8) for k in range(1, 8)
    )
    with session_scope(farm.session_factory) as s:
        for team in (t1, t2, t3, t4, t5, rearmed, newcomer):
            s.add(Team(id=team, name=f"kept-{team.hex[:10]}"))
    for team in (t1, t2, t3, t4, t5):
        add_jobs(farm.session_factory, farm.model, team, 3, base)
    back = add_jobs(farm.session_factory, farm.model, rearmed, 3, base, enqueued_at=base)
    waiting, share = Waiting(), FairShare()

    def tick() -> set[uuid.UUID]:
        with farm.session_factory() as s:  # rolled back: only the kept view moves
            assert len(pick(s, share, farm.model, 1, utcnow(), waiting=waiting)) == 1
            s.rollback()
        return set(waiting.weights)

    assert tick() == {t1, t2, t3, t4, t5}, "the first tick reads every waiting team"
    with session_scope(farm.session_factory) as s:
        s.execute(update(Job).where(Job.team_id == t5).values(enqueued_at=utcnow()))
        s.execute(update(Job).where(Job.id.in_(back)).values(enqueued_at=None))
    add_jobs(farm.session_factory, farm.model, newcomer, 1, utcnow())

    assert tick() == {t1, t2, t3, t4, t5, newcomer}, "new jobs at once; the sweep read t1, t2"
    assert tick() == {t1, t2, t3, t4, t5, newcomer}, "the sweep read t3, t4"
    assert tick() == {t1, t2, t3, t4, rearmed, newcomer}, "then t5 (gone) to newcomer"
    assert waiting.cursor == newcomer
    tick()
    assert waiting.cursor is None, "past the last team: the next sweep starts a new lap"


def test_a_nudged_tick_looks_at_the_models_named_a_full_one_at_every_model(farm):
    other = other_model(farm.model)
    team = farm.team()
    start = utcnow() - timedelta(minutes=1)
    mine = add_jobs(farm.session_factory, farm.model, team, 2, start)
    theirs = add_jobs(farm.session_factory, other, team, 2, start)
    registry = {m: ModelSpec(m, "builtin:tiny", max_batch=MAX_BATCH) for m in (farm.model, other)}
    settings = farm.settings
    dispatcher = Dispatcher(settings, farm.session_factory, make_celery(settings), registry)
    try:
        assert dispatcher.tick(sweep=False, models={farm.model}).sent_jobs == 2
        assert handed_over(farm.session_factory, farm.model) == set(mine)
        assert handed_over(farm.session_factory, other) == set(), "not named: not looked at"
        assert dispatcher.tick(sweep=False, models=None).sent_jobs == 2
        assert handed_over(farm.session_factory, other) == set(theirs)
    finally:
        redis_lib.Redis.from_url(farm.redis_url).delete(render_queue(other))


def test_the_waiter_returns_the_models_its_nudges_named(private_db):
    url = private_db.settings.database_url
    waiter, stop = NotifyWaiter(url), threading.Event()
    try:
        assert waiter.wait(0.05, stop) is None, "a quiet interval: every model"
        for named, expected in ((["m1", "m2", "m1"], {"m1", "m2"}), (["m1", ""], None)):
            with session_scope(private_db.session_factory) as s:
                for model in named:
                    if model:
                        nudge(s, model)
                    else:  # a nudge that names no model (an older api's)
                        s.execute(text(f"NOTIFY {DISPATCH_CHANNEL}"))
            assert waiter.wait(5, stop) == expected
    finally:
        waiter.close()
