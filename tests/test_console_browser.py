"""The console in headless Chromium on the embedded stack (SQLite, local storage, the echo
and tiny models): sign in (a wrong key first), a batch made through the form from two photos (one
dropped, one picked) and three prompts, thumbnails arriving live, review by keyboard, a
rerender, a job page, the zip, an XSS prompt shown as text, nothing fetched from outside,
another team's batch as not-found, tiny's noise outputs flagged for review, and a zipped
batch's grid and a job page with its found mask and a marketplace preset output.
Screenshots: test-artifacts/console-*.png.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
import skimage.data
from PIL import Image

from imgfarm.embedded import EmbeddedStack, issue_key
from shared.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
XSS = "<img src=x onerror=alert(1)>"
PROMPTS = f"beach=the product on a sunny beach\nsnow=the product on a snowy porch\nxss={XSS}"

pytestmark = pytest.mark.integration


def photo(path: Path, pixels) -> Path:  # noqa: ANN001 - a numpy array
    Image.fromarray(pixels).resize((192, 128)).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory):
    """api, dispatcher, an echo and a tiny worker as processes, on SQLite and a local folder
    (tiny loads while the echo flow runs)."""
    with pytest.MonkeyPatch.context() as env:
        for name in [k for k in os.environ if k.startswith("IMGFARM_")]:
            env.delenv(name)
        stack = EmbeddedStack(tmp_path_factory.mktemp("console") / "farm", models=("echo", "tiny"))
        stack.webhooks = False
        with stack:
            yield stack


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run .ci/services (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


class Visit:
    """A fresh tab at 1280x800 that records every request and any dialog."""

    def __init__(self, browser, farm: EmbeddedStack) -> None:  # noqa: ANN001
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.farm = farm

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)

    def sign_in(self, key: str) -> None:
        self.page.fill("#key", key)
        self.page.click("form.signin button[type=submit]")

    def outside(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.farm.url, "blob:", "data:"))]


def drop_file(page, path: Path, target: str) -> None:  # noqa: ANN001
    """Drag ``path`` from the desktop onto ``target`` (a real DataTransfer with a File)."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return dt;
        }""",
        [path.name, data],
    )
    page.dispatch_event(target, "drop", {"dataTransfer": transfer})


def test_a_batch_from_the_form_through_review_to_the_zip(farm, browser, tmp_path):
    from playwright.sync_api import expect

    visit = Visit(browser, farm)
    page = visit.page
    # 1. sign in: a wrong key is refused in words
    page.goto(f"{farm.url}/")
    visit.sign_in("not-a-key")
    expect(page.get_by_role("alert")).to_contain_text("That key was not accepted")
    visit.shot("signin")
    visit.sign_in(farm.api_key)
    expect(page.locator("h1")).to_have_text("Batches")

    # 2. a new batch: one photo dropped, one picked; three prompts, one of them markup
    page.click("text=New batch")
    expect(page).to_have_url(f"{farm.url}/batches/new")
    drop_file(page, photo(tmp_path / "MUG-7.jpg", skimage.data.coffee()), "#drop")
    page.set_input_files("#files", str(photo(tmp_path / "CAT-1.jpg", skimage.data.chelsea())))
    page.fill("#prompts", PROMPTS)
    page.select_option("#model", "echo")
    page.select_option("#size", "768x768")  # the model's allowed sizes, its default first
    page.fill("#name", "Summer catalogue")
    expect(page.locator("#preview")).to_have_text("→ 2 images × 3 prompts × 1 variants = 6 jobs")
    # zip pairs image i with prompt i: 2 images and 3 prompts cannot be sent that way
    page.select_option("#pairing", "zip")
    expect(page.locator("#preview")).to_contain_text("needs as many images as prompts")
    expect(page.locator("#submit")).to_be_disabled()
    page.select_option("#pairing", "cross")
    page.check("#preset-instagram-portrait")  # presets from GET /v1/presets
    expect(page.locator("#preview")).to_have_text(
        "→ 2 images × 3 prompts × 1 variants = 6 jobs (+ 1 preset outputs each)"
    )
    page.uncheck("#preset-instagram-portrait")
    expect(page.locator("#submit")).to_be_enabled(timeout=30_000)  # both uploads done
    expect(page.locator(".files progress").nth(0)).to_have_attribute("value", "100")
    # the farm's own estimate (a dry run): nothing rendered yet, so no GPU figure to give
    expect(page.locator("#estimate")).to_have_text("→ 6 jobs · GPU-s unknown yet")
    visit.shot("new-batch")
    submitted = time.monotonic()
    page.click("#submit")

    # 3. the batch page fills in live: a thumbnail for every job, no reload
    expect(page).to_have_url(re.compile(rf"{farm.url}/batches/[0-9a-f-]{{36}}$"))
    batch_url = page.url
    page.wait_for_selector("a.cell img[data-loaded]", timeout=60_000)
    first_thumbnail = time.monotonic() - submitted
    expect(page.locator("a.cell img[data-loaded]")).to_have_count(6, timeout=60_000)
    expect(page.locator("td.source img[data-loaded]")).to_have_count(2)
    print(f"console: first thumbnail {first_thumbnail:.2f} s after submit")

    # 4. the prompt written as markup is text: in the tooltip and alt, never an element
    xss_cell = page.locator("a.cell", has=page.locator(f'img[alt*="{XSS}"]'))
    expect(xss_cell).to_have_count(2)
    assert XSS in (xss_cell.first.get_attribute("title") or "")
    assert page.locator("img[src='x']").count() == 0

    # 5. review from the keyboard: a approves (and moves on), r rejects; the counts follow
    counts = page.locator("#counts")
    expect(counts.locator("[data-state=passed] b")).to_have_text("6")
    page.locator("a.cell").first.focus()
    page.keyboard.press("a")
    expect(counts.locator("[data-state=approved] b")).to_have_text("1")
    page.keyboard.press("ArrowRight")
    rejected_id = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("r")
    expect(counts.locator("[data-state=rejected] b")).to_have_text("1")
    expect(counts.locator("[data-state=passed] b")).to_have_text("4")
    with visit.context.expect_page() as full_size:  # f: the output at full size
        page.keyboard.press("f")
    assert full_size.value.url.startswith(f"{farm.url}/v1/files/outputs/")
    full_size.value.close()
    visit.shot("batch")

    # 6. rerender the rejected one: the same cell renders again and gets a new thumbnail
    rejected = page.locator(f'a.cell[data-id="{rejected_id}"]')
    old_thumb = rejected.locator("img").get_attribute("data-thumb")
    page.click("#rerender-rejected")
    expect(rejected).to_have_attribute("data-state", "passed", timeout=60_000)
    expect(rejected.locator("img[data-loaded]")).to_have_count(1, timeout=30_000)
    assert rejected.locator("img").get_attribute("data-thumb") != old_thumb
    expect(counts.locator("[data-state=rejected]")).to_have_count(0)

    # 7. filters: by review state (kept in the URL), by SKU
    page.select_option("#f-review", "approved")
    expect(page.locator("a.cell:not(.filtered)")).to_have_count(1)
    assert "review=approved" in page.url
    page.select_option("#f-review", "")
    page.fill("#f-sku", "mug")
    expect(page.locator("tbody tr:not([hidden])")).to_have_count(1)
    page.fill("#f-sku", "")
    page.set_viewport_size({"width": 820, "height": 1180})  # a tablet held upright
    visit.shot("batch-tablet")
    page.set_viewport_size({"width": 1280, "height": 800})

    # 8. the zip of every output, fetched with the key and saved by the browser
    page.click("details.menu summary")
    with page.expect_download() as download:
        page.click("text=Zip: all outputs")
    saved = tmp_path / "batch.zip"
    download.value.save_as(saved)
    names = zipfile.ZipFile(saved).namelist()
    assert len([n for n in names if n.endswith(".png")]) == 6, names

    # 9. one job, opened with enter: output beside source, the markup prompt as text
    xss_cell.first.focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"{farm.url}/jobs/[0-9a-f-]{{36}}$"))
    expect(page.locator(".prompt")).to_contain_text(XSS)
    expect(page.get_by_text("Full size (768×768, image/png)")).to_be_visible()  # the form's size
    assert page.locator("img[src='x']").count() == 0
    for img in (page.locator(".stage img.source"), page.locator(".stage img.output")):
        expect(img).to_have_js_property("complete", True)
        assert img.evaluate("i => i.naturalWidth") > 0
    labels = page.locator("table.facts", has=page.locator("caption", has_text="Labels"))
    expect(labels).to_contain_text("no AI claim")  # echo resizes: its XMP claims no AI type
    expect(labels).to_contain_text("not signed (XMP only)")
    expect(page.locator("table.facts", has_text="Provenance")).to_contain_text("echo")
    source_img = page.locator(".stage img.source")
    photo_src = source_img.get_attribute("src")
    page.click("button:has-text('edges')")  # the source's canny edges in its place
    expect(source_img).not_to_have_attribute("src", photo_src or "")
    page.click("text=swipe")
    page.keyboard.press("r")  # the grid's keys work on the job page too
    expect(page.locator(".history")).to_contain_text("now: rejected by key")
    visit.shot("job")
    page.go_back()
    expect(page).to_have_url(batch_url)
    expect(page.locator("a.cell img[data-loaded]")).to_have_count(6)
    page.goto(f"{farm.url}/")
    expect(page.locator("li.batch")).to_have_count(1)
    expect(page.locator("li.batch .name")).to_have_text("Summer catalogue")
    visit.shot("batches")

    assert visit.dialogs == []  # the markup never ran
    assert visit.outside() == [], visit.outside()  # nothing from outside the farm
    visit.context.close()


def upload_photo(farm: EmbeddedStack, key: str, pixels) -> str:  # noqa: ANN001 - numpy
    image = io.BytesIO()
    Image.fromarray(pixels).resize((64, 64)).save(image, "PNG")
    answer = httpx.post(
        f"{farm.url}/v1/uploads",
        headers={"Authorization": f"Bearer {key}"},
        files={"files": ("a.png", image.getvalue())},
    )
    return answer.json()["uploads"][0]["id"]


def test_tiny_noise_is_flagged_for_review_and_kept_out_of_approve_all_passed(farm, browser):
    """The random-weight model's outputs drift from their source: the grid marks them
    needs review with their scores in the tooltip, and "Approve all passed" leaves them."""
    from playwright.sync_api import expect

    headers = {"Authorization": f"Bearer {farm.api_key}"}
    body = {
        "model": "tiny",
        "images": [upload_photo(farm, farm.api_key, skimage.data.chelsea())],
        "prompts": ["a cat on a beach"],
        "variants": 2,
        "metadata": {"name": "Noise check"},
    }
    batch = httpx.post(f"{farm.url}/v1/batches", headers=headers, json=body)
    assert batch.status_code == 202, batch.text
    visit = Visit(browser, farm)
    page = visit.page
    page.goto(f"{farm.url}/batches/{batch.json()['id']}")
    visit.sign_in(farm.api_key)
    flagged = page.locator("a.cell[data-state=needs_review]")
    expect(flagged).to_have_count(2, timeout=120_000)  # tiny may still be loading
    expect(page.locator("#counts [data-state=needs_review] b")).to_have_text("2")
    assert "structure" in (flagged.first.get_attribute("title") or "")
    with page.expect_response(lambda r: r.url.endswith("/review")) as answer:
        page.click("#approve-passed")
    assert answer.value.ok
    expect(page.locator("#counts [data-state=approved]")).to_have_count(0)
    expect(flagged).to_have_count(2)
    visit.shot("batch-needs-review")
    assert visit.dialogs == [] and visit.outside() == []
    visit.context.close()


def test_a_zipped_batch_and_a_job_page_with_its_found_mask_and_preset_output(farm, browser):
    """A zipped batch's grid has a column per job of the row, each cell naming its prompt.
    Its model has no worker here: the test plays the worker's part (tests/factories.py
    finish_jobs), then adds what a cut-out job's worker records: the mask it found
    (params.cutout) and an instagram-portrait output beside the render. The job page shows
    both, named."""
    from playwright.sync_api import expect
    from sqlalchemy import select, update

    from shared.db import make_engine, make_session_factory
    from shared.models import Job
    from shared.storage import storage_from_settings
    from tests.factories import finish_jobs

    headers = {"Authorization": f"Bearer {farm.api_key}"}
    body = {
        "model": "tiny-controlnet",
        "images": [
            {"image": upload_photo(farm, farm.api_key, skimage.data.coffee()), "sku": "MUG"},
            {"image": upload_photo(farm, farm.api_key, skimage.data.chelsea()), "sku": "CAT"},
        ],
        "prompts": [{"name": "desk", "prompt": "a mug"}, {"name": "sofa", "prompt": "a cat"}],
        "pairing": "zip",
    }
    batch = httpx.post(f"{farm.url}/v1/batches", headers=headers, json=body)
    assert batch.status_code == 202, batch.text
    batch_id = batch.json()["id"]
    settings = Settings(data_dir=farm.data_dir, public_url=farm.url)
    storage = storage_from_settings(settings)
    mask, portrait = io.BytesIO(), io.BytesIO()
    found = Image.new("L", (64, 64), 255)  # white: repaint
    found.paste(0, (16, 16, 48, 48))  # black: the product, kept
    found.save(mask, "PNG")
    Image.new("RGB", (108, 135), (200, 120, 40)).save(portrait, "JPEG")
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as s:
        ids = list(s.scalars(select(Job.id).where(Job.batch_id == uuid.UUID(batch_id))))
    finish_jobs(make_session_factory(engine), storage, ids)
    with make_session_factory(engine)() as s:
        job = s.scalars(
            select(Job).where(Job.batch_id == uuid.UUID(batch_id), Job.sku == "MUG")
        ).one()
        mask_key = f"sources/{job.team_id}/found-mask.png"
        preset_key = f"outputs/{job.team_id}/{job.id}/0-instagram-portrait.jpg"
        storage.put(mask_key, mask.getvalue(), "image/png")
        storage.put(preset_key, portrait.getvalue(), "image/jpeg")
        made = {"key": preset_key, "width": 108, "height": 135, "content_type": "image/jpeg"}
        s.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(
                mask_key=mask_key,
                params={**job.params, "cutout": "studio"},
                outputs=[*job.outputs, {**made, "preset": "instagram-portrait"}],
            )
        )
        s.commit()
    engine.dispose()

    visit = Visit(browser, farm)
    page = visit.page
    page.goto(f"{farm.url}/batches/{batch_id}")
    visit.sign_in(farm.api_key)
    expect(page.locator("a.cell img[data-loaded]")).to_have_count(2)
    assert page.locator(".grid thead th").all_inner_texts() == ["SKU", "source", "job 1"]
    expect(page.locator("tr[data-sku=MUG] a.cell .cap")).to_have_text("desk")
    expect(page.locator("tr[data-sku=CAT] a.cell .cap")).to_have_text("sofa")
    page.click("tr[data-sku=MUG] a.cell")
    expect(page).to_have_url(f"{farm.url}/jobs/{job.id}")
    caption = page.locator(".mask-block figcaption")
    expect(caption).to_contain_text("Mask found automatically (studio cut-out)")
    mask_img = page.locator(".mask-block img")
    expect(mask_img).to_have_js_property("complete", True)
    assert mask_img.evaluate("i => i.naturalWidth") == 64
    assert caption.locator("a").get_attribute("href").startswith(f"{farm.url}/v1/files/")
    made_fig = page.locator(".presets figure[data-preset=instagram-portrait]")
    expect(made_fig.locator("figcaption")).to_have_text("instagram-portrait 108×135 · image/jpeg")
    expect(made_fig.locator("img")).to_have_js_property("complete", True)
    assert made_fig.locator("img").evaluate("i => i.naturalWidth") == 108
    expect(page.locator(".compare button", has_text="mask")).to_have_count(1)
    visit.shot("job-mask-presets")
    assert visit.dialogs == [] and visit.outside() == []
    visit.context.close()


def test_another_teams_batch_reads_not_found(farm, browser, tmp_path):
    from playwright.sync_api import expect

    other = issue_key(Settings(data_dir=farm.data_dir, public_url=farm.url), "other-team")
    headers = {"Authorization": f"Bearer {other}"}
    image = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((64, 64)).save(image, "PNG")
    upload = httpx.post(
        f"{farm.url}/v1/uploads", headers=headers, files={"files": ("a.png", image.getvalue())}
    ).json()["uploads"][0]
    body = {"model": "echo", "images": [upload["id"]], "prompts": ["theirs"]}
    theirs = httpx.post(f"{farm.url}/v1/batches", headers=headers, json=body).json()["id"]

    visit = Visit(browser, farm)
    visit.page.goto(f"{farm.url}/batches/{theirs}")
    visit.sign_in(farm.api_key)
    expect(visit.page.locator("h1")).to_have_text("Not found")
    expect(visit.page.get_by_role("alert")).to_contain_text("No batch here for this key's team")
    visit.shot("not-found")
    assert visit.outside() == []
    visit.context.close()
