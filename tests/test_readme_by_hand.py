"""README's "Running the full stack by hand" block, run as a reader would paste it.

The block is taken from README.md itself; only what a reader on a shared machine would
change is swapped (ports, the database and bucket names, for free ones). It must bring up a
farm that renders a job, so the README cannot drift from what works.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.factories import job_body
from tests.services import PostgresDatabase, free_port, wait_answers, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Running the full stack by hand"


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under {SECTION!r}"
    return match.group(1)


def localised(block: str, *, db: str, redis_port: int, bucket: str, ports: dict[str, int]) -> str:
    """The block with this machine's free ports and names, each swap checked to happen."""
    swaps = [
        ("127.0.0.1:5432/imgfarm", f"127.0.0.1:5432/{db}"),
        ("-U postgres imgfarm", f"-U postgres {db}"),
        ("127.0.0.1:6379/", f"127.0.0.1:{redis_port}/"),
        ("s3://imgfarm/", f"s3://{bucket}/"),
        ("-p 9000", f"-p {ports['s3']}"),
        ("127.0.0.1:9000", f"127.0.0.1:{ports['s3']}"),
        ("--port 8000", f"--port {ports['api']}"),
        ("--port 5555", f"--port {ports['flower']}"),
    ]
    for old, new in swaps:
        assert old in block, f"README block no longer has {old!r}: update this test's swaps"
        block = block.replace(old, new)
    return block


def test_readme_by_hand_block_renders_a_job(tmp_path, redis):
    db = PostgresDatabase(name=f"imgfarm_readme_{uuid.uuid4().hex[:10]}")
    ports = {"s3": free_port(), "api": free_port(), "flower": free_port()}
    script = localised(
        readme_block(),
        db=db.name,
        redis_port=redis.port,
        bucket=f"readme-{uuid.uuid4().hex[:8]}",
        ports=ports,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGFARM_", "AWS_"))}
    # The reader's shell has the venv active: its bin first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    out = tmp_path / "block.log"
    with out.open("wb") as log:
        # Its own process group: the block's background processes outlive the script.
        shell = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert shell.wait(timeout=180) == 0, out.read_text()[-3000:]
        text = out.read_text()
        assert "applied migration 0001" in text, text[-3000:]
        assert "storage ready: bucket" in text, text[-3000:]
        key = re.search(r"^(imf_\S+)$", text, re.M)
        assert key, text[-3000:]
        api = f"http://127.0.0.1:{ports['api']}"
        wait_answers(f"{api}/readyz", 60, "the README's api to be ready")
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        body = job_body(width=64, height=64, steps=2)
        job = httpx.post(f"{api}/v1/jobs", json=body, headers=headers, timeout=30)
        assert job.status_code == 202, job.text

        def finished() -> dict | None:
            got = httpx.get(f"{api}/v1/jobs/{job.json()['id']}", headers=headers, timeout=10)
            return got.json() if got.json()["status"] in ("succeeded", "failed") else None

        done = wait_for(finished, 180, "the README farm to render a job", interval=0.5)
        assert done["status"] == "succeeded", (done, out.read_text()[-3000:])
        image = httpx.get(done["outputs"][0]["url"], timeout=10)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        wait_answers(f"http://127.0.0.1:{ports['flower']}/healthcheck", 60, "the README's Flower")
    finally:
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
                wait_for(lambda: _group_gone(shell.pid), 30, "the README's processes to stop")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)
            db.drop()


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
