"""Which jobs a batch makes: the (image, prompt, variant) triples of its ``pairing``.

The one place that says so: ``cross`` (every image x every prompt, the default), ``zip``
(image i with prompt i, as A1111's and InvokeAI's users ask) or an explicit list of
``{image, prompt}`` index pairs; each pair then times ``variants`` seeds. The order is
stable (images, then prompts, then variants for ``cross``; the list's own order
otherwise), so a re-submitted batch creates its jobs in the same order.

A job's seed is derived from its names (api/batches.py ``derive_seed``), never from its
place in this order: a ``zip`` job has the seed the same image, prompt and variant have in a
``cross`` batch of the same seed.

Explicit pairs must use every image and every prompt: an unused image would still be
fetched, checked, stored and counted for nothing, and an unused entry is far more often a
wrong index than an intent. It is refused (422 naming ``images[2]`` or ``prompts[1]``)
before anything is fetched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

from shared.errors import InvalidRequest
from shared.schemas import BatchCreate

# How GET /v1/batches/{id} names an explicit list (the jobs' sku and prompt_name say which).
PAIRS = "pairs"

ImageT = TypeVar("ImageT")
PromptT = TypeVar("PromptT")


def pairs(body: BatchCreate) -> list[tuple[int, int]]:
    """The (image index, prompt index) pairs of ``body``, in job order (unchecked)."""
    if body.pairing == "cross":
        return [(i, p) for i in range(len(body.images)) for p in range(len(body.prompts))]
    if body.pairing == "zip":
        return [(i, i) for i in range(min(len(body.images), len(body.prompts)))]
    return [(ref.image, ref.prompt) for ref in body.pairing]


def triples(body: BatchCreate) -> Iterator[tuple[int, int, int]]:
    """(image index, prompt index, variant) of every job of ``body``, in job order;
    variants count from 1."""
    for image, prompt in pairs(body):
        for variant in range(1, body.variants + 1):
            yield image, prompt, variant


def paired(
    body: BatchCreate, images: Sequence[ImageT], prompts: Sequence[PromptT]
) -> Iterator[tuple[ImageT, PromptT, int]]:
    """(image, prompt, variant) of every job of ``body``, in job order: ``images`` and
    ``prompts`` hold what the caller keeps per image and per prompt, in the body's order."""
    for image, prompt, variant in triples(body):
        yield images[image], prompts[prompt], variant


def mode(body: BatchCreate) -> str:
    """``cross``, ``zip`` or ``pairs``: how the batch paired, as the batch row keeps it."""
    return body.pairing if isinstance(body.pairing, str) else PAIRS


def arithmetic(body: BatchCreate) -> tuple[str, str]:
    """(the factors' names, their product spelled out) for a message about the job count,
    e.g. ``("images x prompts x variants", "3 x 4 x 2 = 24 jobs")``."""
    count = f"{body.job_count:,} jobs"
    if body.pairing == "cross":
        factors = f"{len(body.images)} x {len(body.prompts)} x {body.variants}"
        return "images x prompts x variants", f"{factors} = {count}"
    if body.pairing == "zip":
        return "images x variants", f"{len(body.images)} zipped x {body.variants} = {count}"
    return "pairing x variants", f"{len(body.pairing)} pairs x {body.variants} = {count}"


def check_pairing(body: BatchCreate) -> None:
    """Refuse a pairing that does not fit the batch's images and prompts (422 naming the
    field): ``zip`` with unequal counts; a pair's index out of range, a pair given twice
    (the later one is named), an image or prompt no pair uses."""
    n_images, n_prompts = len(body.images), len(body.prompts)
    if body.pairing == "cross":
        return
    if body.pairing == "zip":
        if n_images != n_prompts:
            raise InvalidRequest(
                "pairing",
                f'"zip" pairs image i with prompt i, so it needs as many images as prompts: '
                f"this batch has {n_images} images and {n_prompts} prompts",
            )
        return
    seen: dict[tuple[int, int], int] = {}
    for n, ref in enumerate(body.pairing):
        for part, index, count in (
            ("image", ref.image, n_images),
            ("prompt", ref.prompt, n_prompts),
        ):
            if index >= count:
                raise InvalidRequest(
                    f"pairing[{n}].{part}",
                    f"{index} is out of range: the batch has {count} {part}s "
                    f"(indexes 0 to {count - 1})",
                )
        first = seen.setdefault((ref.image, ref.prompt), n)
        if first != n:
            raise InvalidRequest(
                f"pairing[{n}]",
                f"image {ref.image} with prompt {ref.prompt} is already pairing[{first}]; "
                "give each pair once (variants gives more seeds of one pair)",
            )
    _check_used("images", n_images, {image for image, _ in seen})
    _check_used("prompts", n_prompts, {prompt for _, prompt in seen})


def _check_used(field: str, count: int, used: set[int]) -> None:
    unused = next((i for i in range(count) if i not in used), None)
    if unused is not None:
        raise InvalidRequest(
            f"{field}[{unused}]",
            f"no pair in pairing uses it: pair it or leave it out of {field}",
        )
