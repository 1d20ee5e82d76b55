"""``imgfarm teams update|list|show`` as an operator runs them, against the session's
PostgreSQL database, and the limits they set as the api enforces them."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner, Result

from imgfarm.cli import main
from shared.db import session_scope
from shared.models import UsageMonthly
from shared.teams import create_api_key, ensure_team
from shared.usage import month_of
from tests.factories import batch_body


@pytest.fixture
def cli(settings_env):
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, list(args), env=settings_env, catch_exceptions=False)

    return run


@pytest.fixture
def team(session_factory) -> tuple[str, str]:
    """A team of its own (name, admin key): the session database is shared."""
    with session_scope(session_factory) as s:
        row = ensure_team(s, f"teams-{uuid.uuid4().hex[:8]}")
        return row.name, create_api_key(s, row)


def shown(cli, name: str) -> dict:
    result = cli("teams", "show", name, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_update_sets_every_limit_and_none_clears_one(cli, team):
    name, _ = team
    result = cli(
        "teams", "update", name, "--weight", "2", "--max-queued", "50000", "--max-batch",
        "10000", "--rate", "600/min", "--monthly-images", "200,000", "--retention-days", "7",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rate:           10/s" in result.stdout and "max batch:      10,000" in result.stdout
    limits = shown(cli, name)
    assert {k: limits[k] for k in ("weight", "max_queued", "max_batch", "rate_per_second")} == {
        "weight": 2.0,
        "max_queued": 50000,
        "max_batch": 10000,
        "rate_per_second": 10.0,
    }
    assert (limits["monthly_images"], limits["retention_days"]) == (200000, 7)
    assert cli("teams", "update", name, "--max-batch", "none", "--rate", "unlimited").exit_code == 0
    limits = shown(cli, name)
    assert limits["max_batch"] is None and limits["rate_per_second"] is None
    assert limits["max_queued"] == 50000, "options left out stay as they were"


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--rate", "10/fortnight", "not a rate like 10/s"),
        ("--rate", "0/s", "must be above zero"),
        ("--max-batch", "0", "below 1"),
        ("--max-queued", "lots", "not a whole number"),
        ("--weight", "0", "must be above zero"),
        ("--weight", "none", "is not a valid float"),
        ("--retention-days", "0", "0 is not in the range x>=1"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_option(cli, team, option, value, says):
    name, _ = team
    before = shown(cli, name)
    result = cli("teams", "update", name, option, value)
    assert result.exit_code == 2
    assert option in result.stderr and says in result.stderr
    assert shown(cli, name) == before, "nothing changed"


def test_unknown_team_is_an_error_and_is_not_created(cli):
    result = cli("teams", "update", "no-such-team-anywhere", "--weight", "2")
    assert result.exit_code == 1
    assert "no team named 'no-such-team-anywhere'" in result.stderr
    assert "no-such-team-anywhere" not in cli("teams", "list").stdout


def test_list_shows_each_team_once_with_its_limits(cli, team):
    name, _ = team
    assert cli("teams", "update", name, "--max-queued", "5", "--rate", "2").exit_code == 0
    result = cli("teams", "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "TEAM",
        "WEIGHT",
        "MAX_QUEUED",
        "MAX_BATCH",
        "RATE",
        "MONTHLY_IMAGES",
        "RETENTION",
    ]
    (row,) = [r for r in rows if r.split()[0] == name]
    assert row.split() == [name, "1", "5", "unlimited", "2/s", "unlimited", "30d"]


def test_limits_set_by_the_cli_are_what_the_api_enforces_and_reports(
    cli, client, team, session_factory
):
    name, key = team
    with session_scope(session_factory) as s:
        row = ensure_team(s, name)
        s.add(UsageMonthly(team_id=row.id, month=month_of(), model="tiny", images=3))
    assert (
        cli("teams", "update", name, "--max-batch", "11", "--monthly-images", "40").exit_code == 0
    )
    headers = {"Authorization": f"Bearer {key}"}
    refused = client.post("/v1/batches", json=batch_body(), headers=headers)
    assert refused.status_code == 422 and "limit is 11 per batch" in refused.text
    usage = client.get("/v1/usage", headers=headers).json()
    assert usage["images"] == {"used": 3, "limit": 40}
    assert usage["max_batch"] == 11 and usage["queued"] == {"used": 0, "limit": None}
    assert shown(cli, name)["images_this_month"] == 3
