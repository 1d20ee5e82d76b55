"""The API documents itself (issue 14): every route and field described in ``/openapi.json``,
every keyed route listing 401 and the error statuses it really answers (no generic 4XX),
JSON request bodies with examples, and the README's job field table equal to the schema's
descriptions (one source of truth: the schema; ``python -m tests.api.test_openapi_docs``
prints the table to paste)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from shared.schemas import (
    BatchCreate,
    JobCreate,
    UploadPresignCreate,
    WebhookEndpointCreate,
    WebhookRotate,
)
from shared.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
METHODS = ("get", "post", "put", "patch", "delete")

# What each route answers besides its success, beyond what its signature implies (401 and
# 503 for a keyed route, 404 for an id in the path, 422 for any parameter or body, 413 for
# any body, 409 for an Idempotency-Key): the statuses its code raises (api/sources.py fetch
# slots -> 429, upload ids -> 404, image bytes and pixels -> 413, state conflicts -> 409).
EXTRA: dict[str, set[int]] = {
    # 403: the team's queued-jobs or monthly-images quota reached (api/quotas.py).
    "POST /v1/jobs": {403, 404, 429},
    "POST /v1/batches": {403, 404, 429},
    "POST /v1/uploads": {400},
    "POST /v1/uploads/presign": {400},
    # 400: a multipart body that does not parse, as for uploads; 403: a member key.
    "POST /v1/adapters": {400, 403},
    "POST /v1/uploads/{upload_id}/complete": {400, 413},
    "POST /v1/webhooks/deliveries/{delivery_id}/redeliver": {409},
    # A review decision on a job that has not succeeded (api/routes/review.py) -> 409.
    "POST /v1/jobs/{job_id}/review": {409},
    "POST /v1/batches/{batch_id}/review": {409},
    # A member key on an admin route (api/deps.py AdminTeamDep) -> 403.
    **{
        route: {403}
        for route in (
            "GET /v1/keys",
            "POST /v1/keys",
            "DELETE /v1/keys/{key_id}",
            "GET /v1/webhooks",
            "POST /v1/webhooks",
            "GET /v1/webhooks/secret",
            "POST /v1/webhooks/secret/rotate",
            "DELETE /v1/webhooks/{endpoint_id}",
            "POST /v1/webhooks/{endpoint_id}/rotate",
            "POST /v1/webhooks/{endpoint_id}/enable",
            "DELETE /v1/adapters/{adapter_name}",
        )
    },
}
UNKEYED_PATHS = {"/healthz", "/readyz", "/v1/files/{key}"}


@cache
def openapi() -> dict[str, Any]:
    """The schema of an app on SQLite and a local folder: building it touches neither."""
    settings = Settings(database_url="sqlite://", storage_url="file:///nonexistent")
    return TestClient(create_app(settings)).get("/openapi.json").json()


def operations() -> list[tuple[str, dict[str, Any]]]:
    paths = openapi()["paths"]
    return [
        (f"{method.upper()} {path}", op)
        for path, item in paths.items()
        for method, op in item.items()
        if method in METHODS
    ]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return openapi()["components"]["schemas"][ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]


def test_every_route_has_a_summary_and_description():
    missing = [label for label, op in operations() if not op.get("description")]
    assert not missing, f"routes without a description: {missing}"


def test_every_schema_field_has_a_description():
    missing = [
        f"{name}.{field}"
        for name, schema in openapi()["components"]["schemas"].items()
        for field, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert not missing, f"fields without a description: {missing}"


def test_every_parameter_has_a_description():
    missing = [
        f"{label} {p['name']}"
        for label, op in operations()
        for p in op.get("parameters", [])
        if not p.get("description")
    ]
    assert not missing, f"parameters without a description: {missing}"


def expected_errors(label: str, op: dict[str, Any]) -> set[int]:
    path = label.split(" ", 1)[1]
    keyed = path not in UNKEYED_PATHS
    params = op.get("parameters", [])
    expected = {401, 503} if keyed else set()
    if "requestBody" in op:
        expected |= {413, 422}
    if params:
        expected.add(422)
    if any(p["in"] == "path" for p in params):
        expected.add(404)
    if any(p["name"] == "Idempotency-Key" for p in params):
        expected.add(409)
    return expected | EXTRA.get(label, set())


def test_every_route_lists_its_real_error_statuses_with_the_error_body():
    wrong: dict[str, str] = {}
    for label, op in operations():
        if label in ("GET /healthz", "GET /readyz"):
            continue  # no key, no input; /readyz's 503 is its own body
        errors = {code for code in op["responses"] if not code.startswith(("2", "3"))}
        expected = {str(c) for c in expected_errors(label, op)}
        if errors != expected:
            wrong[label] = f"lists {sorted(errors)}, answers {sorted(expected)}"
        for code in errors & expected:
            content = op["responses"][code]["content"]["application/json"]["schema"]
            if content != {"$ref": "#/components/schemas/ErrorBody"}:
                wrong[f"{label} {code}"] = f"documents {content}, not ErrorBody"
    assert not wrong, wrong


def test_json_request_bodies_have_examples():
    missing = []
    for label, op in operations():
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            continue
        media = content["application/json"]
        schema = media["schema"]
        schema = next((s for s in schema.get("anyOf", [schema]) if "$ref" in s), schema)
        if not (media.get("examples") or media.get("example") or resolve(schema).get("examples")):
            missing.append(label)
    assert not missing, f"request bodies without examples: {missing}"


def test_body_examples_are_accepted_by_their_schema():
    """An example that the route would refuse teaches the wrong thing."""
    for model in (
        JobCreate,
        BatchCreate,
        UploadPresignCreate,
        WebhookEndpointCreate,
        WebhookRotate,
    ):
        for example in model.model_json_schema()["examples"]:
            model.model_validate(example)


# --- the README's job field table ------------------------------------------------------------

TABLE_FIELDS = [
    "model",
    "prompt",
    "negative_prompt",
    "image",
    "mask",
    "strength",
    "steps",
    "guidance_scale",
    "seed",
    "width",
    "height",
    "resize_mode",
    "output_format",
    "metadata",
    "webhook_url",
    "priority",
    "require_commercial_use",
    "preset",
    "upscale",
    "cutout",
    "adapters",
]


def field_table() -> str:
    """The README's job field table, from JobCreate's descriptions."""
    fields = JobCreate.model_fields
    rows = [f"| `{name}` | {fields[name].description} |" for name in TABLE_FIELDS]
    return "\n".join(["| field | meaning |", "|---|---|", *rows])


def readme_table() -> str:
    text = README.read_text()
    section = text[text.index("## Using the API") :]
    match = re.search(r"^\| field \| meaning \|\n(?:^\|.*\|\n)+", section, re.MULTILINE)
    assert match, "no field table in README's 'Using the API'"
    return match.group(0).rstrip("\n")


def test_readme_job_field_table_is_the_schemas_descriptions():
    assert set(TABLE_FIELDS) == set(JobCreate.model_fields), "a JobCreate field is not listed"
    assert readme_table() == field_table(), (
        "README's field table differs from JobCreate's descriptions; paste the output of "
        "`python -m tests.api.test_openapi_docs`:\n" + field_table()
    )


if __name__ == "__main__":
    print(field_table())  # noqa: T201 - the table to paste into README.md
