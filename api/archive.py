"""A batch's manifest (JSON or CSV) and its zip archive, streamed as the rows arrive.

Rows are read a page at a time, each page its own short query, so a slow download holds
neither a transaction nor more than one output in memory.

A job's render sits at ``{sku}/{prompt}/{variant}.{ext}``; each marketplace preset's output
of it (an output dict with ``"preset"``) in the folder beside it,
``{sku}/{prompt}/{variant}/{preset}.{ext}``. The manifest has one row per output: the
render's (``preset`` null), then each preset's; a job without outputs has one row.
"""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from shared.db import session_scope
from shared.errors import StorageError, TransientError
from shared.models import Job, utcnow
from shared.names import is_portable
from shared.schemas import FIDELITY_SCORES, ManifestItem
from shared.storage import Storage

PAGE_SIZE = 500  # rows per query when streaming a manifest or an archive
FLUSH_BYTES = 64 * 1024  # manifest text is sent in chunks of about this size


@dataclass(frozen=True)
class Row:
    """What the manifest and the archive need of one job."""

    id: uuid.UUID
    sku: str
    prompt_name: str
    variant: int
    params: dict[str, Any]
    status: str
    error: str | None
    outputs: list[dict[str, Any]] | None
    fidelity: dict[str, Any] | None
    review: str | None
    finished_at: datetime | None
    provenance: dict[str, Any] | None


def output_path(
    sku: str, prompt_name: str, variant: int, key: str, index: int = 0, preset: str | None = None
) -> str:
    """Where an output sits in the archive and the CLI's download tree: the render as
    ``{variant}.{ext}``, a preset's output as ``{variant}/{preset}.{ext}``."""
    ext = key.rsplit(".", 1)[-1]
    if preset is not None:
        return f"{sku}/{prompt_name}/{variant}/{preset_stem(preset, ext)}.{ext}"
    stem = str(variant) if index == 0 else f"{variant}-{index}"
    return f"{sku}/{prompt_name}/{stem}.{ext}"


def preset_stem(preset: str, ext: str) -> str:
    """The file name stem of a preset's output. Preset names are lowercase slugs
    (shared/presets.py), but a slug can still be a Windows device name (``con``, ``aux``,
    ``lpt1``, reserved with any extension): such a name gets a ``preset-`` prefix."""
    return preset if is_portable(f"{preset}.{ext}") else f"preset-{preset}"


def iter_rows(
    session_factory: sessionmaker[Session], batch_id: uuid.UUID, *extra: ColumnElement[bool]
) -> Iterator[Row]:
    """The batch's jobs in (sku, prompt, variant) order, a page at a time.

    Each page is its own short query (keyset on the names, unique within a batch), so a slow
    download never holds a transaction or a server-side cursor open.
    """
    order = (Job.sku, Job.prompt_name, Job.variant)
    after: tuple[str, str, int] | None = None
    while True:
        query = (
            select(
                Job.id,
                Job.sku,
                Job.prompt_name,
                Job.variant,
                Job.params,
                Job.status,
                Job.error,
                Job.outputs,
                Job.fidelity,
                Job.review,
                Job.finished_at,
                Job.provenance,
            )
            .where(Job.batch_id == batch_id, *extra)
            .order_by(*order)
            .limit(PAGE_SIZE)
        )
        if after is not None:
            query = query.where(tuple_(*order) > tuple_(*after))
        with session_scope(session_factory) as session:
            page = [Row(*r) for r in session.execute(query).tuples()]
        yield from page
        if len(page) < PAGE_SIZE:
            return
        last = page[-1]
        after = (last.sku, last.prompt_name, last.variant)


def manifest_items(
    rows: Iterable[Row], storage: Storage, expires_in: int
) -> Iterator[ManifestItem]:
    """Manifest items of each row: its render's (or, before it rendered, its job's alone),
    then one per preset output, each with its archive path and URL."""
    for row in rows:
        outputs = row.outputs or []
        first = outputs[0] if outputs else None
        job = {
            "job_id": row.id,
            "sku": row.sku,
            "prompt_name": row.prompt_name,
            "variant": row.variant,
            "seed": row.params["seed"],
            "status": row.status,
            "error": row.error,
            "review": row.review,
            **fidelity_columns(row.fidelity),
            **licence_of(row.provenance),
        }
        for output in [first, *(o for o in outputs[1:] if o.get("preset"))]:
            preset = None if output is None else output.get("preset")
            key = None if output is None else output["key"]
            yield ManifestItem(
                **job,
                preset=preset,
                path=None if key is None else _path_of(row, key, preset),
                output_url=None if key is None else storage.url(key, expires_in),
            )


