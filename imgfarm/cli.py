"""The ``imgfarm`` command line. Settings are built here, once, and passed down."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from shared.settings import Settings

console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as e:
        raise click.ClickException(f"bad configuration: {e}") from e


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@click.group()
def main() -> None:
    """imgfarm: a render farm for diffusion image-to-image."""


@main.command()
def migrate() -> None:
    """Apply database migrations to IMGFARM_DATABASE_URL."""
    from shared.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    console.print("database is at the latest schema")


@main.group()
def keys() -> None:
    """Manage team API keys."""


@keys.command("create")
@click.argument("team")
def keys_create(team: str) -> None:
    """Create TEAM if needed and print a new API key (last line of output)."""
    from imgfarm.embedded import issue_key

    key = issue_key(_settings(), team)
    console.print(f"new API key for team {team!r} (shown once, store it now):")
    click.echo(key)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def api(host: str, port: int) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from api.app import create_app

    settings = _settings()
    _logging(settings.log_level)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())


@main.command()
@click.option("--model", "alias", required=True, help="The model alias this worker pins.")
def worker(alias: str) -> None:
    """Run a render worker pinned to one model (one process per GPU)."""
    from shared.errors import ImgfarmError
    from worker.boot import run_worker

    settings = _settings()
    _logging(settings.log_level)
    try:
        run_worker(settings, alias, settings.log_level)
    except ImgfarmError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@click.option("--port", default=8000, show_default=True, type=int)
def up(port: int) -> None:
    """Run the embedded stack (api + tiny worker, no servers needed) until Ctrl-C."""
    from imgfarm.embedded import EmbeddedStack

    settings = _settings()
    with EmbeddedStack(settings.data_dir, port=port) as stack:
        console.print(f"imgfarm is up at [bold]{stack.url}[/] (logs in {stack.data_dir}/logs)")
        console.print(f"API key for team 'local':\n{stack.api_key}")
        try:
            while all(p.poll() is None for p in stack.processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping")
    sys.exit(0)


@main.command()
@click.option("--out", default="imgfarm-out", show_default=True, type=click.Path(path_type=Path))
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for renders.")
def demo(out: Path, timeout: float) -> None:
    """Start the embedded stack, render a product photo in 4 seasons, save the images."""
    from imgfarm.demo import run_demo
    from imgfarm.embedded import EmbeddedStack

    settings = _settings()
    console.print("starting the embedded farm (api + tiny worker)...")
    with EmbeddedStack(settings.data_dir) as stack:
        console.print(f"farm up at {stack.url}; submitting 4 seasonal variants")
        paths = run_demo(stack.url, stack.api_key, out, console, timeout=timeout)
    for path in paths:
        click.echo(str(path))
    if len(paths) < 4:
        raise click.ClickException(f"only {len(paths)} of 4 images rendered")
    console.print(
        f"[green]{len(paths)} images written to {out}/[/] "
        "(the built-in 'tiny' model has random weights: expect noise-like images)"
    )
