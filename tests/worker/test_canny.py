"""ControlNet canny conditioning is OpenCV's ``Canny`` (what the weights were trained on),
on real photos, with each alias's thresholds."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

from shared.canny import canny_edges
from shared.registry import BUILTINS
from shared.schemas import RenderParams
from worker.render import build_inputs, canny_thresholds

# Photos that ship inside scikit-image's wheel: a portrait, food, fur, a night sky and metal.
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]


def photo(name: str, size: int = 512) -> Image.Image:
    return Image.fromarray(getattr(photos, name)()).convert("RGB").resize((size, size))


@pytest.mark.parametrize("name", PHOTOS)
def test_edges_are_opencvs_canny_of_the_rgb_photo(name):
    img = photo(name)
    # As ControlNet's annotator, controlnet_aux and diffusers' examples call it.
    expected = cv2.Canny(np.asarray(img), 100, 200)
    edges = np.asarray(canny_edges(img))
    assert edges.shape == (512, 512, 3), "three equal channels, as ControlNets take them"
    for channel in range(3):
        assert np.array_equal(edges[..., channel], expected)
    assert expected.any()


def test_each_alias_conditions_on_its_own_thresholds():
    spec = BUILTINS["tiny-controlnet"]
    loose = dataclasses.replace(spec, options={**spec.options, "canny_low": 30, "canny_high": 60})
    assert canny_thresholds(spec) == (100, 200) and canny_thresholds(loose) == (30, 60)
    params = RenderParams(
        strength=1.0,
        steps=2,
        guidance_scale=0.0,
        seed=1,
        width=256,
        height=256,
        output_format="png",
        resize_mode="fit",
    )
    img = photo("chelsea", 256)
    default = build_inputs(spec, params, img, None)
    looser = build_inputs(loose, params, img, None)
    source = np.asarray(default.source)
    assert default.control is not None and looser.control is not None
    assert np.array_equal(np.asarray(default.control)[..., 0], cv2.Canny(source, 100, 200))
    assert np.array_equal(np.asarray(looser.control)[..., 0], cv2.Canny(source, 30, 60))
    assert (np.asarray(looser.control) > 0).sum() > (np.asarray(default.control) > 0).sum()


def test_thresholds_out_of_order_are_refused_not_swapped():
    with pytest.raises(ValueError, match="low <= high"):
        canny_edges(photo("coffee", 64), 200, 100)
