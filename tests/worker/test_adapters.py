"""Brand style adapters on the real tiny pipeline, in process: random LoRAs saved as real
LoRA files (worker/tiny.py), loaded through diffusers' load_lora_weights (PEFT)."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from shared.adapters import adapter_key
from shared.batching import group_compatible
from shared.errors import PermanentRenderError
from shared.models import Job
from shared.registry import BUILTINS
from shared.schemas import AdapterUse
from shared.settings import Settings
from shared.storage import LocalStorage, sha256_hex
from tests.factories import png_bytes, queued_job
from worker.adapters import HOTSWAP_SLOT, pipeline_name
from worker.pipelines import load_model
from worker.render import prepare, render_batch, run_pipeline
from worker.tiny import TINY_LORA_RANK, save_tiny_lora

PARAMS = {
    "strength": 0.75,
    "steps": 2,
    "guidance_scale": 7.5,
    "width": 32,
    "height": 32,
    "output_format": "png",
}
TEAM = uuid.uuid4()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(BUILTINS["tiny"], Settings(data_dir=tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, bytes]:
    """Two tiny LoRA files (seeds 1 and 2), as a client would upload them."""
    root = tmp_path_factory.mktemp("loras")
    return {n: save_tiny_lora(root / n, seed).read_bytes() for n, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def storage(tmp_path_factory, loras):
    store = LocalStorage(tmp_path_factory.mktemp("objects"), "http://test", "secret")
    for data in loras.values():
        store.put(adapter_key(TEAM, sha256_hex(data)), data, "application/octet-stream")
    store.put("sources/photo", png_bytes(40, 48), "image/png")
    return store


def use(loras, name: str, scale: float = 1.0) -> dict:
    return {"name": f"brand-{name}", "scale": scale, "sha256": sha256_hex(loras[name])}


def make_job(seed: int, *adapters: dict, team: uuid.UUID = TEAM) -> Job:
    params = {**PARAMS, "seed": seed, "adapters": list(adapters)}
    return queued_job("tiny", "sources/photo", params, team=team, prompt="a red sneaker")


def render(model, storage, *jobs: Job) -> list[np.ndarray]:
    items = [prepare(model, storage, j) for j in jobs]
    return [np.asarray(i) for i in run_pipeline(model, items)]


def test_a_lora_changes_the_render_deterministically_and_scale_zero_is_none(model, storage, loras):
    (plain,) = render(model, storage, make_job(7))
    (with_a,) = render(model, storage, make_job(7, use(loras, "a")))
    (with_b,) = render(model, storage, make_job(7, use(loras, "b")))
    (plain_again,) = render(model, storage, make_job(7))  # after LoRA was on: off again
    (a_again,) = render(model, storage, make_job(7, use(loras, "a")))  # loaded, not reloaded
    (a_off,) = render(model, storage, make_job(7, use(loras, "a", 0.0)))
    assert not np.array_equal(plain, with_a)
    assert not np.array_equal(with_a, with_b), "two adapters, two styles"
    assert np.array_equal(plain, plain_again)
    assert np.array_equal(with_a, a_again)
    # Scale 0 adds lora_B(lora_A(x)) * 0 = 0 to every projection: exactly the plain render.
    assert np.array_equal(plain, a_off)
    assert model.adapters.loads == 2


def test_two_adapters_in_one_batch_render_in_separate_calls(model, storage, loras):
    jobs = [
        make_job(1, use(loras, "a")),
        make_job(2, use(loras, "b")),
        make_job(3, use(loras, "a")),
    ]
    groups = group_compatible([(j.id, j.params) for j in jobs], max_batch=8)
    assert groups == [[jobs[0].id, jobs[2].id], [jobs[1].id]]
    # Each group is one pipeline call, with its own adapter set: what each job's provenance
    # records, and pixels equal to rendering the job alone with that adapter.
    by_id = {j.id: j for j in jobs}
    for group in groups:
        members = [by_id[i] for i in group]
        results = render_batch(
            model, storage, [prepare(model, storage, j) for j in members], worker="w"
        )
        for job, result in zip(members, results, strict=True):
            assert result.provenance["batch_size"] == len(group)
            assert result.provenance["params"]["adapters"] == job.params["adapters"]
    (alone,) = render(model, storage, make_job(2, use(loras, "b")))
    (in_batch,) = render(model, storage, jobs[1])
    assert np.array_equal(alone, in_batch)


def test_least_recently_used_adapter_is_unloaded_past_the_limit(model, storage, loras):
    a, b = make_job(1, use(loras, "a")), make_job(1, use(loras, "b"))
    states = {j: prepare(model, storage, j).adapter_states for j in (a, b)}
    model.adapters.max_loaded = 1
    try:
        for job in (a, b):  # no render needed: what is loaded is the pipeline's state
            uses = [AdapterUse(**u) for u in job.params["adapters"]]
            model.adapters.activate(model.pipe, uses, states[job])
        expected = [pipeline_name(sha256_hex(loras["b"]))]
        assert model.adapters.loaded == expected
        assert {n for ns in model.pipe.get_list_adapters().values() for n in ns} == set(expected)
    finally:
        model.adapters.max_loaded = 8


def test_another_teams_adapter_is_not_found_and_a_tampered_file_is_refused(model, storage, loras):
    with pytest.raises(Exception, match="no object"):
        prepare(model, storage, make_job(1, use(loras, "a"), team=uuid.uuid4()))
    other = uuid.uuid4()
    storage.put(adapter_key(other, sha256_hex(loras["a"])), loras["b"], "x")
    with pytest.raises(PermanentRenderError, match="not the one the job pinned"):
        prepare(model, storage, make_job(1, use(loras, "a"), team=other))


def test_a_fused_unet_is_unfused_so_the_whole_lora_applies(model, storage, loras):
    """worker/accel.py fuses QKV on CUDA; here the same diffusers call is made on the CPU.
    Fused attention reads to_qkv (to_kv), not the to_q/to_k/to_v its LoRA layers wrap."""
    job = make_job(3, use(loras, "a"))
    (unfused,) = render(model, storage, job)
    (plain,) = render(model, storage, make_job(3))
    model.pipe.fuse_qkv_projections(unet=True, vae=True)
    (fused,) = render(model, storage, job)
    # The concatenated matmul rounds differently: a step of the 8-bit scale at most.
    assert np.abs(fused.astype(int) - unfused.astype(int)).max() <= 2
    assert not model.pipe.fusing_unet
    assert np.abs(plain.astype(int) - unfused.astype(int)).max() > 20


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal but for float rounding (a hotswap slot pads the LoRA's rank with zeros)."""
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_a_hotswapping_model_swaps_one_slot_and_renders_as_loading_by_name(
    model, storage, loras, tmp_path
):
    """options.lora_hotswap_rank: single adapters go through one slot whose weights are
    swapped in place (what keeps a compiled UNet from recompiling per adapter), rendering
    what the model without hotswap renders; several at once are loaded by name."""
    tiny = BUILTINS["tiny"]
    spec = dataclasses.replace(tiny, options={**tiny.options, "lora_hotswap_rank": TINY_LORA_RANK})
    hot = load_model(spec, Settings(data_dir=tmp_path))
    a, b_half = use(loras, "a"), use(loras, "b", 0.5)
    swapped = [render(hot, storage, make_job(7, *u))[0] for u in ([a], [b_half], [], [a])]
    slots = {n for names in hot.pipe.get_list_adapters().values() for n in names}
    assert slots == {HOTSWAP_SLOT} and hot.adapters.loads == 3, "a, b, then a swapped back"
    by_name = [render(model, storage, make_job(7, *u))[0] for u in ([a], [b_half], [])]
    for got, want in zip(swapped, [*by_name, by_name[0]], strict=True):
        assert close(got, want)
    assert not close(swapped[0], swapped[1]), "the swap changed the weights"
    assert np.array_equal(swapped[2], by_name[2]), "no adapter: LoRA off"
    (both,) = render(hot, storage, make_job(7, a, b_half))
    assert close(both, render(model, storage, make_job(7, a, b_half))[0])
    assert pipeline_name(a["sha256"]) in hot.adapters.loaded
