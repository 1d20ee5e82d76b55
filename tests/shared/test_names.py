"""shared/names.py: which names can become files everywhere, and which two are one file on
macOS and Windows; and the request-body text rule of shared/schemas.py that names the path."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.names import first_collision, is_portable, name_key, name_problem
from shared.schemas import BatchCreate, JobCreate, WebhookEndpointCreate

PORTABLE = [
    "SKU-A",
    "red shoe",
    "café",
    "a.b.c",
    "conx",
    "CON-1",
    "com10",
    "COM0",
    "image-001",
    "\U0001f600" * 63,  # 252 bytes
    "é" * 127,  # 254 bytes
]
NOT_PORTABLE = {
    "": "is blank",
    "   ": "is blank",
    "\u00a0\t": "is blank",
    "CON": "device name",
    "con": "device name",
    "Nul.txt": "device name",
    "lpt9.tar.gz": "device name",
    "COM1": "device name",
    "com\u00b9": "device name",  # superscript one counts as a digit on Windows
    "AUX .png": "device name",
    **{f"a{c}b": f"contains {c!r}" for c in '<>:"|?*/\\\x00\x1f\x7f'},
    "C:": "contains ':'",
    "trailing.": "ends in a dot or a space",
    "trailing ": "ends in a dot or a space",
    ".": "ends in a dot or a space",
    "..": "ends in a dot or a space",
    "a" * 256: "is 256 bytes",
    "é" * 128: "is 256 bytes",
    "\U0001f600" * 64: "is 256 bytes",
    "half \ud83d": "lone surrogate",
}


@pytest.mark.parametrize("name", PORTABLE)
def test_portable_names_pass(name: str) -> None:
    assert name_problem(name) is None
    assert is_portable(name)


@pytest.mark.parametrize(("name", "reason"), NOT_PORTABLE.items(), ids=repr)
def test_non_portable_names_say_why(name: str, reason: str) -> None:
    problem = name_problem(name)
    assert problem is not None and not is_portable(name)
    assert reason in problem, problem


def test_names_that_differ_by_case_or_normalisation_are_one_file() -> None:
    assert name_key("SKU-A") == name_key("sku-a")
    assert name_key("caf\u00e9") == name_key("CAFE\u0301"), "composed vs decomposed é"
    assert name_key("Straße") == name_key("STRASSE"), "full case folding"
    assert name_key("SKU-A") != name_key("SKU-B")
    assert first_collision(["a", "B", "c", "b", "A"]) == (1, 3)
    assert first_collision(["x", "caf\u00e9", "y", "Cafe\u0301"]) == (1, 3)
    assert first_collision(["same", "same"]) == (0, 1)
    assert first_collision(["a", "b", "c"]) is None
    assert first_collision([]) is None


# --- request bodies: every string at any depth can be stored and sent back ------------------

JOB = {"model": "tiny", "prompt": "a shoe", "image": "data:image/png;base64,AAAA"}


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"metadata": {"note": "cut \ud83d"}}, ("metadata", "note")),
        ({"metadata": {"note\ud83d": "x"}}, ("metadata", "note\\ud83d")),
        ({"metadata": {"a\x00": "x"}}, ("metadata", "a\\x00")),
        ({"metadata": {"a": [1, {"b": ["ok", "x\x00"]}]}}, ("metadata", "a", 1, "b", 1)),
        ({"metadata": {"a": [{"\udc00": 1}]}}, ("metadata", "a", 0, "\\udc00")),
        ({"prompt": "a\x00b"}, ("prompt",)),
        ({"negative_prompt": "\x00"}, ("negative_prompt",)),
        ({"webhook_url": "https://example.com/\x00"}, ("webhook_url",)),
    ],
)
def test_job_text_at_any_depth_is_refused_naming_its_path(extra, loc) -> None:
    with pytest.raises(ValidationError) as raised:
        JobCreate.model_validate({**JOB, **extra})
    assert [e["loc"] for e in raised.value.errors()] == [loc]


def test_a_lone_surrogate_in_a_metadata_key_was_accepted_by_pydantic_alone() -> None:
    """Why the schema walks dict keys itself: pydantic's dict[str, Any] keeps the key."""
    from pydantic import BaseModel

    class Plain(BaseModel):
        metadata: dict[str, object]

    assert Plain(metadata={"\ud83d": 1}).metadata == {"\ud83d": 1}
    assert Plain(metadata={"k": "\ud83d"}).metadata == {"k": "\ud83d"}


def test_deep_metadata_cannot_exhaust_the_stack() -> None:
    deep: object = "\x00"
    for _ in range(5_000):
        deep = [deep]
    with pytest.raises(ValidationError) as raised:
        JobCreate.model_validate({**JOB, "metadata": {"deep": deep}})
    (error,) = raised.value.errors()
    assert error["loc"][:2] == ("metadata", "deep") and len(error["loc"]) == 5_002


def test_good_unicode_text_is_kept_exactly() -> None:
    metadata = {"note": "emoji \U0001f600 ok", "é": ["ü", {"日本": "語"}]}
    body = JobCreate.model_validate({**JOB, "prompt": "café \U0001f45f", "metadata": metadata})
    assert body.metadata == metadata and body.prompt == "café \U0001f45f"


@pytest.mark.parametrize(
    ("images", "prompts", "loc"),
    [
        (["x", {"image": "y", "sku": "CON"}], ["p"], ("images", 1, "sku")),
        (["x", {"image": "y", "sku": "a:b"}], ["p"], ("images", 1, "sku")),
        (["x", {"image": "y", "sku": "   "}], ["p"], ("images", 1, "sku")),
        (["x"], ["ok", {"prompt": "p", "name": "x."}], ("prompts", 1, "name")),
        (["x"], ["ok", "bad\x00"], ("prompts", 1, "prompt")),
    ],
)
def test_batch_names_and_text_are_refused_naming_their_path(images, prompts, loc) -> None:
    with pytest.raises(ValidationError) as raised:
        BatchCreate.model_validate({"model": "tiny", "images": images, "prompts": prompts})
    assert [e["loc"] for e in raised.value.errors()] == [loc]


def test_strings_inside_lists_are_checked_and_named_by_position() -> None:
    with pytest.raises(ValidationError) as raised:
        WebhookEndpointCreate.model_validate(
            {"url": "https://example.com/", "events": ["job.succeeded", "job.failed\x00"]}
        )
    assert [e["loc"] for e in raised.value.errors()] == [("events", 1)]
