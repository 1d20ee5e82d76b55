"""Cut-outs for ``mask: "auto"``: the worker finds the product's mask in its source.

Two methods (``RenderParams.cutout``, resolved by the api from the request, else the
model's ``options.cutout``, else ``studio``):

- ``studio``: a product on a plain light background, by OpenCV and no weights. The
  background colour is the median of a band along the border (robust to a product that
  touches an edge); a pixel is background when its CIELAB distance to that colour, with
  lightness weighted down so a soft grey shadow stays background, is within a threshold
  taken from the border's own spread (an off-white gradient or JPEG noise widens it). An
  opening removes specks, a closing bridges thin gaps, then the largest component is the
  product (with any other at least a quarter of its area: a pair of shoes), holes filled.
- ``segmentation``: a salient-object network through rembg's own custom-model sessions
  (U²-Net, IS-Net/DIS, BEN and BiRefNet ONNX files). The file is the registry's
  ``options.segmentation_model``; rembg refuses paths outside its models folder
  (``REMBG_HOME``, default ``~/.rembg``) and nothing is ever downloaded: a custom session
  only opens the file it is given. Sessions are cached per file for the worker's life.

Both give the stored mask in the convention of a given mask (worker/masks.py): mode L,
the source's size, white = repaint (the background), black = keep (the product). It is
stored under the team's sources, keyed by what decides its pixels (source key, method, the
method's version or the network file's digest), so one photo x many prompts is cut out
once, the prepared cache (worker/prepared_cache.py) keys it like a given mask, prune
removes it with its jobs, and a person can download, fix and resubmit it as ``mask``.
rembg and OpenCV are imported only when a cut-out runs: the api and dispatcher never load
them.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from shared.errors import PermanentRenderError
from shared.images import encode_image
from shared.registry import ModelSpec
from shared.schemas import CutoutMethod
from shared.storage import Storage, sha256_hex, source_key

if TYPE_CHECKING:
    from rembg.sessions.base import BaseSession

REPAINT = 255  # the stored mask's white: background, repainted
KEEP = 0  # its black: the product, kept bit-identical
# Bumped whenever studio_mask's output can change, so stored masks of the old one are not
# reused for new jobs (their key names the version).
STUDIO_VERSION = 1
BORDER_FRACTION = 0.02  # the band the background colour is estimated from
LIGHTNESS_WEIGHT = 0.5  # a shadow differs from the background mostly in lightness
MIN_DISTANCE = 12.0  # CIELAB units: never closer to the background than this is product
BORDER_SPREAD = 3.0  # x the border's 90th-percentile distance (its noise and gradient)
PART_FRACTION = 0.25  # a component this fraction of the largest's area is a product too
SEGMENTATION_THRESHOLD = 128  # rembg's 0..255 mask: from here on it is the product
# rembg's custom-model sessions: each opens only the file given (validate_model_path).
SEGMENTATION_SESSIONS = ("u2net_custom", "dis_custom", "ben_custom", "birefnet_custom")
DEFAULT_SESSION = "u2net_custom"


def studio_mask(image: Image.Image) -> Image.Image:
    """The mask (white = background) of a product on a plain light background."""
    import cv2  # see module doc: only workers cutting out load OpenCV

    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    side = min(width, height)
    # JPEG blocks and sensor noise would speckle the threshold: a median smooths them
    # and keeps the outline where it is (a Gaussian blur grew the product by a pixel).
    blurred = cv2.medianBlur(rgb, 3)
    lab = cv2.cvtColor(blurred.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    band = max(2, round(side * BORDER_FRACTION))
    border = np.concatenate(
        [
            lab[:band].reshape(-1, 3),
            lab[-band:].reshape(-1, 3),
            lab[:, :band].reshape(-1, 3),
            lab[:, -band:].reshape(-1, 3),
        ]
    )
    background = np.median(border, axis=0)
    weights = np.array([LIGHTNESS_WEIGHT, 1.0, 1.0], dtype=np.float32)
    distance = np.sqrt((((lab - background) * weights) ** 2).sum(axis=2))
    border_distance = np.sqrt((((border - background) * weights) ** 2).sum(axis=1))
    threshold = max(MIN_DISTANCE, BORDER_SPREAD * float(np.percentile(border_distance, 90)))
    product = (distance > threshold).astype(np.uint8)
    size = max(3, (side // 100) | 1)  # odd, about 1% of the image
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    product = cv2.morphologyEx(product, cv2.MORPH_OPEN, kernel)
    product = cv2.morphologyEx(product, cv2.MORPH_CLOSE, kernel)
    product = _main_parts(cv2, product)
    mask = np.where(product > 0, KEEP, REPAINT).astype(np.uint8)
    return Image.fromarray(mask, mode="L")


def _main_parts(cv2: Any, product: np.ndarray) -> np.ndarray:
    """The largest component (and those at least PART_FRACTION of it), holes filled."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(product, connectivity=8)
    if count <= 1:  # background only
        return np.zeros_like(product)
    areas = stats[1:, cv2.CC_STAT_AREA]
    parts = [i + 1 for i, area in enumerate(areas) if area >= PART_FRACTION * areas.max()]
    kept = np.isin(labels, parts).astype(np.uint8)
    # The outer contours drawn filled: whatever they enclose (a label, a reflection as
    # light as the background) is product too.
    contours, _ = cv2.findContours(kept, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(kept)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def segmentation_mask(image: Image.Image, session: BaseSession) -> Image.Image:
    """The mask (white = background) a rembg session finds, at ``image``'s size."""
    import rembg  # see module doc

    found = rembg.remove(image.convert("RGB"), session=session, only_mask=True)
    assert isinstance(found, Image.Image)  # rembg returns the type it was given
    salient = np.asarray(found.convert("L")) >= SEGMENTATION_THRESHOLD
    return Image.fromarray(np.where(salient, KEEP, REPAINT).astype(np.uint8), mode="L")


_sessions_lock = threading.Lock()


@functools.cache
def segmentation_session(model_path: str, session_name: str = DEFAULT_SESSION) -> BaseSession:
    """rembg's custom-model session for ``model_path``, opened once per worker process."""
    with _sessions_lock:  # two io threads missing at once would open the file twice
        return _open_session(model_path, session_name)


def _open_session(model_path: str, session_name: str) -> BaseSession:
    import rembg

    try:
        if session_name == "birefnet_custom":
            return _birefnet_custom()(session_name, None, model_path=model_path)
        return rembg.new_session(session_name, model_path=model_path)
    except Exception as e:  # rembg's ValueError, onnxruntime's own errors on a bad file
        raise PermanentRenderError(f"segmentation model {model_path} cannot be opened: {e}") from e


def _birefnet_custom() -> type[BaseSession]:
    """BiRefNet's rembg session (its 1024² input and sigmoid output) opening a given file:
    rembg's BiRefNet classes know only their own downloads, its custom classes only other
    networks' preprocessing."""
    import onnxruntime as ort
    from rembg.sessions.birefnet_general import BiRefNetSessionGeneral

    class BiRefNetCustomSession(BiRefNetSessionGeneral):
        def __init__(self, model_name: str, sess_opts: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(model_name, sess_opts or ort.SessionOptions(), *args, **kwargs)

        @classmethod
        def download_models(cls, *args: Any, **kwargs: Any) -> str:
            return str(cls.validate_model_path(*args, **kwargs))

    return BiRefNetCustomSession


@functools.cache
def file_digest(path: str) -> str:
    """SHA-256 of a network file, once per worker: it names the masks the file finds."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise PermanentRenderError(f"segmentation model {path} cannot be read: {e}") from e


def segmentation_options(spec: ModelSpec) -> tuple[str, str]:
    """(model file, rembg session name) of a model's segmentation; PermanentRenderError when
    its registry entry has none (the api checked, but the registry may have changed)."""
    path = spec.options.get("segmentation_model")
    if not path:
        raise PermanentRenderError(
            f"model {spec.alias!r} has no options.segmentation_model: cutout segmentation "
            "cannot run"
        )
    session = str(spec.options.get("segmentation_session", DEFAULT_SESSION))
    if session not in SEGMENTATION_SESSIONS:
        raise PermanentRenderError(
            f"model {spec.alias!r}: options.segmentation_session {session!r} is not one of "
            f"{', '.join(SEGMENTATION_SESSIONS)}"
        )
    return str(Path(str(path)).expanduser()), session


def cutout_key(spec: ModelSpec, team_id: uuid.UUID, source: str, method: CutoutMethod) -> str:
    """Where the mask ``method`` finds in ``source`` is stored: the same inputs, the same
    key (content-addressed like a source: immutable, cached, pruned with its jobs)."""
    if method == "studio":
        decided_by = f"studio-v{STUDIO_VERSION}"
    else:
        path, session = segmentation_options(spec)
        decided_by = f"segmentation|{session}|{file_digest(path)}"
    return source_key(team_id, sha256_hex(f"cutout|{decided_by}|{source}".encode()))


def find_mask(spec: ModelSpec, image: Image.Image, method: CutoutMethod) -> Image.Image:
    """The mask ``method`` finds in ``image`` (decoded upright, flattened: RGB)."""
    if method == "studio":
        return studio_mask(image)
    return segmentation_mask(image, segmentation_session(*segmentation_options(spec)))


def stored_cutout(
    spec: ModelSpec,
    storage: Storage,
    key: str,
    image: Image.Image,
    method: CutoutMethod,
) -> bytes:
    """The PNG of the mask at ``key``: the stored one, else found now and stored. A mask
    that keeps nothing or everything is refused: there is no product, or no background."""
    if storage.exists(key):
        return storage.get(key)
    mask = find_mask(spec, image, method)
    low, high = mask.getextrema()  # type: ignore[misc]
    if low == REPAINT:
        raise PermanentRenderError(
            f"cutout {method} found no product against the background: give a mask"
        )
    if high == KEEP:
        raise PermanentRenderError(f"cutout {method} found no background to repaint: give a mask")
    data = encode_image(mask, "png")
    storage.put(key, data, "image/png", metadata={"cutout": method})
    return data


def cutout_seconds(
    image: Image.Image, method: CutoutMethod, session: BaseSession | None = None
) -> float:
    """Seconds one cut-out of ``image`` takes by ``method`` (the bench's measure)."""
    import time

    started = time.perf_counter()
    if method == "studio":
        studio_mask(image)
    else:
        assert session is not None, "segmentation needs a session"
        segmentation_mask(image, session)
    return time.perf_counter() - started
