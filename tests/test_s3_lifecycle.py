"""deploy/s3-lifecycle.json matches what the farm writes: S3 (moto_server over HTTP) takes
it as it is, each expiring rule names a prefix the farm's keys start with under
docker-compose.yml's storage prefix, every such prefix has a rule, and nothing expires
before a team's default retention has."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import yaml

from shared.models import Team
from shared.storage import output_key, source_key, thumbnail_key

ROOT = Path(__file__).resolve().parents[1]


def compose_prefix() -> str:
    """The key prefix of docker-compose.yml's IMGFARM_STORAGE_URL (s3://BUCKET/PREFIX)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    urls = {
        str(value)
        for service in compose["services"].values()
        for name, value in (service.get("environment") or {}).items()
        if name == "IMGFARM_STORAGE_URL"
    }
    (url,) = urls  # one storage for every service
    return url.split("/", 3)[3] + "/"


def test_the_bucket_rules_are_accepted_and_cover_every_kind_of_object(s3_client):
    rules = json.loads((ROOT / "deploy/s3-lifecycle.json").read_text())
    bucket = f"lifecycle-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rules)
    stored = s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert {r["ID"] for r in stored} == {r["ID"] for r in rules["Rules"]}

    team, job = uuid.uuid4(), uuid.uuid4()
    written = [
        source_key(team, "d" * 64),  # sources, masks and found cut-outs
        output_key(team, job, 0, "png"),
        thumbnail_key(team, output_key(team, job, 0, "png"), "0", 256),
    ]
    prefix = compose_prefix()
    kinds = {prefix + key.split("/", 1)[0] + "/" for key in written}
    expiring = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in stored if "Expiration" in r}
    assert set(expiring) == kinds
    default_retention = Team.__table__.c.retention_days.default.arg
    assert min(expiring.values()) > default_retention, "the bucket never expires what prune keeps"