def _path_of(row: Row, key: str, preset: str | None, index: int = 0) -> str:
    return output_path(row.sku, row.prompt_name, row.variant, key, index, preset)


def licence_of(provenance: dict[str, Any] | None) -> dict[str, Any]:
    """The licence a job was rendered under, as its provenance recorded it (None before it
    rendered, and for jobs rendered before licences were recorded)."""
    provenance = provenance or {}
    return {
        "license": provenance.get("license"),
        "commercial_use": provenance.get("commercial_use"),
    }


def fidelity_columns(fidelity: dict[str, Any] | None) -> dict[str, Any]:
    """The output's scores as flat manifest columns (None until it rendered)."""
    fidelity = fidelity or {}
    return {f"fidelity_{name}": fidelity.get(name) for name in FIDELITY_SCORES}


def _chunked(pieces: Iterable[str]) -> Iterator[bytes]:
    """Join small strings into chunks of about FLUSH_BYTES (fewer, larger writes)."""
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= FLUSH_BYTES:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


def manifest_json(batch_id: uuid.UUID, items: Iterable[ManifestItem]) -> Iterator[bytes]:
    """``{"batch_id": ..., "items": [...]}``, written as the rows arrive."""

    def pieces() -> Iterator[str]:
        yield f'{{"batch_id":"{batch_id}","items":['
        for n, item in enumerate(items):
            yield ("," if n else "") + item.model_dump_json()
        yield "]}"

    return _chunked(pieces())


MANIFEST_COLUMNS = list(ManifestItem.model_fields)
# A spreadsheet opening the CSV runs a cell that starts with one of these as a formula
# (=HYPERLINK(...) in a sku, an error text). OWASP's CSV-injection advice: prefix such a cell
# with a single quote, which spreadsheets show as text. The JSON manifest stays exact.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def manifest_csv(items: Iterable[ManifestItem]) -> Iterator[bytes]:
    """The manifest as CSV with a header row, written as the rows arrive; cells that a
    spreadsheet would run as formulas are neutralised (see FORMULA_STARTS)."""

    def pieces() -> Iterator[str]:
        line = io.StringIO()
        writer = csv.writer(line)
        writer.writerow(MANIFEST_COLUMNS)
        for item in items:
            values = item.model_dump(mode="json")
            writer.writerow([_csv_cell(values[c]) for c in MANIFEST_COLUMNS])
            yield line.getvalue()
            line.seek(0)
            line.truncate()
        yield line.getvalue()

    return _chunked(pieces())


class _ChunkSink(io.RawIOBase):
    """A write-only, unseekable file: zipfile writes into it, the generator drains it.

    Unseekable on purpose: zipfile then writes sizes after each entry's data (data
    descriptors) instead of seeking back, which is what makes the zip streamable.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


@dataclass(frozen=True)
class ArchiveEntry:
    path: str
    key: str
    modified: datetime | None


def archive_entries(rows: Iterable[Row]) -> Iterator[ArchiveEntry]:
    """Every output of ``rows``, named where it sits in the archive."""
    for row in rows:
        for index, output in enumerate(row.outputs or []):
            path = _path_of(row, output["key"], output.get("preset"), index)
            yield ArchiveEntry(path, output["key"], row.finished_at)


def iter_archive(entries: Iterable[ArchiveEntry], storage: Storage) -> Iterator[bytes]:
    """A zip of ``entries``, streamed: one output in memory at a time, fetched when its
    turn comes. Outputs are stored, not deflated (PNG, JPEG and WebP are compressed
    already). An output that cannot be read is listed in MISSING.txt at the end: by then
    the 200 status has been sent and an error status cannot be."""
    sink = _ChunkSink()
    missing: list[str] = []
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for entry in entries:
            try:
                data = storage.get(entry.key)
            except (StorageError, TransientError) as e:
                missing.append(f"{entry.path}: {e}")
                continue
            # a zip entry holds wall-clock fields without a zone: these are UTC
            stamp = (entry.modified or utcnow()).timetuple()[:6]
            info = zipfile.ZipInfo(entry.path, date_time=stamp)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
            del data
            yield sink.take()
        if missing:
            archive.writestr("MISSING.txt", "\n".join(missing) + "\n")
    yield sink.take()
