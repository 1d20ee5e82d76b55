"""The ``imgfarm`` command line. Settings are built here, once, and passed down."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from imgfarm import prune_cli, teams_cli
from shared.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.teams import ApiKeyInfo

# soft_wrap: outside a terminal rich would break long paths and URLs at 80 columns.
console = Console(stderr=True, soft_wrap=True)
STORAGE_INIT_WAIT_SECONDS = 20


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as e:
        raise click.ClickException(f"bad configuration: {e}") from e


def _logging(settings: Settings) -> None:
    """Structured logs (IMGFARM_LOG_FORMAT, IMGFARM_LOG_LEVEL) and, when enabled, traces
    (IMGFARM_OTEL_ENABLED) for this entry point; before it builds any app or engine."""
    from shared.errors import ConfigError
    from shared.logs import configure_logging
    from shared.tracing import configure_tracing

    configure_logging(settings)
    command = click.get_current_context().info_name or "cli"
    try:
        configure_tracing(settings, f"imgfarm-{command}")
    except ConfigError as e:
        raise click.ClickException(str(e)) from e


def first_sentence(text: str | None) -> str:
    """A docstring's first sentence, whole: what a command list shows for it."""
    paragraph = " ".join((text or "").strip().split("\n\n", 1)[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


class _WholeSentences:
    """Command lists show each command's first sentence wrapped, never cut off with '...'."""

    short_help: str | None
    help: str | None

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or first_sentence(self.help)


class _Command(_WholeSentences, click.Command):
    pass


class _Group(_WholeSentences, click.Group):
    command_class = _Command
    group_class = type  # subgroups are _Group too


@click.group(cls=_Group)
@click.version_option(package_name="imgfarm", message="imgfarm %(version)s")
def main() -> None:
    """imgfarm: a render farm for diffusion image-to-image."""


@main.command()
def migrate() -> None:
    """Apply database migrations to IMGFARM_DATABASE_URL and say which ones ran."""
    from shared.migrate import upgrade

    applied = upgrade(_settings().database_url)
    for revision in applied:
        click.echo(f"applied migration {revision}")
    if not applied:
        click.echo("database already at the latest schema: nothing to apply")


@main.group()
def storage() -> None:
    """Object storage (IMGFARM_STORAGE_URL)."""


@storage.command("init")
def storage_init() -> None:
    """Create the bucket (or the local folder) if missing and check it answers. Idempotent."""
    from shared.errors import ImgfarmError, TransientError
    from shared.storage import S3Storage, storage_from_settings

    store = storage_from_settings(_settings())
    # An endpoint started a moment ago (a script's previous line) may not answer yet.
    deadline = time.monotonic() + STORAGE_INIT_WAIT_SECONDS
    while True:
        try:
            if isinstance(store, S3Storage):
                store.ensure_bucket()
            store.check()
            break
        except TransientError as e:
            if time.monotonic() > deadline:
                raise click.ClickException(f"{e} (waited {STORAGE_INIT_WAIT_SECONDS} s)") from e
            time.sleep(0.5)
        except ImgfarmError as e:
            raise click.ClickException(str(e)) from e
    where = (
        f"bucket {store.bucket!r} at {store.client.meta.endpoint_url}"
        if isinstance(store, S3Storage)
        else f"folder {store.root}"
    )
    click.echo(f"storage ready: {where}")


def _report_storage(settings: Settings) -> None:
    """One clear log line at start-up when storage cannot work, naming what to fix.

    The process still starts: /readyz keeps naming the cause until it is fixed.
    """
    import logging

    from shared.errors import StorageConfigError, TransientError
    from shared.storage import storage_from_settings

    log = logging.getLogger("imgfarm.startup")
    try:
        storage_from_settings(settings).check()
    except StorageConfigError as e:
        log.error("storage is misconfigured, nothing can be stored until fixed: %s", e)
    except TransientError as e:
        log.warning("storage does not answer (down, or a wrong IMGFARM_S3_ENDPOINT_URL?): %s", e)


@main.group()
def keys() -> None:
    """Manage team API keys."""


@keys.command("create")
@click.argument("team")
@click.option(
    "--scope",
    type=click.Choice(["admin", "member"]),
    default="admin",
    show_default=True,
    help="member: submit, read and review; admin: also manage keys, webhooks and settings.",
)
def keys_create(team: str, scope: str) -> None:
    """Create TEAM if needed and print a new API key (last line of output).

    Admin by default: the operator's first key of a team sets up its webhooks and hands
    out member keys (``POST /v1/keys``, member unless asked).
    """
    from imgfarm.embedded import issue_key
    from shared.teams import KeyScope

    key = issue_key(_settings(), team, KeyScope(scope))
    console.print(f"new {scope} API key for team {team!r} (shown once, store it now):")
    click.echo(key)


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    """One committed transaction on the farm's database, for the short admin commands."""
    from shared.db import make_engine, make_session_factory, session_scope

    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_rows(keys: list[ApiKeyInfo]) -> list[str]:
    """Aligned plain text (not a rich table): stays greppable and never wraps in a pipe."""
    rows = [("ID", "TEAM", "PREFIX", "SCOPE", "CREATED", "LAST USED", "REVOKED")]
    rows += [
        (
            str(k.id),
            k.team,
            k.prefix,
            k.scope.value,
            _when(k.created_at),
            _when(k.last_used_at) or "never",
            _when(k.revoked_at) or "active",
        )
        for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


@keys.command("list")
@click.option("--team", help="Only this team's keys.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def keys_list(team: str | None, as_json: bool) -> None:
    """List API keys: id, team, display prefix, created, last used (to the minute), revoked
    (never the key itself)."""
    import json

    from shared.teams import UnknownTeam, list_api_keys

    try:
        with _session(_settings()) as session:
            found = list_api_keys(session, team)
    except UnknownTeam as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps([_key_json(k) for k in found], indent=2))
        return
    for line in _key_rows(found):
        click.echo(line)


def _key_json(key: ApiKeyInfo) -> dict[str, str | None]:
    return {
        "id": str(key.id),
        "team": key.team,
        "prefix": key.prefix,
        "scope": key.scope.value,
        "created_at": key.created_at.isoformat(),
        "revoked_at": None if key.revoked_at is None else key.revoked_at.isoformat(),
        "last_used_at": None if key.last_used_at is None else key.last_used_at.isoformat(),
        "status": "active" if key.active else "revoked",
    }


@keys.command("revoke")
@click.argument("key_id_or_prefix")
def keys_revoke(key_id_or_prefix: str) -> None:
    """Revoke one key, named by its id, the start of its id, or its display prefix (imf_...).

    The API refuses it from the next request on. Revoking a revoked key changes nothing.
    """
    from shared.errors import ImgfarmError
    from shared.teams import AmbiguousApiKey, revoke_api_key

    try:
        with _session(_settings()) as session:
            done = revoke_api_key(session, key_id_or_prefix)
    except AmbiguousApiKey as e:
        matches = "\n".join(_key_rows(e.matches))
        raise click.ClickException(f"{e}; nothing revoked. Matches:\n{matches}") from e
    except ImgfarmError as e:
        raise click.ClickException(str(e)) from e
    key = done.key
    if done.already_revoked:
        click.echo(
            f"key {key.id} ({key.prefix}, team {key.team}) was already revoked at "
            f"{_when(key.revoked_at)}"
        )
    else:
        click.echo(f"revoked key {key.id} ({key.prefix}, team {key.team})")


# Registered here, defined in its own module: the operator's team limits (quotas).
main.add_command(teams_cli.teams)
# Data lifecycle: delete what retention expired (also run by the dispatcher).
main.add_command(prune_cli.prune)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def api(host: str, port: int) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from api.app import create_app

    settings = _settings()
    _logging(settings)
    _report_storage(settings)
    # log_config=None: uvicorn's loggers go through our handlers (JSON in deployments).
    uvicorn.run(
        create_app(settings, listen_host=host),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,
    )


@main.command()
@click.option("--model", "alias", help="The model alias this worker pins.")
@click.option(
    "--webhooks",
    is_flag=True,
    help="Deliver webhooks instead (no model, no GPU; IMGFARM_WEBHOOK_* settings).",
)
def worker(alias: str | None, webhooks: bool) -> None:
    """Run a render worker pinned to one model (one process per GPU), or the webhook worker."""
    if webhooks == (alias is not None):
        raise click.UsageError("give either --model ALIAS or --webhooks")
    settings = _settings()
    _logging(settings)
    if webhooks:
        # Its own import: the webhook worker never loads torch or a model.
        from worker.webhooks import run_webhook_worker

        run_webhook_worker(settings, settings.log_level)
        return
    from shared.errors import ImgfarmError
    from worker.boot import run_worker

    assert alias is not None
    _report_storage(settings)
    try:
        run_worker(settings, alias, settings.log_level)
    except ImgfarmError as e:
        raise click.ClickException(str(e)) from e


@main.command()
def dispatcher() -> None:
    """Hand queued jobs from the database to their model queues; take back lost ones."""
    from dispatch.boot import run_dispatcher

    settings = _settings()
    _logging(settings)
    run_dispatcher(settings)


@main.command()
@click.option("--port", default=5555, show_default=True, type=int)
@click.option(
    "--address", default=None, help="Interface to bind [default: all; 127.0.0.1 with --local-only]."
)
@click.option(
    "--local-only",
    is_flag=True,
    help="Serve on 127.0.0.1 without IMGFARM_FLOWER_BASIC_AUTH (a laptop, a tunnel).",
)
@click.option(
    "--inspect-timeout",
    default=1.0,
    show_default=True,
    type=float,
    help="Seconds Flower waits for workers to answer an inspect.",
)
@click.option(
    "--allow-control",
    is_flag=True,
    help="Let the UI revoke tasks and restart or stop workers (read-only otherwise).",
)
def flower(
    port: int, address: str | None, local_only: bool, inspect_timeout: float, allow_control: bool
) -> None:
    """Celery's Flower on the farm's broker, with basic auth (IMGFARM_FLOWER_BASIC_AUTH)."""
    from imgfarm.flower import flower_config, run_flower
    from shared.errors import ConfigError

    settings = _settings()
    _logging(settings)
    try:
        config = flower_config(
            settings,
            port=port,
            address=address,
            local_only=local_only,
            inspect_timeout=inspect_timeout,
            allow_control=allow_control,
        )
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    sys.exit(run_flower(settings, config))


@main.command()
@click.option("--port", default=8000, show_default=True, type=int)
def up(port: int) -> None:
    """Run the embedded stack (api, dispatcher, tiny and webhook workers) until Ctrl-C."""
    from imgfarm.embedded import EmbeddedStack

    settings = _settings()
    with EmbeddedStack(settings.data_dir, port=port) as stack:
        console.print(f"imgfarm is up at [bold]{stack.url}[/] (logs in {stack.data_dir}/logs)")
        console.print("team 'local' (the same key on every start); paste into your shell:")
        # Plain stdout, no markup or wrapping: meant to be copied or eval'ed.
        click.echo(f"export IMGFARM_API_URL={stack.url} IMGFARM_API_KEY={stack.api_key}")
        console.print(f"console: open {stack.url}/ in a browser and sign in with that key")
        try:
            while all(p.poll() is None for p in stack.processes.values()):
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping")
    sys.exit(0)


@main.command()
@click.option("--out", default="imgfarm-out", show_default=True, type=click.Path(path_type=Path))
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for renders.")
def demo(out: Path, timeout: float) -> None:
    """Start the embedded farm, render a sample product photo, write a contact sheet.

    The photo goes in 4 seasons through tiny, and through echo and tiny-inpaint; its cut-out
    gets a new scene from tiny-inpaint and the amazon-main and instagram-portrait presets.
    The source, its mask and cut-out, the renders and the sheet (HTML, PNG) go to OUT.
    """
    from rich.markup import escape

    from imgfarm.demo import DEMO_MODELS, NEXT_STEPS, run_demo
    from imgfarm.embedded import EmbeddedStack

    settings = _settings()
    console.print(f"starting the embedded farm (api + workers for {', '.join(DEMO_MODELS)})...")
    # The demo sends no webhooks: one process fewer to start.
    with EmbeddedStack(settings.data_dir, models=DEMO_MODELS, webhooks=False) as stack:
        console.print(
            f"farm up at {stack.url}; submitting 4 seasonal variants, echo, inpaint and the "
            "product workflow (cut-out -> new scene -> amazon-main + instagram-portrait)"
        )
        result = run_demo(stack.url, stack.api_key, out, console, timeout=timeout)
    for path in result.paths():
        click.echo(str(path))
    for job in result.failed:
        console.print(f"[red]{escape(f'{job.name} ({job.model}): {job.error}')}")
    if result.failed:
        raise click.ClickException(f"{len(result.failed)} of {len(result.jobs)} renders failed")
    console.print(
        f"[green]contact sheet: {result.sheet_html}[/] (open it in a browser; PNG beside it). "
        "The built-in models have random weights: expect noise, except echo (the source back) "
        "and inpaint's kept product pixels (outlined on the sheet)."
    )
    costs = ", ".join(f"{name} {s:.2f} s" for name, s in result.preset_seconds.items())
    console.print(
        f"preset steps per image on this CPU (worker/presets.py, reframe or cut-out on white, "
        f"then encode; best of 3): {costs}"
    )
    console.print(NEXT_STEPS, markup=False, highlight=False, soft_wrap=True)


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--prompt",
    "prompts",
    multiple=True,
    help="A prompt; 'NAME=TEXT' names its folder (default: a slug of the text). Repeatable.",
)
@click.option(
    "--prompts-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with name,prompt[,negative_prompt] columns, or one prompt per line.",
)
@click.option("--model", default="tiny", show_default=True, help="Model alias (GET /v1/models).")
@click.option("--variants", default=1, show_default=True, type=click.IntRange(1))
@click.option("--strength", type=float, help="0 < s <= 1 [default: the model's].")
@click.option("--steps", type=int, help="Denoising steps [default: the model's].")
@click.option("--guidance-scale", type=float, help="[default: the model's]")
@click.option("--width", type=int, help="Output width [default: the model's].")
@click.option("--height", type=int, help="Output height [default: the model's].")
@click.option("--negative-prompt", help="For prompts that do not give their own.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["png", "jpeg", "webp"]),
    default="png",
    show_default=True,
)
@click.option("--seed", type=click.IntRange(0), help="Batch seed [default: drawn by the farm].")
@click.option(
    "--pairing",
    type=click.Choice(["cross", "zip"]),
    default="cross",
    show_default=True,
    help="cross: every image x every prompt; zip: the i-th image (file-name or CSV row "
    "order) with the i-th prompt.",
)
@click.option(
    "--preset",
    "presets",
    multiple=True,
    help="A marketplace preset (GET /v1/presets), e.g. amazon-main: one more output per job, "
    "downloaded as OUT/{sku}/{prompt}/{variant}/{preset}.{ext}. Repeatable.",
)
@click.option("--metadata", help="JSON object stored with the batch.")
@click.option("--wait", is_flag=True, help="Follow the batch, then download its outputs.")
@click.option(
    "--out",
    default="imgfarm-out",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Downloads go to OUT/{sku}/{prompt}/; OUT also keeps the state that makes re-runs "
    "resume instead of resubmitting.",
)
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait may wait.")
@click.option(
    "--api-url",
    envvar="IMGFARM_API_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="[env: IMGFARM_API_URL]",
)
@click.option(
    "--api-key",
    envvar="IMGFARM_API_KEY",
    help="[env: IMGFARM_API_KEY] A team key: imgfarm keys create TEAM, or imgfarm up prints one.",
)
def submit(
    source: Path,
    prompts: tuple[str, ...],
    prompts_file: Path | None,
    model: str,
    variants: int,
    strength: float | None,
    steps: int | None,
    guidance_scale: float | None,
    width: int | None,
    height: int | None,
    negative_prompt: str | None,
    output_format: str,
    seed: int | None,
    pairing: str,
    presets: tuple[str, ...],
    metadata: str | None,
    wait: bool,
    out: Path,
    timeout: float,
    api_url: str,
    api_key: str | None,
) -> None:
    """Render every image in SOURCE (a folder, or a CSV 'sku,image_path') x every prompt.

    Prints the batch id. Running it again with the same inputs and OUT submits nothing new
    and downloads only what is missing.
    """
    if not api_key:
        raise click.UsageError(
            "no API key: pass --api-key or set IMGFARM_API_KEY "
            "(imgfarm keys create TEAM prints one; imgfarm up prints an export line)"
        )
    import json

    import httpx

    from imgfarm.client import ApiError, Client
    from imgfarm.submit import (
        SubmitError,
        SubmitRequest,
        read_images,
        read_prompts,
        run_submit,
        skipped_files,
    )

    for skipped in skipped_files(source):
        console.print(f"[yellow]skipped {skipped}: not an image file[/] (by its extension)")

    knobs = {
        "strength": strength,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "width": width,
        "height": height,
        "negative_prompt": negative_prompt,
        "output_format": output_format,
        "seed": seed,
        # left out when not asked for: the same inputs as before keep their batch (the key)
        "pairing": None if pairing == "cross" else pairing,
        "preset": list(presets) or None,
    }
    try:
        meta = json.loads(metadata) if metadata else None
        if meta is not None and not isinstance(meta, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--metadata")
        request = SubmitRequest(
            images=read_images(source),
            prompts=read_prompts(prompts, prompts_file),
            model=model,
            variants=variants,
            params={k: v for k, v in knobs.items() if v is not None},
            metadata=meta,
        )
        with Client(api_url, api_key) as client:
            batch_id, result = run_submit(client, request, out, console, wait=wait, timeout=timeout)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--metadata") from e
    except (SubmitError, ApiError, TimeoutError) as e:
        raise click.ClickException(str(e)) from e
    except httpx.HTTPError as e:
        raise click.ClickException(f"cannot reach the API at {api_url}: {e}") from e
    click.echo(batch_id)
    if result is not None and result.not_rendered:
        sys.exit(1)
