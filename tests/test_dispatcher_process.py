"""The dispatcher process loads no GPU stack: it runs in the small api image, starts fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services import launch_dispatcher

pytestmark = pytest.mark.integration
GPU_STACK = ("torch", "diffusers", "transformers", "cv2")


def test_running_dispatcher_has_no_torch_loaded(spawn):
    proc = launch_dispatcher(spawn)
    assert proc.proc is not None
    # What the live process has mapped: any imported extension module shows up here.
    maps = Path(f"/proc/{proc.proc.pid}/maps").read_text()
    loaded = sorted({name for name in GPU_STACK if f"/site-packages/{name}/" in maps})
    assert loaded == [], f"imgfarm dispatcher loaded {loaded}"
    assert "/site-packages/sqlalchemy/" in maps or "psycopg" in maps, "maps were read"
