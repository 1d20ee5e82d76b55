"""Presigned uploads: where a client's PUT lands before ``/complete`` checks it, and its sweep.

A staged object is a client's bytes in a key the client could write, so nothing ever renders
from it: ``/complete`` checks it, copies it to a content-addressed source key and removes it.
What a client PUT and never completed, or PUT again after completing (the URL stays valid
until it expires), is swept once it is older than the URL's lifetime: nothing lingers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote, unquote

from shared.storage import S3Storage

STAGING_PREFIX = "uploads/"


@dataclass(frozen=True)
class StagedObject:
    """What a client PUT: its key (relative to the store), size and filename."""

    key: str
    size: int
    filename: str


def staging_prefix(team_id: uuid.UUID, upload_id: uuid.UUID) -> str:
    # The team is in the key, so one team can never complete another team's upload; the
    # filename rides in the key too, so no table is needed for pending uploads.
    return f"{STAGING_PREFIX}{team_id}/{upload_id}/"


def presign_staged_put(
    s3: S3Storage, team_id: uuid.UUID, upload_id: uuid.UUID, filename: str | None, expires_in: int
) -> str:
    """A URL that PUTs one file into this upload's staging folder, valid ``expires_in`` s."""
    key = staging_prefix(team_id, upload_id) + quote(filename or "upload", safe="")
    return s3.presigned_put_url(key, expires_in)


def find_staged(s3: S3Storage, team_id: uuid.UUID, upload_id: uuid.UUID) -> StagedObject | None:
    """The object PUT for this upload, or None when nothing was PUT (yet)."""
    for obj in s3.list_objects(staging_prefix(team_id, upload_id), limit=1):
        return StagedObject(obj.key, obj.size, unquote(obj.key.rsplit("/", 1)[-1]))
    return None


def discard_staged(s3: S3Storage, team_id: uuid.UUID, upload_id: uuid.UUID) -> None:
    """Remove whatever this upload's URL put (a PUT after ``/complete`` included)."""
    for obj in s3.list_objects(staging_prefix(team_id, upload_id)):
        s3.delete(obj.key)


def sweep_staging(s3: S3Storage, now: datetime, max_age_seconds: int) -> int:
    """Delete staged objects last written more than ``max_age_seconds`` ago; how many.

    Any PUT URL has expired by then (they live ``max_age_seconds``), so no client can still
    be completing it in good faith, and nothing can write the key again.
    """
    cutoff = now - timedelta(seconds=max_age_seconds)
    swept = 0
    for obj in s3.list_objects(STAGING_PREFIX):
        if obj.last_modified < cutoff:
            s3.delete(obj.key)
            swept += 1
    return swept
