"""Object storage with one interface over S3-compatible endpoints and a local folder."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlparse

from shared.errors import StorageConfigError, StorageError
from shared.settings import Settings
from shared.storage_errors import classify_s3_error


class Storage(Protocol):
    """Where sources and outputs live. Keys are relative, '/'-separated paths."""

    def put(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error (deletes are retried blindly)."""
        ...

    def url(self, key: str, expires_in: int) -> str:
        """A URL a client can GET without our API key (presigned, or signed by us)."""
        ...

    def check(self) -> None:
        """Raise StorageError unless the store answers (readiness)."""
        ...


SOURCES_PREFIX = "sources/"


def source_key(team_id: uuid.UUID, digest: str) -> str:
    """Sources are content-addressed per team: one upload, many jobs, one object."""
    return f"{SOURCES_PREFIX}{team_id}/{digest}"


def content_addressed(key: str) -> bool:
    """Whether ``key`` names immutable bytes (a ``source_key``): safe to cache forever."""
    return key.startswith(SOURCES_PREFIX)


def output_key(
    team_id: uuid.UUID, job_id: uuid.UUID, index: int, ext: str, preset: str | None = None
) -> str:
    """Deterministic per job: a job rendered twice by a race overwrites, never duplicates.
    A marketplace preset's output sits beside its round's render: ``{index}-{preset}``."""
    suffix = "" if preset is None else f"-{preset}"
    return f"outputs/{team_id}/{job_id}/{index}{suffix}.{ext}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def thumbnail_key(team_id: uuid.UUID, key: str, version: str, size: int) -> str:
    """Where the thumbnail of ``key`` (as written by attempt ``version``) at ``size`` lives."""
    return f"thumbnails/{team_id}/{sha256_hex(f'{key}|{version}|{size}'.encode())}.webp"


# S3 DeleteObjects takes at most this many keys per call.
S3_DELETE_BATCH = 1000


def delete_many(storage: Storage, keys: list[str]) -> None:
    """Remove every key (missing ones are no error): one S3 DeleteObjects per 1,000 keys."""
    if not isinstance(storage, S3Storage):
        for key in keys:
            storage.delete(key)
        return
    for start in range(0, len(keys), S3_DELETE_BATCH):
        storage.delete_batch(keys[start : start + S3_DELETE_BATCH])


