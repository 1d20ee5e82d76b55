"""Signing (checked with the reference ``standardwebhooks`` library), rotation overlap, and
the declared retry policy: which answers retry, the schedule, jitter and Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.events import event_body
from shared.models import WebhookEndpoint
from shared.settings import Settings
from shared.webhooks import (
    JITTER,
    active_secrets,
    classify,
    new_secret,
    parse_retry_after,
    retry_delay,
    rotate_secret,
    sign,
)

NOW = datetime.now(UTC)


def test_reference_library_verifies_our_signature():
    secret = new_secret()
    body = event_body("evt_1", "job.succeeded", NOW, {"id": "j"})
    headers = sign("evt_1", body, [secret], NOW)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["data"] == {"id": "j"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace('"j"', '"k"'), headers)


def test_rotation_sends_both_signatures_during_the_overlap_only():
    endpoint = WebhookEndpoint(secret=new_secret())
    old = endpoint.secret
    new = rotate_secret(endpoint, overlap_seconds=3600)
    assert new != old and endpoint.previous_secret == old
    keys = active_secrets(
        endpoint.secret, endpoint.previous_secret, endpoint.previous_secret_expires_at, NOW
    )
    body = event_body("evt_2", "job.failed", NOW, {})
    headers = sign("evt_2", body, keys, NOW)
    assert len(headers["webhook-signature"].split(" ")) == 2
    # A receiver still on the old secret and one already on the new one both verify.
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    # After the overlap only the new secret signs.
    later = NOW + timedelta(hours=2)
    assert active_secrets(
        endpoint.secret, endpoint.previous_secret, endpoint.previous_secret_expires_at, later
    ) == [new]


def test_rotation_without_overlap_drops_the_old_secret_at_once():
    endpoint = WebhookEndpoint(secret=new_secret())
    rotate_secret(endpoint, overlap_seconds=0)
    assert endpoint.previous_secret is None
    assert active_secrets(endpoint.secret, None, None, NOW) == [endpoint.secret]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (301, "failed"),  # redirects are not followed
        (302, "failed"),
        (307, "failed"),
        (400, "failed"),
        (401, "failed"),
        (404, "failed"),
        (408, "retry"),
        (410, "disable"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (None, "retry"),  # timeout or connection error
    ],
)
def test_classify(status, outcome):
    assert classify(status) == outcome


def test_blocked_connection_is_not_retried():
    assert classify(None, blocked=True) == "failed"


def test_default_schedule_is_the_standard_webhooks_one():
    hours = 3600.0
    assert Settings().webhook_retry_delays == [
        0,
        5,
        300,
        1800,
        2 * hours,
        5 * hours,
        10 * hours,
        14 * hours,
        20 * hours,
        24 * hours,
    ]


def test_retry_delay_follows_the_schedule_with_jitter_then_dead_letters():
    schedule = Settings().webhook_retry_delays
    rng = random.Random(1)
    for attempts in range(1, len(schedule)):
        delay = retry_delay(attempts, schedule, rng=rng)
        assert delay is not None
        assert schedule[attempts] * (1 - JITTER) <= delay <= schedule[attempts] * (1 + JITTER)
    assert retry_delay(len(schedule), schedule) is None


def test_retry_after_is_honoured_when_longer_than_the_schedule():
    assert retry_delay(1, [0, 5, 300], retry_after=120, rng=random.Random(0)) == 120
    assert retry_delay(1, [0, 500], retry_after=1, rng=random.Random(0)) >= 450
    # A receiver cannot park a delivery for a year.
    assert retry_delay(1, [0, 5], retry_after=10**9) == 24 * 3600


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("30", NOW) == 30
    date = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 85 <= parse_retry_after(date, NOW) <= 91
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


@pytest.mark.parametrize("value", ["", "a,b", "5,-1"])
def test_bad_retry_schedule_is_refused(value):
    with pytest.raises(ValueError, match="IMGFARM_WEBHOOK_RETRY_SCHEDULE"):
        Settings(webhook_retry_schedule=value)
