"""``imgfarm teams``: an operator sets each team's share and limits, and reads them back.

Registered on the main command group by imgfarm/cli.py. The limits are enforced at intake
(api/quotas.py) and by the dispatcher (the weight); shared/teams.py ``set_team_limits`` is
their one writer.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from shared.models import Team

# Written for a limit to clear it: the team is then unlimited there.
CLEAR_WORDS = ("none", "unlimited")
LIST_HEADER = ("TEAM", "WEIGHT", "MAX_QUEUED", "MAX_BATCH", "RATE", "MONTHLY_IMAGES", "RETENTION")
RATE_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}


class _Cleared:
    """The value an option takes for ``none`` / ``unlimited`` (click's None means "not given")."""

    def __repr__(self) -> str:
        return "unlimited"


CLEARED = _Cleared()


class LimitType(click.ParamType):
    """A whole number at least ``minimum``, or ``none`` / ``unlimited``."""

    name = "N|none"

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | _Cleared):
            return value
        text = str(value).strip().lower().replace(",", "").replace("_", "")
        if text in CLEAR_WORDS:
            return CLEARED
        try:
            number = int(text)
        except ValueError:
            self.fail(f"{value!r} is not a whole number, 'none' or 'unlimited'", param, ctx)
        if number < self.minimum:
            self.fail(f"{value!r} is below {self.minimum}", param, ctx)
        return number


class RateType(click.ParamType):
    """Jobs per second, minute or hour (``10/s``, ``600/min``, ``5``: per second), or none."""

    name = "N/s|N/min|N/h|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float | _Cleared):
            return value
        text = str(value).strip().lower()
        if text in CLEAR_WORDS:
            return CLEARED
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+))?", text)
        if match is None or (match.group(2) or "s") not in RATE_UNITS:
            self.fail(f"{value!r} is not a rate like 10/s, 600/min or 36000/h", param, ctx)
        per_second = float(match.group(1)) / RATE_UNITS[match.group(2) or "s"]
        if per_second <= 0:
            self.fail(f"{value!r} must be above zero (or 'none' for unlimited)", param, ctx)
        return per_second


def _positive_weight(ctx: click.Context, param: click.Parameter, value: float | None) -> Any:
    if value is not None and value <= 0:
        raise click.BadParameter("must be above zero: a team's share is proportional to it")
    return value


@click.group()
def teams() -> None:
    """Set and show each team's weight and limits (quotas)."""


@teams.command("update")
@click.argument("team")
@click.option(
    "--weight",
    type=float,
    callback=_positive_weight,
    help="Its share of each model's queue while it has work, relative to others (default 1).",
)
@click.option(
    "--max-queued", type=LimitType(0), metavar="N|none", help="Most jobs queued or running at once."
)
@click.option("--max-batch", type=LimitType(1), metavar="N|none", help="Most jobs in one batch.")
@click.option(
    "--rate",
    type=RateType(),
    metavar="N/s|none",
    help="Jobs it may submit: 10/s, 600/min, 36000/h.",
)
@click.option(
    "--monthly-images", type=LimitType(0), metavar="N|none", help="Images a calendar month (UTC)."
)
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    help="Days finished jobs' outputs and rows are kept (default 30).",
)
def teams_update(team: str, **options: Any) -> None:
    """Change TEAM's weight and limits.

    Options left out stay as they are; 'none' (or 'unlimited') clears a limit. Prints
    the team as 'teams show' does.
    """
    from imgfarm.cli import _session, _settings
    from shared.teams import UnknownTeam, set_team_limits

    fields = {
        ("rate_per_second" if name == "rate" else name): None if value is CLEARED else value
        for name, value in options.items()
        if value is not None
    }
    if not fields:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    try:
        with _session(_settings()) as session:
            row = _team(session, team)
            set_team_limits(session, row.id, **fields)
            lines = _show_lines(session, row)
    except UnknownTeam as e:
        raise click.ClickException(str(e)) from e
    for line in lines:
        click.echo(line)


@teams.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def teams_list(as_json: bool) -> None:
    """Every team's weight and limits."""
    from sqlalchemy import select

    from imgfarm.cli import _session, _settings
    from shared.models import Team

    with _session(_settings()) as session:
        found = list(session.scalars(select(Team).order_by(Team.name)))
        if as_json:
            click.echo(json.dumps([_limits_json(t) for t in found], indent=2))
            return
        rows = [LIST_HEADER, *(_limit_cells(t) for t in found)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@teams.command("show")
@click.argument("team")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def teams_show(team: str, as_json: bool) -> None:
    """TEAM's limits, this month's use, its queue.

    Images and GPU-seconds count from the usage the workers record with each success.
    """
    from imgfarm.cli import _session, _settings
    from shared.teams import UnknownTeam

    try:
        with _session(_settings()) as session:
            row = _team(session, team)
            if as_json:
                click.echo(json.dumps(_show_json(session, row), indent=2))
                return
            lines = _show_lines(session, row)
    except UnknownTeam as e:
        raise click.ClickException(str(e)) from e
    for line in lines:
        click.echo(line)


def _team(session: Any, name: str) -> Team:
    from sqlalchemy import select

    from shared.models import Team
    from shared.teams import UnknownTeam

    row = session.scalar(select(Team).where(Team.name == name))
    if row is None:
        # No team is made here: a typo must not create one (`imgfarm keys create` does).
        raise UnknownTeam(f"no team named {name!r}")
    return row  # type: ignore[no-any-return]


def _limit(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:,.0f}"


def _rate(per_second: float | None) -> str:
    return "unlimited" if per_second is None else f"{per_second:g}/s"


def _limit_cells(team: Team) -> tuple[str, ...]:
    return (
        team.name,
        f"{team.weight:g}",
        _limit(team.max_queued),
        _limit(team.max_batch),
        _rate(team.rate_per_second),
        _limit(team.monthly_images),
        f"{team.retention_days}d",
    )


def _limits_json(team: Team) -> dict[str, Any]:
    return {
        "team": team.name,
        "weight": team.weight,
        "max_queued": team.max_queued,
        "max_batch": team.max_batch,
        "rate_per_second": team.rate_per_second,
        "monthly_images": team.monthly_images,
        "retention_days": team.retention_days,
    }


def _show_json(session: Any, team: Team) -> dict[str, Any]:
    from shared.usage import month_of, month_usage, unfinished_jobs

    month = month_of()
    usage = month_usage(session, team.id, month)
    return _limits_json(team) | {
        "month": month,
        "images_this_month": sum(u.images for u in usage),
        "gpu_seconds_by_model": {u.model: round(u.gpu_seconds, 3) for u in usage},
        "queued_now": unfinished_jobs(session, team.id),
    }


def _show_lines(session: Any, team: Team) -> list[str]:
    shown = _show_json(session, team)
    gpu = ", ".join(f"{m} {s:g}" for m, s in shown["gpu_seconds_by_model"].items()) or "none"
    pairs = [
        ("team", team.name),
        ("weight", f"{team.weight:g}"),
        ("max queued", _limit(team.max_queued)),
        ("max batch", _limit(team.max_batch)),
        ("rate", _rate(team.rate_per_second)),
        ("monthly images", _limit(team.monthly_images)),
        ("retention", f"{team.retention_days} days"),
        ("queued now", f"{shown['queued_now']:,}"),
        (f"images {shown['month']}", f"{shown['images_this_month']:,}"),
        ("gpu-seconds", gpu),
    ]
    return [f"{label + ':':<16}{value}" for label, value in pairs]
