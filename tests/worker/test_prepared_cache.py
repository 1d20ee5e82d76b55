"""The worker's prepared-inputs cache: one decode and resize per source, size and kind,
bounded by pixel bytes, one computation for concurrent misses, no fetch on a hit, failures
not kept; and a hit's images equal a fresh prepare's, pixel for pixel, for every kind."""

from __future__ import annotations

import dataclasses
import functools
import threading
import uuid
from collections.abc import Callable

import pytest
from PIL import Image
from prometheus_client import REGISTRY

from shared.errors import PermanentRenderError
from shared.models import Job
from shared.registry import BUILTINS, ModelSpec
from shared.schemas import RenderParams
from shared.settings import Settings
from tests.photos import MARKS, UPRIGHT_SIZE, oriented_photo
from tests.services import wait_for
from tests.worker.test_kinds import cutout, half_mask, make_job, noise, png
from tests.worker.test_source_cache import (
    CountingStorage,
    echo_context,
    render_variants_of_one_photo,
)
from worker.metrics import prepared_cache_recorder
from worker.pipelines import LoadedModel, load_model
from worker.prepared_cache import PreparedCache, PreparedInputs, PreparedKey
from worker.render import RenderItem, prepare, prepared_key, run_pipeline
from worker.source_cache import CachingStorage


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Callable[[str], LoadedModel]:
    """Each built-in loaded once (not warmed), on first use."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"))
    return functools.cache(lambda alias: load_model(BUILTINS[alias], settings, warm=False))


@pytest.fixture
def inner(tmp_path):
    return CountingStorage(tmp_path / "objects", "http://test", "secret")


def key(name: str = "a", width: int = 4) -> PreparedKey:
    return PreparedKey(f"sources/t/{name}", None, width, 4, "crop", "img2img", None)


def inputs(width: int = 4) -> PreparedInputs:
    return PreparedInputs(source=Image.new("RGB", (width, 4)))


def variant(job: Job, seed: int = 2, *, keys: dict[str, str | None] | None = None, **params) -> Job:
    """Another job on the same source (and mask) with another seed (or ``keys``, ``params``)."""
    return Job(
        id=uuid.uuid4(),
        team_id=job.team_id,
        model=job.model,
        prompt=job.prompt,
        negative_prompt=None,
        params={**job.params, "seed": seed, **params},
        **{"source_key": job.source_key, "mask_key": job.mask_key, **(keys or {})},
    )


def pixels(item: RenderItem | PreparedInputs) -> list[tuple[str, tuple[int, int], bytes] | None]:
    images = (item.source, item.keep, item.control)
    return [None if i is None else (i.mode, i.size, i.tobytes()) for i in images]


# --- the cache on its own ----------------------------------------------------------------------


def test_entries_are_sized_by_their_pixel_bytes():
    rgb, mask = Image.new("RGB", (8, 4)), Image.new("L", (8, 4))
    assert PreparedInputs(source=rgb).nbytes == 8 * 4 * 3
    assert PreparedInputs(source=rgb, keep=mask, control=rgb).nbytes == 8 * 4 * (3 + 1 + 3)


def test_least_recently_used_entry_leaves_first_when_full():
    lookups: list[bool] = []
    cache = PreparedCache(2 * 48 + 10, on_lookup=lookups.append)  # two 4x4 RGB entries
    computed: list[str] = []

    def get(name: str, width: int = 4) -> PreparedInputs:
        def compute() -> PreparedInputs:
            computed.append(name)
            return inputs(width)

        return cache.get(key(name, width), compute)

    first = get("a")
    get("b")
    assert get("a") is first, "a hit returns the kept images"
    get("c")  # evicts b, the least recently used
    get("a")
    get("b")
    assert computed == ["a", "b", "c", "b"]
    assert lookups == [False, False, True, False, True, False]
    get("big", width=40)
    get("big", width=40)
    assert computed[-2:] == ["big", "big"], "an entry larger than the cache is not kept"


def gated_lookups(
    cache: PreparedCache, n: int, result: Callable[[], PreparedInputs]
) -> tuple[list[object], int]:
    """``n`` threads look up one key at once, the computation held until all have: what
    each got (images or the error it raised), and how many computations ran."""
    gate, calls = threading.Event(), []

    def compute() -> PreparedInputs:
        calls.append(1)
        assert gate.wait(30), "gate never opened"
        return result()

    outcomes: list[object] = []

    def lookup() -> None:
        try:
            outcomes.append(cache.get(key(), compute))
        except PermanentRenderError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=lookup) for _ in range(n)]
    for t in threads:
        t.start()
    wait_for(lambda: cache.hits + cache.misses == n, 30, f"all {n} lookups")
    gate.set()
    for t in threads:
        t.join(30)
    return outcomes, len(calls)


def test_concurrent_misses_prepare_once():
    cache = PreparedCache(1 << 20)
    results, computations = gated_lookups(cache, 8, inputs)
    assert computations == 1 and len(results) == 8
    assert all(r is results[0] for r in results), "every job shares the one result"
    assert (cache.hits, cache.misses) == (7, 1)


def test_a_failed_preparation_fails_its_waiters_and_is_not_kept():
    cache = PreparedCache(1 << 20)

    def broken() -> PreparedInputs:
        raise PermanentRenderError("source image cannot be decoded")

    errors, computations = gated_lookups(cache, 3, broken)
    assert computations == 1 and len(errors) == 3
    assert all(isinstance(e, PermanentRenderError) for e in errors)
    assert cache.get(key(), inputs).source.size == (4, 4), "the next lookup computes again"


def test_zero_bytes_turns_the_prepared_cache_off():
    cache = PreparedCache(0)
    first, second = cache.get(key(), inputs), cache.get(key(), inputs)
    assert first is not second and (cache.hits, cache.misses) == (0, 0)


def test_lookups_are_counted_per_model_and_result():
    model = f"m-{uuid.uuid4().hex[:6]}"
    record = prepared_cache_recorder(model)
    for hit in (False, True, True):
        record(hit)
    sample = "imgfarm_worker_prepared_cache_lookups_total"
    assert REGISTRY.get_sample_value(sample, {"model": model, "result": "hit"}) == 2
    assert REGISTRY.get_sample_value(sample, {"model": model, "result": "miss"}) == 1


# --- keys: everything the prepared pixels depend on ------------------------------------------


def key_of(spec: ModelSpec, job: Job) -> PreparedKey | None:
    return prepared_key(spec, job, RenderParams(**job.params))


def test_size_mode_kind_mask_and_thresholds_make_different_keys(inner):
    job = make_job(inner, "tiny-inpaint", b"png", mask=b"mask")
    inpaint, img2img, canny = (BUILTINS[a] for a in ("tiny-inpaint", "tiny", "tiny-controlnet"))
    other_canny = dataclasses.replace(canny, options={**canny.options, "canny_low": 50})
    keys = [
        key_of(inpaint, job),
        key_of(inpaint, variant(job, width=72)),
        key_of(inpaint, variant(job, height=72)),
        key_of(inpaint, variant(job, resize_mode="pad")),
        key_of(inpaint, variant(job, keys={"mask_key": None})),
        key_of(img2img, job),
        key_of(canny, job),
        key_of(other_canny, job),
    ]
    assert None not in keys and len(set(keys)) == len(keys)
    assert key_of(inpaint, variant(job, seed=9, steps=3, strength=0.5)) == keys[0], (
        "seed, steps and strength do not change the prepared pixels"
    )
    assert key_of(img2img, variant(job, keys={"mask_key": None})) == keys[5], (
        "img2img never reads the mask"
    )
    assert keys[6].canny == (100, 200) and keys[7].canny == (50, 200)


def test_keys_that_are_not_content_addressed_are_not_cached(inner):
    job = make_job(inner, "tiny-inpaint", b"png", mask=b"mask")
    inpaint, img2img = BUILTINS["tiny-inpaint"], BUILTINS["tiny"]
    assert key_of(inpaint, variant(job, keys={"source_key": "outputs/t/j/0.png"})) is None
    assert key_of(inpaint, variant(job, keys={"mask_key": "outputs/t/j/0.png"})) is None
    assert key_of(img2img, variant(job, keys={"mask_key": "outputs/t/j/0.png"})) is not None, (
        "a mask img2img never reads does not keep its job out of the cache"
    )


# --- prepare with the cache ------------------------------------------------------------------


def test_a_hit_skips_the_fetch_but_still_checks_the_jobs_params(models, inner):
    model, cache = models("tiny"), PreparedCache(1 << 20)
    job = make_job(inner, "tiny", png(noise(80, 96)))
    first = prepare(model, inner, job, cache)
    again = prepare(model, inner, variant(job, seed=7), cache)
    assert inner.gets[job.source_key] == 1, "the hit fetched nothing"
    assert again.source is first.source and again.params.seed == 7
    with pytest.raises(PermanentRenderError, match="no denoising step"):
        prepare(model, inner, variant(job, steps=1, strength=0.5), cache)
    assert (cache.hits, cache.misses) == (1, 1), "a job refused by its params looks up nothing"


def test_a_source_that_cannot_be_decoded_is_not_cached(models, inner):
    model, cache = models("tiny"), PreparedCache(1 << 20)
    job = make_job(inner, "tiny", b"not an image")
    for seed in (1, 2):
        with pytest.raises(PermanentRenderError, match="cannot be decoded"):
            prepare(model, inner, variant(job, seed=seed), cache)
    assert inner.gets[job.source_key] == 2 and cache.misses == 2, "computed again, failed again"


def test_size_and_resize_mode_are_prepared_apart(models, inner):
    model, cache = models("tiny"), PreparedCache(1 << 20)
    job = make_job(inner, "tiny", png(noise(80, 96)))
    crop = prepare(model, inner, job, cache)
    pad = prepare(model, inner, variant(job, resize_mode="pad"), cache)
    small = prepare(model, inner, variant(job, width=32, height=32), cache)
    assert cache.misses == 3 and len({crop.source.tobytes(), pad.source.tobytes()}) == 2
    assert small.source.size == (32, 32)


@pytest.mark.parametrize("mode", ["fit", "crop"])
def test_a_rotated_phone_photo_is_prepared_upright_and_its_mask_lines_up(mode, models, inner):
    """Stored 32x48 with orientation 6 (phone held upright), seen 48x32; the mask is drawn
    on it as seen (white, repaint, on the left). Both are turned before any size check or
    resize, and a hit serves the same upright pixels."""
    model, cache = models("tiny-inpaint"), PreparedCache(1 << 20)
    mask = png(half_mask(*UPRIGHT_SIZE))
    job = make_job(inner, "tiny-inpaint", oriented_photo(6), mask=mask, resize_mode=mode)
    job = variant(job, width=UPRIGHT_SIZE[0], height=UPRIGHT_SIZE[1])
    first = prepare(model, inner, job, cache)
    hit = prepare(model, inner, variant(job, seed=9), cache)
    assert hit.source is first.source and first.source.size == UPRIGHT_SIZE
    for (x, y), colour in MARKS.items():
        pixel = first.source.getpixel((x, y))
        assert all(abs(a - b) <= 12 for a, b in zip(pixel, colour, strict=True)), (x, y, pixel)
    assert first.keep is not None
    assert first.keep.getpixel((5, 16)) == 0 and first.keep.getpixel((42, 16)) == 255


JOBS = {
    "tiny": dict(source=noise(80, 96)),
    "tiny-inpaint": dict(source=noise(96, 80, seed=5), mask=half_mask(96, 80)),
    "tiny-inpaint (alpha)": dict(source=cutout(64, 64)),
    "tiny-controlnet": dict(source=cutout(64, 64)),
}


@pytest.mark.parametrize("case", list(JOBS))
def test_a_hit_equals_a_fresh_prepare_and_rendering_leaves_it_unchanged(case, models, inner):
    alias = case.split()[0]
    model, cache = models(alias), PreparedCache(1 << 20)
    images = JOBS[case]
    mask = png(images["mask"]) if "mask" in images else None
    job = make_job(inner, alias, png(images["source"]), mask=mask)
    prepare(model, inner, job, cache)
    hit = prepare(model, inner, variant(job, seed=5), cache)
    fresh = prepare(model, inner, variant(job, seed=5))
    assert cache.hits == 1 and pixels(hit) == pixels(fresh)
    assert (hit.keep is not None) == (alias == "tiny-inpaint")
    assert (hit.control is not None) == (alias == "tiny-controlnet")
    # The images are shared by every job that hits: the render must not change them.
    before = pixels(hit)
    run_pipeline(model, [hit, prepare(model, inner, variant(job, seed=6), cache)])
    assert pixels(hit) == before


def test_a_batch_of_variants_of_one_photo_is_prepared_once(
    tmp_path, inner, settings, session_factory
):
    storage, prepared = CachingStorage(inner, 1 << 20), PreparedCache(1 << 20)
    ctx = echo_context(tmp_path, settings, session_factory, storage, prepared=prepared)
    key = render_variants_of_one_photo(ctx, inner, session_factory)
    assert (prepared.misses, prepared.hits) == (1, 5), "six jobs, one prepare"
    assert storage.misses + storage.hits == 1, "the hits never asked for the bytes"
    assert inner.gets[key] == 1
