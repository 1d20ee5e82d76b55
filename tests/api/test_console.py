"""The console's server side, in process: the shell and assets without a key under a strict
CSP, and thumbnails (keyed, team-scoped, resized once and kept in storage, revalidated)."""

from __future__ import annotations

import io
import uuid
from urllib.parse import urlparse

import pytest
from PIL import Image

from api.thumbnails import thumbnail_key
from shared.models import Job
from tests.factories import batch_body, data_url, finish_jobs, png_bytes

VIEWS = ["/", "/batches/new", f"/batches/{uuid.uuid4()}", f"/jobs/{uuid.uuid4()}"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", VIEWS)
def test_every_view_is_the_shell_under_a_strict_csp_without_a_key(client, settings, path):
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/console/assets/app.js">' in answer.text
    assert "<script>" not in answer.text and "style=" not in answer.text  # nothing inline
    policy = answer.headers["content-security-policy"]
    csp = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    # Full-size outputs are presigned URLs of the S3 endpoint: images may come from there.
    endpoint = urlparse(settings.s3_endpoint_url)
    assert f"{endpoint.scheme}://{endpoint.netloc}" in csp["img-src"].split()
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


def test_assets_ship_in_the_package_with_the_same_headers(client):
    script = client.get("/console/assets/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "script-src 'self'" in script.headers["content-security-policy"]
    assert client.get("/console/assets/console.css").headers["content-type"].startswith("text/css")
    assert client.get("/console/assets/missing.js").status_code == 404
    assert client.get("/console/assets/%2e%2e/routes/console.py").status_code == 404


def test_thumbnails_are_keyed_small_cached_and_team_scoped(client, new_key, app, session_factory):
    key, other = new_key(), new_key()
    body = batch_body(
        model="echo",
        images=[{"image": data_url(png_bytes(900, 600)), "sku": "WIDE"}],
        prompts=["on a beach"],
        variants=1,
    )
    batch = client.post("/v1/batches", json=body, headers=auth(key)).json()
    job = client.get(f"/v1/batches/{batch['id']}/jobs", headers=auth(key)).json()["jobs"][0]
    path = f"/v1/jobs/{job['id']}/thumbnail"

    assert client.get(path).status_code == 401
    assert client.get(path, headers=auth(other)).status_code == 404  # another team's job
    not_yet = client.get(path, headers=auth(key))
    assert not_yet.status_code == 404 and "no output yet" in not_yet.json()["detail"]

    source = client.get(path, params={"of": "source"}, headers=auth(key))
    assert source.status_code == 200 and source.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(source.content)).size == (256, 171)  # long side 256, kept ratio
    assert source.headers["cache-control"] == "private, max-age=3600"
    big = client.get(path, params={"of": "source", "size": 1024}, headers=auth(key))
    assert Image.open(io.BytesIO(big.content)).size == (900, 600)  # never enlarged
    assert client.get(path, params={"size": 300}, headers=auth(key)).status_code == 422

    finish_jobs(session_factory, app.state.storage, [uuid.UUID(job["id"])])
    done = client.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()
    output = client.get(path, params={"v": done["finished_at"]}, headers=auth(key))
    assert output.status_code == 200 and Image.open(io.BytesIO(output.content)).size == (64, 64)
    # Made once: it is kept in storage under a key of the output's attempt and size ...
    with session_factory() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        kept = thumbnail_key(row.team_id, row.outputs[0]["key"], row.finished_at.isoformat(), 256)
    assert app.state.storage.get(kept) == output.content
    # ... and a browser holding it revalidates for nothing.
    again = client.get(path, headers={**auth(key), "If-None-Match": output.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_the_edges_view_is_the_sources_canny_edges(client, new_key):
    """of=edges: the source's OpenCV canny edges at the thumbnail's size (white on black),
    the edges the structure score compares, kept apart from the source's own thumbnail."""
    import numpy as np
    import skimage.data

    from shared.canny import canny_edges

    key = new_key()
    photo = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(photo, "PNG")
    body = batch_body(model="echo", images=[data_url(photo.getvalue())], prompts=["p"])
    batch = client.post("/v1/batches", json=body, headers=auth(key)).json()
    job = client.get(f"/v1/batches/{batch['id']}/jobs", headers=auth(key)).json()["jobs"][0]
    path = f"/v1/jobs/{job['id']}/thumbnail"

    def grey(of: str) -> np.ndarray:
        answer = client.get(path, params={"of": of}, headers=auth(key))
        assert answer.status_code == 200, answer.text
        return np.asarray(Image.open(io.BytesIO(answer.content)).convert("L"), dtype=float)

    source, edges = grey("source"), grey("edges")
    assert source.shape == edges.shape == (256 * 300 // 451, 256)
    expected = np.asarray(canny_edges(Image.fromarray(source.astype(np.uint8))).convert("L"))
    white = edges > 128
    assert 0.01 < white.mean() < 0.3  # thin lines, not a photo
    # The same edges as OpenCV finds in the source thumbnail (up to the webp round trips).
    assert (white == (expected > 128)).mean() > 0.9
    assert (source > 128).mean() > 0.3
