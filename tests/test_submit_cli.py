"""``imgfarm submit``: inputs, the idempotency key, and real runs of the command against a
real ``imgfarm api`` (PostgreSQL, S3 endpoint) and the embedded stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import func, select

from imgfarm.cli import main
from imgfarm.embedded import EmbeddedStack
from imgfarm.submit import SubmitError, SubmitRequest, parse_prompt, read_images, read_prompts
from shared.models import Batch, Job
from shared.storage import storage_from_settings
from tests.factories import finish_jobs, png_bytes


def imgfarm_submit(*args: str, url: str, key: str, cwd: Path, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGFARM_")}
    env |= {"IMGFARM_API_URL": url, "IMGFARM_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "imgfarm", "submit", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def photo_folder(root: Path, names: tuple[str, ...] = ("red-shoe", "blue-mug")) -> Path:
    folder = root / "photos"
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        (folder / f"{name}.png").write_bytes(png_bytes(90, 70, color=(40 * i + 100, 60, 60)))
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


# --- inputs ----------------------------------------------------------------------------------


def test_folder_gives_skus_from_file_names_and_csv_gives_its_own(tmp_path):
    folder = photo_folder(tmp_path)
    images = read_images(folder)
    assert [(i.sku, i.path.name) for i in images] == [
        ("blue-mug", "blue-mug.png"),
        ("red-shoe", "red-shoe.png"),
    ]
    listing = tmp_path / "skus.csv"
    listing.write_text("sku,image_path\nSKU-1,photos/red-shoe.png\nSKU-2,photos/blue-mug.png\n")
    from_csv = read_images(listing)
    assert [i.sku for i in from_csv] == ["SKU-1", "SKU-2"]
    assert from_csv[0].digest == images[1].digest, "the content, not the path, identifies it"


@pytest.mark.parametrize(
    "content,message",
    [
        ("name,file\nA,photos/red-shoe.png\n", "sku,image_path"),
        ("sku,image_path\nA,photos/nope.png\n", "no file"),
        ("sku,image_path\nA,photos/red-shoe.png\nA,photos/blue-mug.png\n", "sku 'A'"),
        ("sku,image_path\n,photos/red-shoe.png\n", "required"),
    ],
)
def test_bad_csv_says_what_to_fix(tmp_path, content, message):
    photo_folder(tmp_path)
    listing = tmp_path / "skus.csv"
    listing.write_text(content)
    with pytest.raises(SubmitError, match=message):
        read_images(listing)


def test_skus_one_folder_on_macos_or_windows_are_refused_before_any_upload(tmp_path):
    """Linux keeps Red-Shoe.png and red-shoe.jpg apart; their folders would not be on a
    case-insensitive disk, nor would a composed and a decomposed é. Same rule as the api."""
    folder = photo_folder(tmp_path, ("Red-Shoe", "blue-mug"))
    (folder / "red-shoe.jpg").write_bytes((folder / "Red-Shoe.png").read_bytes())
    with pytest.raises(SubmitError, match="one folder on macOS and Windows") as raised:
        read_images(folder)
    assert "Red-Shoe.png" in str(raised.value) and "red-shoe.jpg" in str(raised.value)

    listing = tmp_path / "skus.csv"
    listing.write_text(
        "sku,image_path\ncaf\u00e9,photos/blue-mug.png\nCAFE\u0301,photos/Red-Shoe.png\n"
    )
    with pytest.raises(SubmitError, match="one folder on macOS and Windows"):
        read_images(listing)


@pytest.mark.parametrize(
    ("stem", "why"),
    [("CON", "device name"), ("lpt1", "device name"), ("a:b", "':'"), ("x.", "dot")],
)
def test_file_names_that_are_not_portable_skus_are_refused(tmp_path, stem, why):
    folder = photo_folder(tmp_path, (stem, "blue-mug"))
    with pytest.raises(SubmitError, match=f"sku {stem!r}.*{why}"):
        read_images(folder)


def test_csv_skus_that_are_not_portable_are_refused(tmp_path):
    photo_folder(tmp_path)
    listing = tmp_path / "skus.csv"
    listing.write_text('sku,image_path\nNUL.txt,photos/red-shoe.png\n"a|b",photos/blue-mug.png\n')
    with pytest.raises(SubmitError, match="'NUL.txt'.*device name"):
        read_images(listing)


def test_prompt_names_follow_the_same_rule():
    with pytest.raises(SubmitError, match="'Winter'.*one folder on macOS and Windows"):
        read_prompts(("winter=on snow", "Winter=on ice"), None)
    with pytest.raises(SubmitError, match="prompt name 'con'.*device name"):
        read_prompts(("con=on snow",), None)
    assert read_prompts(("winter=on snow", "summer=on sand"), None)[1]["name"] == "summer"


def test_prompts_from_options_and_files(tmp_path):
    assert parse_prompt("winter=a shoe on snow") == {"name": "winter", "prompt": "a shoe on snow"}
    assert parse_prompt("a shoe, f/2.8 = sharp") == {"prompt": "a shoe, f/2.8 = sharp"}
    text = tmp_path / "prompts.txt"
    text.write_text("# seasons\nspring=tulips\n\nsummer beach\n")
    table = tmp_path / "prompts.csv"
    table.write_text("name,prompt,negative_prompt\nautumn,leaves,people\nwinter,snow,\n")
    assert read_prompts(("x=y",), text) == [
        {"name": "x", "prompt": "y"},
        {"name": "spring", "prompt": "tulips"},
        {"prompt": "summer beach"},
    ]
    assert read_prompts((), table) == [
        {"name": "autumn", "prompt": "leaves", "negative_prompt": "people"},
        {"name": "winter", "prompt": "snow"},
    ]
    with pytest.raises(SubmitError, match="at least one"):
        read_prompts((), None)


def test_idempotency_key_follows_the_inputs_not_where_they_live(tmp_path):
    folder = photo_folder(tmp_path / "a")
    prompts = [{"name": "winter", "prompt": "snow"}]

    def key(source: Path, **changes) -> str:
        fields = {"prompts": prompts, "model": "tiny", "variants": 2, "params": {"seed": 1}}
        return SubmitRequest(images=read_images(source), **{**fields, **changes}).idempotency_key()

    copy = shutil.copytree(folder, tmp_path / "b" / "photos")
    assert key(folder) == key(copy)
    assert key(folder) != key(folder, variants=3)
    assert key(folder) != key(folder, prompts=[{"name": "winter", "prompt": "ice"}])
    assert key(folder) != key(folder, params={"seed": 2})
    (copy / "red-shoe.png").write_bytes(png_bytes(91, 70))
    assert key(folder) != key(copy), "changed pixels are another batch"


def test_zip_of_unequal_counts_is_refused_before_any_upload(tmp_path):
    request = SubmitRequest(
        images=read_images(photo_folder(tmp_path)),
        prompts=[{"prompt": "snow"}],
        model="tiny",
        params={"pairing": "zip"},
    )
    with pytest.raises(SubmitError, match="2 images .* and 1 prompts"):
        request.check_pairing()
    request.params = {}  # cross: any counts
    request.check_pairing()


# --- real runs ------------------------------------------------------------------------------


def test_pairing_zip_and_presets_reach_the_batch(api_server, new_key, session_factory, tmp_path):
    folder = photo_folder(tmp_path)  # blue-mug, red-shoe by file name
    args = [str(folder), "--prompt", "mug=on a desk", "--prompt", "shoe=on a trail"]
    args += ["--out", str(tmp_path / "out")]
    args += ["--pairing", "zip", "--preset", "instagram-portrait", "--preset", "web-hero"]
    env = {"IMGFARM_API_URL": api_server, "IMGFARM_API_KEY": new_key()}
    result = CliRunner().invoke(main, ["submit", *args], env=env)  # in process: no start-up
    assert result.exit_code == 0, result.output
    batch_id = uuid.UUID(result.stdout.strip().splitlines()[-1])
    with session_factory() as s:
        jobs = list(s.scalars(select(Job).where(Job.batch_id == batch_id)))
    assert {(j.sku, j.prompt_name) for j in jobs} == {("blue-mug", "mug"), ("red-shoe", "shoe")}
    assert all(j.params["presets"] == ["instagram-portrait", "web-hero"] for j in jobs)


def test_rerun_submits_once_then_wait_downloads_the_tree_and_resumes(
    api_server, new_key, session_factory, settings, tmp_path
):
    key = new_key()
    folder = photo_folder(tmp_path)
    args = [str(folder), "--prompt", "winter=on snow", "--prompt", "summer=on sand"]
    args += ["--variants", "2", "--seed", "5", "--out", "out"]

    first = imgfarm_submit(*args, url=api_server, key=key, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    batch_id = first.stdout.strip()
    said = " ".join(first.stderr.split())
    assert f"skipped {folder / 'notes.txt'}: not an image file" in said
    assert "again with --wait" in said and "already submitted" not in said
    again = imgfarm_submit(*args, url=api_server, key=key, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == batch_id
    assert f"already submitted: resuming batch {batch_id}" in " ".join(again.stderr.split())
    with session_factory() as s:
        team_id = s.get(Batch, uuid.UUID(batch_id)).team_id
        assert s.scalar(select(func.count()).where(Batch.team_id == team_id)) == 1
        jobs = list(s.scalars(select(Job).where(Job.batch_id == uuid.UUID(batch_id))))
    assert len(jobs) == 8 and {j.params["seed"] for j in jobs} != {5}

    # Play the worker, then follow and download.
    storage = storage_from_settings(settings)
    finish_jobs(session_factory, storage, [j.id for j in jobs], "succeeded")
    done = imgfarm_submit(*args, "--wait", url=api_server, key=key, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == batch_id
    out = tmp_path / "out"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [
        f"{sku}/{prompt}/{v}.png"
        for sku in ("blue-mug", "red-shoe")
        for prompt in ("summer", "winter")
        for v in (1, 2)
    ]
    with session_factory() as s:
        job = s.scalars(select(Job).where(Job.batch_id == uuid.UUID(batch_id))).first()
    saved = out / job.sku / job.prompt_name / f"{job.variant}.png"
    assert saved.read_bytes() == storage.get(job.outputs[0]["key"])

    # An interrupted download resumes: only the missing file is fetched again.
    saved.unlink()
    kept = out / "red-shoe" / "winter" / "1.png"
    if kept == saved:
        kept = out / "blue-mug" / "summer" / "2.png"
    before = kept.stat().st_mtime_ns
    resumed = imgfarm_submit(*args, "--wait", url=api_server, key=key, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 file(s) downloaded, 7 already" in " ".join(resumed.stderr.split())
    assert saved.exists() and kept.stat().st_mtime_ns == before


def test_cli_round_trip_on_the_embedded_stack_writes_the_folder_tree(tmp_path, monkeypatch):
    """No servers: SQLite, local storage (so multipart uploads), filesystem broker, a real
    dispatcher and tiny worker rendering every job."""
    for name in [k for k in os.environ if k.startswith("IMGFARM_")]:
        monkeypatch.delenv(name)
    photo_folder(tmp_path)
    listing = tmp_path / "skus.csv"
    listing.write_text("sku,image_path\nSHOE-1,photos/red-shoe.png\nMUG-7,photos/blue-mug.png\n")
    with EmbeddedStack(tmp_path / "farm") as stack:
        result = imgfarm_submit(
            str(listing),
            "--prompt",
            "winter=the product on a snowy porch",
            "--prompt",
            "the product on a summer beach",
            "--variants",
            "2",
            "--format",
            "webp",
            "--wait",
            "--timeout",
            "240",
            "--out",
            "out",
            url=stack.url,
            key=stack.api_key,
            cwd=tmp_path,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.webp"))
    assert files == [
        f"{sku}/{prompt}/{v}.webp"
        for sku in ("MUG-7", "SHOE-1")
        for prompt in ("the-product-on-a-summer-beach", "winter")
        for v in (1, 2)
    ]
    for path in files:
        image = Image.open(out / path)
        assert (image.format, image.size) == ("WEBP", (64, 64))