class LocalStorage:
    """A folder on disk; URLs point at the API's signed ``/v1/files`` route."""

    def __init__(self, root: Path, public_url: str, secret: str) -> None:
        self.root = root
        # Resolved once: Path.resolve() stats every component of the path it is given.
        self._real_root = os.path.realpath(root)
        self.public_url = public_url.rstrip("/")
        self._secret = secret.encode()

    def _path(self, key: str) -> Path:
        # Keys are checked lexically: a ".." or an absolute key cannot climb out of the root.
        # Resolving each key instead (a stat per component) was a tenth of an echo worker's
        # CPU; symlinks inside the folder are the operator's own, and followed as such.
        root = self._real_root
        path = os.path.normpath(os.path.join(root, key))
        if path == root or os.path.commonpath((path, root)) != root:
            raise StorageError(f"key escapes the storage root: {key!r}")
        return Path(path)

    def put(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half an object.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        meta = {"content_type": content_type, "metadata": metadata or {}}
        path.with_name(path.name + ".meta.json").write_text(json.dumps(meta))
        tmp.replace(path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise StorageError(f"no object {key!r}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".meta.json").unlink(missing_ok=True)

    def head(self, key: str) -> dict[str, object]:
        meta_path = self._path(key).with_name(self._path(key).name + ".meta.json")
        return json.loads(meta_path.read_text()) if meta_path.exists() else {}

    def signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}:{expires}".encode(), hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, signature: str) -> bool:
        if expires < time.time():
            return False
        return hmac.compare_digest(self.signature(key, expires), signature)

    def url(self, key: str, expires_in: int) -> str:
        expires = int(time.time()) + expires_in
        sig = self.signature(key, expires)
        return f"{self.public_url}/v1/files/{quote(key)}?expires={expires}&sig={sig}"

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage folder {self.root} is not writable")


@dataclass(frozen=True)
class StoredObject:
    """One listed object: its key relative to the store, size and last write."""

    key: str
    size: int
    last_modified: datetime


class S3Storage:
    """Any S3-compatible endpoint (AWS, MinIO, moto) through boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None,
        region: str,
        addressing_style: str,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": addressing_style},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, **kwargs: object) -> dict[str, object]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kwargs)  # type: ignore[no-any-return]
        except (ClientError, BotoCoreError) as e:
            raise classify_s3_error(op, self.bucket, e) from e

    def put(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        self._call(
            "put_object",
            Key=self._key(key),
            Body=data,
            ContentType=content_type,
            Metadata=metadata or {},
        )

    def get(self, key: str) -> bytes:
        body = self._call("get_object", Key=self._key(key))["Body"]
        return body.read()  # type: ignore[attr-defined, no-any-return]

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", Key=self._key(key))
        except StorageConfigError:
            raise  # no credentials is not "no such object"
        except StorageError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._key(key))  # S3 answers 204 for a missing key

    def delete_batch(self, keys: list[str]) -> None:
        """One DeleteObjects call (at most 1,000 keys); raises if any key was not deleted."""
        if not keys:
            return
        objects = [{"Key": self._key(k)} for k in keys]
        answer = self._call("delete_objects", Delete={"Objects": objects, "Quiet": True})
        errors: list[dict[str, str]] = answer.get("Errors") or []  # type: ignore[assignment]
        if errors:
            first = errors[0]
            raise StorageError(
                f"could not delete {len(errors)} object(s), first {first.get('Key')!r}:"
                f" {first.get('Code')} {first.get('Message')}"
            )

    def presigned_put_url(self, key: str, expires_in: int) -> str:
        """A URL that lets its holder PUT ``key`` without credentials until it expires."""
        return self.client.generate_presigned_url(  # type: ignore[no-any-return]
            "put_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_in,
        )

    def list_objects(self, prefix: str, limit: int | None = None) -> Iterator[StoredObject]:
        """Objects under ``prefix`` (keys relative to the store), at most ``limit``."""
        token: str | None = None
        seen = 0
        while True:
            page = self._call(
                "list_objects_v2",
                Prefix=self._key(prefix),
                MaxKeys=min(1000, limit or 1000),
                **({"ContinuationToken": token} if token else {}),
            )
            for obj in page.get("Contents") or []:  # type: ignore[attr-defined]
                yield StoredObject(
                    key=str(obj["Key"]).removeprefix(f"{self.prefix}/" if self.prefix else ""),
                    size=int(obj["Size"]),
                    last_modified=obj["LastModified"],
                )
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not page.get("IsTruncated"):
                return
            token = str(page["NextContinuationToken"])

    def url(self, key: str, expires_in: int) -> str:
        return self.client.generate_presigned_url(  # type: ignore[no-any-return]
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_in,
        )

    def check(self) -> None:
        self._call("head_bucket")

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (dev and tests; production buckets pre-exist)."""
        try:
            self.check()
        except StorageError:
            self._call("create_bucket")


def storage_from_settings(settings: Settings) -> LocalStorage | S3Storage:
    """Build the store named by ``IMGFARM_STORAGE_URL`` (``file:///path`` or ``s3://bucket/prefix``)."""
    parsed = urlparse(settings.storage_url)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path), settings.public_url, settings.secret_key)
    if parsed.scheme == "s3":
        if len(parsed.netloc) < 3:
            raise StorageError(f"bad bucket name in IMGFARM_STORAGE_URL: {settings.storage_url!r}")
        return S3Storage(
            parsed.netloc,
            parsed.path,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            addressing_style=settings.s3_addressing_style,
        )
    raise StorageError(
        f"IMGFARM_STORAGE_URL must be file:// or s3://, got {settings.storage_url!r}"
    )
