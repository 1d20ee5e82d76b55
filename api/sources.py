"""Turn the images a client gave (data URL, http(s) URL, upload id) into stored sources.

In two steps, so that a refused request writes nothing and no database connection waits
on a client's server:

1. ``check_sources``: every reference is fetched or decoded and proven an image (upload ids
   were looked up before, in one short query). The bytes wait in a ``SourceSpool``, a
   temporary file, so a batch of many URLs is not held in memory; nothing is stored.
2. ``SourceSpool.store``, once nothing can refuse the request any more: content-addressed
   writes, skipping objects that exist (other jobs may share them: never deleted here).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from urllib.parse import urljoin

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.fetch_slots import FetchSlots
from shared.errors import InvalidRequest
from shared.images import CheckedImage, check_image, parse_data_url
from shared.models import Team, Upload
from shared.netguard import guarded_client, parse_networks, resolve_public
from shared.settings import Settings
from shared.storage import Storage, sha256_hex, source_key

MAX_REDIRECTS = 3
# Distinct sources of one request are fetched (and stored) in parallel, I/O bound; bounded
# so one request cannot open hundreds of outbound connections.
FETCH_THREADS = 8


def store_source(storage: Storage, team: Team, image: CheckedImage) -> str:
    """Store checked bytes under a content-addressed key (once per team and content)."""
    key = source_key(team.id, sha256_hex(image.data))
    if not storage.exists(key):
        storage.put(key, image.data, image.content_type)
    return key


def check_source(data: bytes, field: str, settings: Settings) -> CheckedImage:
    """``check_image`` with this farm's limits: every way an image comes in checks here."""
    return check_image(data, field, settings.max_image_pixels, settings.max_image_aspect_ratio)


class SourceSpool:
    """Checked source bytes of one request, on disk until the request is accepted."""

    def __init__(self, team_id: uuid.UUID) -> None:
        self.team_id = team_id
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        self._end = 0
        # key -> (offset, size, content type)
        self._entries: dict[str, tuple[int, int, str]] = {}

    def add(self, image: CheckedImage) -> str:
        """Spool ``image`` (once per content); returns the key it will be stored under."""
        key = source_key(self.team_id, sha256_hex(image.data))
        with self._lock:
            if key not in self._entries:
                os.pwrite(self._file.fileno(), image.data, self._end)
                self._entries[key] = (self._end, len(image.data), image.content_type)
                self._end += len(image.data)
        return key

    def read(self, key: str, storage: Storage) -> bytes:
        """The bytes of ``key``: spooled here, or already stored (an upload)."""
        entry = self._entries.get(key)
        if entry is None:
            return storage.get(key)
        offset, size, _ = entry
        return os.pread(self._file.fileno(), size, offset)

    def store(self, storage: Storage) -> None:
        """Write every spooled source that is not stored yet."""

        def put(key: str) -> None:
            if not storage.exists(key):
                storage.put(key, self.read(key, storage), self._entries[key][2])

        if len(self._entries) <= 1:
            for key in self._entries:
                put(key)
            return
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(self._entries))) as pool:
            list(pool.map(put, self._entries))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SourceSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def fetch_url(url: str, field: str, settings: Settings, limit_bytes: int | None = None) -> bytes:
    """GET a public URL with a size cap (``limit_bytes``, default ``max_upload_bytes``) and
    one deadline (``fetch_timeout_seconds``, for every redirect hop together), re-checking
    every hop against SSRF."""
    allowed = parse_networks(settings.private_networks)
    limit = settings.fetch_timeout_seconds
    # guarded_client checks again at connect time, against the address it dials (a DNS
    # answer that changed since resolve_public, DNS rebinding, cannot reach inside); its
    # deadline ends every read and write, however slowly the server sends.
    deadline = time.monotonic() + limit
    with guarded_client(allowed, timeout=limit, deadline=deadline) as client:
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
                    cap = settings.max_upload_bytes if limit_bytes is None else limit_bytes
                    return _read_capped(response, field, cap)
            except httpx.TimeoutException as e:
                raise InvalidRequest(
                    field, f"fetching the URL took longer than {limit:g} s; nothing was stored"
                ) from e
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
            raise InvalidRequest(field, f"the file is larger than {limit} bytes", status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


def is_remote(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def _as_upload_id(ref: str) -> uuid.UUID | None:
    if ref.startswith("data:") or is_remote(ref):
        return None
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None


def upload_keys(session: Session, team: Team, refs: Mapping[str, str]) -> dict[str, str]:
    """The object key of each upload id among ``refs`` (ref -> field), in one query; 404
    naming the field for an id this team never uploaded."""
    ids = {ref: u for ref in refs if (u := _as_upload_id(ref)) is not None}
    if not ids:
        return {}
    rows = session.execute(
        select(Upload.id, Upload.object_key).where(
            Upload.team_id == team.id, Upload.id.in_(list(ids.values()))
        )
    ).tuples()
    found = {upload_id: key for upload_id, key in rows}
    for ref, upload_id in ids.items():
        if upload_id not in found:
            raise InvalidRequest(refs[ref], f"no upload {ref} for this team", status_code=404)
    return {ref: found[upload_id] for ref, upload_id in ids.items()}


def _check_one(ref: str, field: str, spool: SourceSpool, settings: Settings) -> str:
    if ref.startswith("data:"):
        data = parse_data_url(ref, field)
        if len(data) > settings.max_upload_bytes:
            raise InvalidRequest(
                field, f"image is larger than {settings.max_upload_bytes} bytes", status_code=413
            )
    elif is_remote(ref):
        data = fetch_url(ref, field, settings)
    else:
        raise InvalidRequest(
            field, "must be a data URL, an http(s) URL or an upload id from POST /v1/uploads"
        )
    return spool.add(check_source(data, field, settings))


def check_sources(
    refs: Mapping[str, str],
    uploads: Mapping[str, str],
    *,
    spool: SourceSpool,
    slots: FetchSlots,
    settings: Settings,
) -> dict[str, str]:
    """The key of every ref (ref -> field, in request order): an upload's from ``uploads``,
    the others fetched or decoded, proven images and spooled, in parallel. The first
    error in request order wins. Holds one of the team's fetch slots when any ref is a URL;
    the caller holds no database connection (it released it)."""
    pending = [ref for ref in refs if ref not in uploads]
    if not pending:
        return dict(uploads)
    if not any(is_remote(ref) for ref in pending):
        keys = {ref: _check_one(ref, refs[ref], spool, settings) for ref in pending}
        return {**uploads, **keys}
    with (
        slots.hold(spool.team_id),
        ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(pending))) as pool,
    ):
        futures = {ref: pool.submit(_check_one, ref, refs[ref], spool, settings) for ref in pending}
        try:
            keys = {ref: future.result() for ref, future in futures.items()}
        finally:
            for future in futures.values():
                future.cancel()
    return {**uploads, **keys}
