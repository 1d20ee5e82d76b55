"""``imgfarm prune``: delete what the teams' retention has expired, now (the dispatcher also
runs it every ``IMGFARM_PRUNE_INTERVAL_SECONDS``). Registered by imgfarm/cli.py."""

from __future__ import annotations

import json
from dataclasses import asdict

import click


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--team", default=None, help="Only this team (by name).")
@click.option("--json", "as_json", is_flag=True, help="The counts as one JSON object.")
def prune(dry_run: bool, team: str | None, as_json: bool) -> None:
    """Delete what retention expired.

    Finished jobs past their team's retention_days (a batch once all of it is): outputs,
    the sources no other job or upload uses, rows; then uploads older than retention."""
    from imgfarm.cli import _settings
    from shared.db import make_engine, make_session_factory
    from shared.prune import prune as run_prune
    from shared.storage import storage_from_settings

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        counts = run_prune(
            make_session_factory(engine),
            storage_from_settings(settings),
            team=team,
            dry_run=dry_run,
        )
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, **asdict(counts)}))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {counts.jobs} job(s), {counts.batches} batch(es), {counts.uploads} upload(s),"
        f" {counts.objects} object(s)"
    )
