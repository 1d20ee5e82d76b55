"""The ``imgfarm`` command as a newcomer and an operator run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, inspect, update
from sqlalchemy.orm import Session

from imgfarm import contact_sheet as sheet_layout
from imgfarm.demo import SEASONS
from shared.keys import hash_api_key
from shared.models import ApiKey
from tests.photos import iou


def imgfarm(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "imgfarm", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_writes_four_images_on_the_embedded_stack(tmp_path):
    """`imgfarm demo` with no configuration: SQLite, local objects, filesystem broker; it
    saves the source, its 4 seasons, echo and inpaint renders, and a contact sheet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGFARM_")}
    result = subprocess.run(
        [sys.executable, "-m", "imgfarm", "demo", "--out", "out"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    paths = [tmp_path / line for line in result.stdout.split()]
    renders = [f"{name}-0.png" for name in (*SEASONS, "echo", "inpaint")]
    workflow = [
        "scene-0.png",
        "scene-mask.png",
        "scene-amazon-main.jpg",
        "scene-instagram-portrait.jpg",
    ]
    names = [
        "source.png",
        "source-mask.png",
        "cutout.png",
        *renders,
        *workflow,
        "contact-sheet.png",
        "contact-sheet.html",
    ]
    assert paths == [out / name for name in names]
    pixels = {name: np.asarray(Image.open(out / name).convert("RGB")) for name in names[:-2]}
    for name in ["source.png", *renders]:
        assert pixels[name].shape == (64, 64, 3), name
    source = pixels["source.png"]
    assert np.array_equal(pixels["echo-0.png"], source), "echo returns the source's structure"
    keep = pixels["source-mask.png"][..., 0] < 128  # black keeps (README, Inpainting)
    assert 0 < keep.sum() < keep.size
    inpaint = pixels["inpaint-0.png"]
    assert np.array_equal(inpaint[keep], source[keep]), "kept pixels are the source's, bit for bit"
    assert not np.array_equal(inpaint[~keep], source[~keep]), "the background is repainted"

    # The sheet's first row: the source, then each season, scaled up 3x with NEAREST.
    sheet = Image.open(out / "contact-sheet.png").convert("RGB")
    y = sheet_layout.GAP + 3 * sheet_layout.LINE
    for i, name in enumerate(["source.png", *renders[:4]]):
        x = sheet_layout.GAP + i * (sheet_layout.TILE + sheet_layout.GAP)
        tile = sheet.crop((x, y, x + sheet_layout.TILE, y + sheet_layout.TILE))
        assert np.array_equal(np.asarray(tile), pixels[name].repeat(3, 0).repeat(3, 1)), name
    page = (out / "contact-sheet.html").read_text()
    for prompt in SEASONS.values():
        assert prompt in page
    assert page.count('<img src="data:image/png;base64,') == 5 + 3 + 4

    # The product workflow: the cut-out kept in a new scene, then the marketplace images.
    found = pixels["scene-mask.png"][..., 0] < 128  # the worker's cut-out (mask "auto")
    assert iou(found, keep) >= 0.9, "the worker found the drawn product"
    cutout = np.asarray(Image.open(out / "cutout.png").convert("RGBA"))
    product = cutout[..., 3] == 255
    assert np.array_equal(product, found), "cutout.png is the source through the found mask"
    scene = pixels["scene-0.png"]
    assert np.array_equal(scene[product], source[product]), "the cut-out is kept exactly"
    assert not np.array_equal(scene[~product], source[~product]), "a new scene around it"
    assert pixels["scene-instagram-portrait.jpg"].shape == (1350, 1080, 3)
    main = pixels["scene-amazon-main.jpg"]
    assert main.shape == (1600, 1600, 3)
    # Pure white (255) around the product: every pixel farther than JPEG's 16 px blocks
    # from its bounding box; the product spans at least 85% of the frame.
    rows, cols = np.nonzero((main < 240).any(-1))  # the product, its light edges included
    assert max(np.ptp(rows) + 1, np.ptp(cols) + 1) >= 0.85 * 1600
    away = np.ones(main.shape[:2], bool)
    away[max(0, rows.min() - 16) : rows.max() + 17, max(0, cols.min() - 16) : cols.max() + 17] = 0
    assert away.any() and (main[away] == 255).all()
    for label in ("Cut-out", "New scene", "Amazon main image 1600×1600", "1080×1350"):
        assert label in page, label
    assert "preset steps per image on this CPU" in result.stderr
    assert 'href="inpaint-0.png"' in page and 'href="contact-sheet.png"' in page
    assert "imgfarm up" in result.stderr and "[models.sd-turbo]" in result.stderr
    assert (tmp_path / ".imgfarm" / "imgfarm.db").exists(), "embedded state lives in ./.imgfarm"


def test_migrate_then_keys_create_prints_a_working_key(
    settings_env, settings, session_factory, api_server
):
    result = imgfarm("migrate", env=settings_env)
    assert result.returncode == 0, result.stderr
    # The session fixture migrated already: it says so rather than nothing at all.
    assert "already at the latest schema" in result.stdout, result.stdout
    tables = set(inspect(create_engine(settings.database_url)).get_table_names())
    assert {"teams", "api_keys", "jobs", "uploads", "alembic_version"} <= tables

    result = imgfarm("keys", "create", "acme-cli", env=settings_env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("imf_")
    with session_factory() as s:
        stored = s.query(ApiKey).filter_by(key_hash=hash_api_key(key)).one()
        assert key not in (stored.key_hash, stored.prefix), "the key must never be stored in clear"
    response = httpx.get(f"{api_server}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_worker_refuses_unknown_model_clearly(settings_env):
    result = imgfarm("worker", "--model", "nope", env=settings_env, timeout=120)
    assert result.returncode != 0
    assert "unknown model 'nope'" in result.stderr


@pytest.mark.parametrize("bad", [{"IMGFARM_ENV": "prod"}, {"IMGFARM_LEASE_SECONDS": "x"}])
def test_bad_configuration_is_reported_not_a_traceback(bad, tmp_path):
    result = imgfarm("migrate", env={"IMGFARM_DATA_DIR": str(tmp_path), **bad}, timeout=60)
    assert result.returncode != 0
    assert "bad configuration" in result.stderr and "Traceback" not in result.stderr


def test_version_and_missing_key_say_what_to_do(tmp_path):
    env = {"IMGFARM_DATA_DIR": str(tmp_path)}
    version = imgfarm("--version", env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("imgfarm 0."), version.stdout
    bare = {k: v for k, v in os.environ.items() if k != "IMGFARM_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "imgfarm", "submit", str(tmp_path), "--prompt", "p"],
        env=bare,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "IMGFARM_API_KEY" in result.stderr and "keys create" in result.stderr


def test_embedded_farm_reuses_its_local_key(tmp_path):
    from imgfarm.embedded import LOCAL_TEAM, local_key
    from shared.migrate import upgrade
    from shared.settings import Settings
    from shared.teams import list_api_keys

    settings = Settings(data_dir=tmp_path)
    upgrade(settings.database_url)
    first = local_key(settings)
    assert local_key(settings) == first, "a second start reuses the saved key"
    assert (tmp_path / "local-api-key").stat().st_mode & 0o077 == 0, "only its owner reads it"
    engine = create_engine(settings.database_url)
    with Session(engine) as session:
        keys = list_api_keys(session, LOCAL_TEAM)
        assert [k.active for k in keys] == [True]
        session.execute(update(ApiKey).values(revoked_at=func.now()))
        session.commit()
    replaced = local_key(settings)
    assert replaced != first, "a revoked saved key is replaced, not reused"
    engine.dispose()


def test_command_lists_show_whole_sentences(tmp_path):
    env = {"IMGFARM_DATA_DIR": str(tmp_path), "COLUMNS": "80"}
    for group in ([], ["keys"], ["storage"], ["teams"]):
        listing = imgfarm(*group, "--help", env=env, timeout=60)
        assert listing.returncode == 0, listing.stderr
        commands = listing.stdout.split("Commands:", 1)[1]
        cut = [line for line in commands.splitlines() if line.rstrip().endswith("...")]
        assert not cut, f"cut off in 'imgfarm {' '.join(group)} --help': {cut}"
