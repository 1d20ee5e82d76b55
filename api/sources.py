"""Turn the ``image`` a client gave (data URL, http(s) URL, upload id) into a stored source."""

from __future__ import annotations

import uuid
from urllib.parse import urljoin

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest
from shared.images import CheckedImage, check_image, parse_data_url
from shared.models import Team, Upload
from shared.netguard import guarded_client, parse_networks, resolve_public
from shared.settings import Settings
from shared.storage import Storage, sha256_hex, source_key

MAX_REDIRECTS = 3


def store_source(storage: Storage, team: Team, image: CheckedImage) -> str:
    """Store checked bytes under a content-addressed key (once per team and content)."""
    key = source_key(team.id, sha256_hex(image.data))
    if not storage.exists(key):
        storage.put(key, image.data, image.content_type)
    return key


def check_source(data: bytes, field: str, settings: Settings) -> CheckedImage:
    """``check_image`` with this farm's limits: every way an image comes in checks here."""
    return check_image(data, field, settings.max_image_pixels, settings.max_image_aspect_ratio)


def fetch_url(url: str, field: str, settings: Settings) -> bytes:
    """GET a public URL with a size cap, re-checking every redirect hop against SSRF."""
    allowed = parse_networks(settings.private_networks)
    # guarded_client checks again at connect time, against the address it dials (a DNS
    # answer that changed since resolve_public, DNS rebinding, cannot reach inside).
    with guarded_client(allowed, timeout=settings.fetch_timeout_seconds) as client:
        for _ in range(MAX_REDIRECTS + 1):
            resolve_public(url, field, allowed)
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise InvalidRequest(
                            field, f"fetching the URL answered {response.status_code}"
                        )
                    return _read_capped(response, field, settings.max_upload_bytes)
            except httpx.HTTPError as e:
                raise InvalidRequest(field, f"could not fetch the URL: {e}") from e
    raise InvalidRequest(field, f"more than {MAX_REDIRECTS} redirects")


def check_webhook_url(url: str, field: str, settings: Settings) -> str:
    """Refuse a webhook receiver URL that is not public http(s) (4xx naming ``field``).

    The webhook worker checks again when it connects (the DNS answer may have changed).
    """
    resolve_public(url, field, parse_networks(settings.private_networks))
    return url


def _read_capped(response: httpx.Response, field: str, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(field, f"image is larger than {limit} bytes", status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


def resolve_source(
    ref: str, field: str, *, team: Team, session: Session, storage: Storage, settings: Settings
) -> str:
    """The storage key of the source image ``ref`` names, checked and stored if new."""
    if ref.startswith("data:"):
        data = parse_data_url(ref, field)
        if len(data) > settings.max_upload_bytes:
            raise InvalidRequest(
                field, f"image is larger than {settings.max_upload_bytes} bytes", status_code=413
            )
        return store_source(storage, team, check_source(data, field, settings))
    if ref.startswith(("http://", "https://")):
        data = fetch_url(ref, field, settings)
        return store_source(storage, team, check_source(data, field, settings))
    try:
        upload_id = uuid.UUID(ref)
    except ValueError:
        raise InvalidRequest(
            field, "must be a data URL, an http(s) URL or an upload id from POST /v1/uploads"
        ) from None
    upload = session.scalar(select(Upload).where(Upload.id == upload_id, Upload.team_id == team.id))
    if upload is None:
        raise InvalidRequest(field, f"no upload {ref} for this team", status_code=404)
    return upload.object_key
