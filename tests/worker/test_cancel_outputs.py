"""A canceled job keeps no output, even when the cancel lands during its upload.

In process, on Postgres and local storage, with the real render task (``run_render``): the
storage cancels the job inside ``put``, so the race the worker's state check cannot see
happens every time instead of once in hundreds of cancels.
"""

from __future__ import annotations

import uuid

import pytest

from shared.db import session_scope
from shared.jobs import cancel
from shared.registry import BUILTINS
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.worker.test_pipelining import queued_jobs, rows
from worker.context import WorkerContext
from worker.pipelines import load_model
from worker.tasks import run_render

pytestmark = pytest.mark.integration


class CancelingStorage(LocalStorage):
    """Local storage that cancels ``victim`` just before storing its output."""

    def __init__(self, *args, session_factory, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.session_factory = session_factory
        self.victim: uuid.UUID | None = None

    def put(self, key, data, content_type, metadata=None) -> None:
        if self.victim is not None and f"/{self.victim}/" in key:
            with session_scope(self.session_factory) as s:
                assert cancel(s, self.victim)
        super().put(key, data, content_type, metadata=metadata)


def test_job_canceled_during_its_upload_leaves_no_output(tmp_path, settings, session_factory):
    storage = CancelingStorage(
        tmp_path / "objects", "http://test", "secret", session_factory=session_factory
    )
    echo = load_model(BUILTINS["echo"], Settings(data_dir=tmp_path / "d"))
    ctx = WorkerContext(
        settings=settings,
        model=echo,
        storage=storage,
        session_factory=session_factory,
        name=f"cancel-{uuid.uuid4().hex[:6]}",
    )
    try:
        keep, drop = queued_jobs(session_factory, storage, "echo", 2)
        storage.victim = drop
        summary = run_render(ctx, [keep, drop])
    finally:
        ctx.close()
    final = rows(session_factory, [keep, drop])
    assert final[keep].status == "succeeded" and final[drop].status == "canceled"
    assert summary.outcomes["succeeded"] == 1
    outputs = tmp_path / "objects" / "outputs" / str(final[drop].team_id)
    assert list((outputs / str(keep)).glob("*.png"))
    assert not list((outputs / str(drop)).glob("*")), "the canceled job's upload was removed"
