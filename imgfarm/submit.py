"""``imgfarm submit``: a folder (or CSV) of product photos x prompts x variants as one batch.

1. read the inputs   2. upload what is not uploaded yet   3. submit the batch (idempotent)
4. follow it with a progress bar   5. download into ``OUT/{sku}/{prompt}/{variant}.{ext}``
   (each marketplace preset's output beside it, ``{variant}/{preset}.{ext}``)

``--pairing zip`` pairs the i-th image (by file name in a folder, by row in a CSV) with the
i-th prompt instead of every image with every prompt.

Running it again with the same inputs submits nothing new: the ``Idempotency-Key`` is
derived from the inputs, and the upload ids of the first run are kept in a small state file
in OUT, so the request body is the same too. Files already downloaded are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import mimetypes
import queue
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from imgfarm.client import ApiError, Client
from shared.names import first_collision, name_problem

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".mpo", ".webp", ".avif", ".gif", ".bmp", ".tif", ".tiff"}
)
STATE_FILE = ".imgfarm-submit.json"
# Multipart uploads: the api takes at most 100 files per request; keep requests modest.
UPLOAD_BATCH_FILES = 50
UPLOAD_BATCH_BYTES = 64 * 1024 * 1024
DOWNLOAD_THREADS = 8
T = TypeVar("T")
_PROMPT_NAME = re.compile(r"^([\w.-]{1,100})=(.+)$", re.S)


class SubmitError(Exception):
    """Inputs the command cannot use; the message says what to fix."""


@dataclass(frozen=True)
class SourceImage:
    sku: str
    path: Path
    digest: str  # SHA-256 of the file: identifies the content across runs


@dataclass
class SubmitRequest:
    """Everything that defines the batch; its hash is the idempotency key."""

    images: list[SourceImage]
    prompts: list[dict[str, str]]
    model: str
    variants: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None

    def canonical(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "images": [[i.sku, i.digest] for i in self.images],
                "prompts": self.prompts,
                "variants": self.variants,
                "params": self.params,
                "metadata": self.metadata,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    def idempotency_key(self) -> str:
        """Same inputs (file contents, names, prompts, knobs) → same key."""
        return "imgfarm-submit-" + hashlib.sha256(self.canonical().encode()).hexdigest()[:40]

    def check_pairing(self) -> None:
        """Refuse, before anything is uploaded, a zip of unequal counts (the api would)."""
        if self.params.get("pairing") == "zip" and len(self.images) != len(self.prompts):
            raise SubmitError(
                f"--pairing zip pairs the i-th image with the i-th prompt, so it needs as many "
                f"of each: {len(self.images)} images (in file-name or CSV row order) and "
                f"{len(self.prompts)} prompts"
            )

    def batch_body(self, upload_ids: dict[str, str]) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": [{"image": upload_ids[i.digest], "sku": i.sku} for i in self.images],
            "prompts": self.prompts,
            "variants": self.variants,
            **self.params,
            **({"metadata": self.metadata} if self.metadata is not None else {}),
        }


# --- 1. inputs -------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_images(source: Path) -> list[SourceImage]:
    """A folder of images (sku = file name without extension) or a CSV ``sku,image_path``
    (paths relative to the CSV's folder)."""
    if source.is_dir():
        pairs = [
            (p.stem, p)
            for p in sorted(source.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not pairs:
            raise SubmitError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}")
    else:
        pairs = _read_csv(source)
    _check_names([sku for sku, _ in pairs], "sku", [str(path) for _, path in pairs])
    return [SourceImage(sku, path, _digest(path)) for sku, path in pairs]


def skipped_files(source: Path) -> list[Path]:
    """Files of a SOURCE folder that ``read_images`` leaves out (not an image suffix), so the
    user hears of them; hidden files (.DS_Store) are nobody's product photo."""
    if not source.is_dir():
        return []
    return [
        p
        for p in sorted(source.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_SUFFIXES
    ]


def _check_names(names: list[str], what: str, where: list[str]) -> None:
    """Refuse, before anything is uploaded, names the farm would refuse: each must be a
    portable file name, and no two may be one folder on macOS or Windows (``SKU-A`` and
    ``sku-a``): the api applies the same rule (shared/names.py) to the batch."""
    for name, origin in zip(names, where, strict=True):
        if problem := name_problem(name):
            raise SubmitError(f"{what} {name!r} ({origin}) cannot name a folder: it {problem}")
    collision = first_collision(names)
    if collision is None:
        return
    first, later = collision
    a, b = names[first], names[later]
    if a == b:
        raise SubmitError(f"{what} {a!r} is used by both {where[first]} and {where[later]}")
    raise SubmitError(
        f"{what} {b!r} ({where[later]}) and {what} {a!r} ({where[first]}) would be one folder "
        "on macOS and Windows (they differ only by case or Unicode normalisation): rename one"
    )


def _read_csv(source: Path) -> list[tuple[str, Path]]:
    with open(source, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"sku", "image_path"} <= set(reader.fieldnames):
            raise SubmitError(f"{source} needs a header row with the columns sku,image_path")
        pairs = []
        for line, row in enumerate(reader, start=2):
            sku, image = (row.get("sku") or "").strip(), (row.get("image_path") or "").strip()
            if not sku or not image:
                raise SubmitError(f"{source}:{line}: sku and image_path are both required")
            path = (source.parent / image).resolve()
            if not path.is_file():
                raise SubmitError(f"{source}:{line}: no file {path}")
            pairs.append((sku, path))
    if not pairs:
        raise SubmitError(f"{source} lists no images")
    return pairs


def parse_prompt(text: str) -> dict[str, str]:
    """``winter=a red sneaker on a snowy porch`` names the prompt; plain text does not."""
    match = _PROMPT_NAME.match(text.strip())
    if match:
        return {"name": match.group(1), "prompt": match.group(2).strip()}
    return {"prompt": text.strip()}


def read_prompts(options: tuple[str, ...] | list[str], file: Path | None) -> list[dict[str, str]]:
    """Prompts from ``--prompt`` options, then from a file: CSV with ``name,prompt`` (and
    optionally ``negative_prompt``) columns, or text with one prompt per line (``#`` comments)."""
    prompts = [parse_prompt(p) for p in options if p.strip()]
    if file is not None:
        if file.suffix.lower() == ".csv":
            with open(file, newline="", encoding="utf-8-sig") as f:
                for row in csv.DictReader(f):
                    if not (row.get("prompt") or "").strip():
                        continue
                    item = {k: row[k].strip() for k in ("name", "prompt", "negative_prompt")}
                    prompts.append({k: v for k, v in item.items() if v})
        else:
            for line in file.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    prompts.append(parse_prompt(line))
    if not prompts:
        raise SubmitError("give at least one --prompt or a --prompts-file")
    named = [(p["name"], f"prompt {n + 1}") for n, p in enumerate(prompts) if "name" in p]
    _check_names([name for name, _ in named], "prompt name", [where for _, where in named])
    return prompts


# --- 2. and 3. upload and submit -------------------------------------------------------------


@dataclass
class State:
    """What a previous run did, kept in OUT: batch ids by key, upload ids by file content."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, out: Path) -> State:
        path = out / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("uploads", {})
        data.setdefault("batches", {})
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)

    @property
    def uploads(self) -> dict[str, str]:
        return self.data["uploads"]  # type: ignore[no-any-return]

    @property
    def batches(self) -> dict[str, str]:
        return self.data["batches"]  # type: ignore[no-any-return]


def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _upload_groups(images: list[SourceImage]) -> Iterator[list[SourceImage]]:
    group: list[SourceImage] = []
    size = 0
    for image in images:
        image_size = image.path.stat().st_size
        if group and (len(group) >= UPLOAD_BATCH_FILES or size + image_size > UPLOAD_BATCH_BYTES):
            yield group
            group, size = [], 0
        group.append(image)
        size += image_size
    if group:
        yield group


def upload_images(
    client: Client, images: list[SourceImage], state: State, console: Console
) -> dict[str, str]:
    """Upload each distinct file not uploaded by an earlier run; returns digest → upload id.

    Straight to S3 with presigned PUTs where the farm offers them, else multipart through
    the api. The state is saved after each step, so an interrupted run resumes.
    """
    todo = list({i.digest: i for i in images if i.digest not in state.uploads}.values())
    if todo:
        with _progress(console, "uploading") as progress:
            task = progress.add_task("upload", total=len(todo))
            if not _upload_presigned(client, todo, state, progress, task):
                _upload_multipart(client, todo, state, progress, task)
    return {i.digest: state.uploads[i.digest] for i in images}


def _upload_multipart(
    client: Client, todo: list[SourceImage], state: State, progress: Progress, task: TaskID
) -> None:
    for group in _upload_groups(todo):
        files = [(i.path.name, i.path.read_bytes(), _content_type(i.path)) for i in group]
        for image, upload in zip(group, client.upload_files(files), strict=True):
            state.uploads[image.digest] = upload["id"]
        state.save()
        progress.advance(task, len(group))


def _upload_presigned(
    client: Client, todo: list[SourceImage], state: State, progress: Progress, task: TaskID
) -> bool:
    """Presign → PUT → complete for each file; False if the farm has no S3 storage."""
    for image in todo:
        try:
            presigned = client.presign_upload(image.path.name)
        except ApiError as e:
            if e.status_code == 400 and not state.uploads:
                return False  # local storage: multipart it is
            raise
        client.put_presigned(presigned["url"], image.path.read_bytes())
        state.uploads[image.digest] = client.complete_upload(presigned["id"])["id"]
        state.save()
        progress.advance(task)
    return True


def submit_batch(client: Client, request: SubmitRequest, out: Path, console: Console) -> dict:
    """Upload what is missing and submit; the same inputs always give the same batch."""
    request.check_pairing()
    out.mkdir(parents=True, exist_ok=True)
    state = State.load(out)
    upload_ids = upload_images(client, request.images, state, console)
    key = request.idempotency_key()
    try:
        accepted = client.submit_batch(request.batch_body(upload_ids), idempotency_key=key)
    except ApiError as e:
        if e.status_code == 409:
            raise SubmitError(
                f"these inputs were submitted before (key {key}) with uploads this folder does "
                f"not remember ({out / STATE_FILE} is missing or was changed); pass the --out "
                "folder of that run to resume it"
            ) from e
        raise
    if state.batches.get(key) == accepted["id"]:
        console.print(f"already submitted: resuming batch {accepted['id']} (nothing new sent)")
    state.batches[key] = accepted["id"]
    state.save()
    return accepted  # type: ignore[no-any-return]


# --- 4. and 5. follow and download -----------------------------------------------------------


def _progress(console: Console, what: str) -> Progress:
    """A bar for a counted step (uploads, downloads); progress goes to stderr."""
    return Progress(
        TextColumn(f"{what:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def follow_batch(client: Client, batch_id: str, console: Console, timeout: float) -> dict[str, Any]:
    """Follow the batch's event stream (``GET /v1/batches/{id}/events``) with a progress bar
    until every job is final; returns the batch. The bar moves on the stream's counts, so
    the api is asked nothing while nothing changes; a dropped stream is resumed after its
    last event (imgfarm/transport.py)."""
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("rendering  "),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("render", total=None, detail="")
        for event in _until(client.batches.events(batch_id), deadline):
            if event.event in ("snapshot", "batch.progress", "end"):
                counts = event.data["counts"]
                detail = f"failed {counts['failed']}" if counts["failed"] else ""
                total, done = event.data["job_count"], event.data["done"]
                progress.update(task, total=total, completed=done, detail=detail)
            if event.event == "end":
                return client.get_batch(batch_id)
    raise TimeoutError(
        f"batch {batch_id}: not done after {timeout:.0f}s; "
        "run the same command again to keep waiting"
    )


def _until(events: Iterator[T], deadline: float) -> Iterator[T]:
    """``events`` until they end or ``deadline`` (monotonic) passes. A quiet stream blocks
    between keep-alives, so it is read on a daemon thread and handed over with a timeout."""
    handed: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=64)

    def read() -> None:
        try:
            for event in events:
                handed.put((True, event))
            handed.put((False, None))
        except BaseException as e:  # raised where the caller reads, not lost in the thread
            handed.put((False, e))

    threading.Thread(target=read, name="imgfarm-events", daemon=True).start()
    while (left := deadline - time.monotonic()) > 0:
        try:
            more, item = handed.get(timeout=left)
        except queue.Empty:
            return
        if not more:
            if item is not None:
                raise item
            return
        yield item


@dataclass
class DownloadResult:
    downloaded: list[Path] = field(default_factory=list)
    present: list[Path] = field(default_factory=list)
    not_rendered: list[dict[str, Any]] = field(default_factory=list)


def download_outputs(client: Client, batch_id: str, out: Path, console: Console) -> DownloadResult:
    """Fetch every succeeded output to ``OUT/{path}``; files already there are kept."""
    result = DownloadResult()
    todo: list[tuple[str, Path]] = []
    root = out.resolve()
    for item in client.batch_manifest(batch_id)["items"]:
        if item["status"] != "succeeded" or not item["path"]:
            result.not_rendered.append(item)
            continue
        path = (root / item["path"]).resolve()
        if not path.is_relative_to(root):
            raise SubmitError(f"refusing to write outside {root}: {item['path']!r}")
        if path.exists():
            result.present.append(path)
        else:
            todo.append((item["output_url"], path))
    if todo:
        with _progress(console, "downloading") as progress:
            task = progress.add_task("download", total=len(todo))
            with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
                for path in pool.map(lambda t: client.fetch_to(*t), todo):
                    result.downloaded.append(path)
                    progress.advance(task)
    return result


def run_submit(
    client: Client,
    request: SubmitRequest,
    out: Path,
    console: Console,
    *,
    wait: bool,
    timeout: float,
) -> tuple[str, DownloadResult | None]:
    """Submit (or find again) the batch; with ``wait``, follow it and download its outputs."""
    accepted = submit_batch(client, request, out, console)
    batch_id = accepted["id"]
    console.print(f"batch {batch_id}: {accepted['job_count']} jobs (seed {accepted['seed']})")
    if not wait:
        console.print(
            "to follow it and download the outputs, run the same command again with --wait "
            f"(it submits nothing new), or GET /v1/batches/{batch_id}"
        )
        return batch_id, None
    batch = follow_batch(client, batch_id, console, timeout)
    result = download_outputs(client, batch_id, out, console)
    counts = batch["counts"]
    console.print(
        f"{counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['canceled']} canceled; {len(result.downloaded)} file(s) downloaded, "
        f"{len(result.present)} already in {out}"
    )
    for item in result.not_rendered[:10]:
        console.print(
            f"[red]{item['sku']}/{item['prompt_name']}/{item['variant']}: {item['status']}"
            f"{': ' + item['error'] if item['error'] else ''}"
        )
    return batch_id, result
