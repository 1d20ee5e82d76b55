"""Photos as phones write them, through ``POST /v1/jobs`` over the real app: a rotated photo
and its mask compared upright, slivers refused naming their field, the pixel limit's 413
quoting ours."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from api.params import check_inpaint_inputs
from shared.errors import InvalidRequest
from shared.models import Job
from shared.registry import BUILTINS
from tests.factories import bomb_png, data_url, job_body
from tests.photos import UPRIGHT_SIZE, encoded, oriented_photo, sliver_png

INPAINT = BUILTINS["tiny-inpaint"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job_count(session_factory) -> int:
    with session_factory() as s:
        return s.scalar(select(func.count()).select_from(Job))


def upright_mask(size: tuple[int, int]) -> bytes:
    """A mask drawn over the photo as it is seen: no EXIF, white (repaint) on the left."""
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    pixels[:, : size[0] // 2] = 255
    return encoded(Image.fromarray(pixels), "PNG")


def test_a_rotated_photo_takes_the_mask_drawn_on_it_upright():
    # Stored 32x48 with "rotate 90° clockwise" (6): seen, and rendered, as 48x32.
    photo = oriented_photo(6)
    check_inpaint_inputs(INPAINT, photo, upright_mask(UPRIGHT_SIZE))
    # A mask made from the same camera file carries the same tag: compared upright too.
    mask_pixels = np.zeros((UPRIGHT_SIZE[1], UPRIGHT_SIZE[0], 3), dtype=np.uint8)
    mask_pixels[:, : UPRIGHT_SIZE[0] // 2] = 255
    check_inpaint_inputs(INPAINT, photo, oriented_photo(6, "PNG", pixels=mask_pixels))
    with pytest.raises(InvalidRequest) as e:
        check_inpaint_inputs(INPAINT, photo, upright_mask((32, 48)))  # the stored size
    assert e.value.field == "mask" and "48x32" in e.value.message


@pytest.mark.parametrize("field", ["image", "mask"])
@pytest.mark.parametrize("size", [(65536, 64), (16_777_216, 1)])
def test_a_sliver_is_refused_at_submit_naming_its_field(
    client, new_key, session_factory, field, size
):
    """A 12 KB 65536x64 PNG is 4 Mpx (within the pixel limit) and cost the worker 1.2 GB."""
    body = job_body(model="tiny-inpaint", mask=data_url(upright_mask((96, 80))))
    body[field] = data_url(sliver_png(*size))
    before = job_count(session_factory)
    response = client.post("/v1/jobs", json=body, headers=auth(new_key()))
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == [field], errors
    assert "aspect ratio" in response.json()["detail"]
    assert job_count(session_factory) == before


def test_the_pixel_limit_413_quotes_our_limit(client, new_key, settings):
    # 400 Mpx: over Pillow's own bomb limit too, whose message used to answer instead.
    response = client.post(
        "/v1/jobs", json=job_body(image=data_url(bomb_png())), headers=auth(new_key())
    )
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert f"the limit is {settings.max_image_pixels}" in detail, detail
    assert "89478485" not in detail and "178956970" not in detail
