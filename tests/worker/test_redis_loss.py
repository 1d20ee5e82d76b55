"""Redis is not the queue of record: messages it loses after hand-over are rebuilt from Postgres.

The dispatcher hands a job to Redis and marks it ``enqueued_at``; if Redis then loses the
message (FLUSHALL, or a restart without persistence), the job must still render, exactly once.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis as redis_lib

from tests.factories import job_body
from tests.services import wait_for
from tests.worker.test_faults import auth, output_objects, wait_final

pytestmark = pytest.mark.integration
# Re-arm quickly: the production default (600 s) is a window for slow queues, not a contract.
REDISPATCH = {"IMGFARM_REDISPATCH_SECONDS": "3"}


def _queued_in_redis(redis_url: str, queue: str) -> int:
    return int(redis_lib.Redis.from_url(redis_url).llen(queue))


@pytest.mark.parametrize("loss", ["flushall", "restart"])
def test_messages_lost_after_hand_over_still_render_once(
    loss, client, new_key, session_factory, s3_client, redis, redis_url, spawn, fault_report
):
    from tests.services import launch_dispatcher, launch_worker

    dispatcher = launch_dispatcher(spawn, env=REDISPATCH)
    worker = launch_worker(spawn, "echo")
    # Freeze the worker so the hand-over sits in Redis, as with a busy farm.
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        key = new_key()
        ids = []
        for i in range(20):
            body = job_body(seed=i, model="echo", width=64, height=64)
            response = client.post("/v1/jobs", json=body, headers=auth(key))
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        waiting = wait_for(
            lambda: _queued_in_redis(redis_url, "render.echo") or None,
            30,
            "the dispatcher to hand jobs to Redis",
        )
        started = time.monotonic()
        # Frozen too while Redis loses them: on a loaded machine the loss can take longer
        # than REDISPATCH, and a re-arm before the check below would hide the loss.
        os.kill(dispatcher.proc.pid, signal.SIGSTOP)
        if loss == "flushall":
            redis_lib.Redis.from_url(redis_url).flushall()
        else:
            redis.stop()
            redis.start()
        assert _queued_in_redis(redis_url, "render.echo") == 0
    finally:
        os.kill(dispatcher.proc.pid, signal.SIGCONT)
        os.kill(worker.proc.pid, signal.SIGCONT)
    counts = wait_final(session_factory, ids, timeout=120)
    objects = output_objects(s3_client, ids)
    fault_report(
        f"Redis {loss} with {waiting} messages handed over: succeeded {counts['succeeded']} "
        f"of {len(ids)}, duplicated outputs {sum(n - 1 for n in objects.values() if n > 1)}, "
        f"all done {time.monotonic() - started:.1f}s after the loss"
    )
    assert counts == {"succeeded": len(ids)}
    assert len(objects) == len(ids) and set(objects.values()) == {1}
