"""Session-scoped real services and factories for the integration tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from shared.db import make_engine, make_session_factory, session_scope
from shared.migrate import upgrade
from shared.settings import Settings
from shared.storage import S3Storage, storage_from_settings
from shared.teams import create_api_key, ensure_team
from tests.services import (
    ImgfarmProcess,
    PostgresDatabase,
    ServerProcess,
    free_port,
    launch_api,
    launch_dispatcher,
    launch_worker,
    moto_server,
    redis_server,
    stop_all,
)
from worker.tiny import save_tiny_pipeline

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imgfarm")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    db = PostgresDatabase()
    db.create()
    try:
        yield db.url
    finally:
        db.drop()


@pytest.fixture(scope="session")
def redis(session_dir: Path) -> Iterator[ServerProcess]:
    """The session's own redis-server; fault tests stop and restart it."""
    server = redis_server(free_port(), session_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis: ServerProcess) -> str:
    return f"redis://127.0.0.1:{redis.port}/0"


FAULT_REPORT: list[str] = []


@pytest.fixture
def fault_report() -> Callable[[str], None]:
    """Fault tests report lost / duplicated / seconds here; printed at the end of the run."""
    return FAULT_REPORT.append


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if FAULT_REPORT:
        terminalreporter.section("fault tests")
        for line in FAULT_REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def s3_endpoint(session_dir: Path) -> Iterator[str]:
    os.environ.update(AWS_ENV)
    server = moto_server(free_port(), session_dir)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def settings_env(
    session_dir: Path, postgres_url: str, redis_url: str, s3_endpoint: str
) -> dict[str, str]:
    """IMGFARM_* variables for every process of the session: real Postgres, Redis, S3."""
    # Build the tiny model once; every worker of the session loads it from here.
    save_tiny_pipeline(session_dir / "data" / "models" / "tiny")
    return {
        "IMGFARM_DATA_DIR": str(session_dir / "data"),
        "IMGFARM_DATABASE_URL": postgres_url,
        "IMGFARM_BROKER_URL": redis_url,
        "IMGFARM_STORAGE_URL": "s3://imgfarm-test/objects",
        "IMGFARM_S3_ENDPOINT_URL": s3_endpoint,
        "IMGFARM_LOG_LEVEL": "INFO",
        # Short leases so the fault tests see a killed worker's job come back in seconds.
        "IMGFARM_LEASE_SECONDS": "5",
        "IMGFARM_DISPATCH_POLL_SECONDS": "0.5",
        **AWS_ENV,
    }


@pytest.fixture(scope="session")
def settings(settings_env: dict[str, str]) -> Settings:
    s = Settings(
        **{
            k.removeprefix("IMGFARM_").lower(): v
            for k, v in settings_env.items()
            if k.startswith("IMGFARM_")
        }
    )
    upgrade(s.database_url)
    storage = storage_from_settings(s)
    assert isinstance(storage, S3Storage)
    storage.ensure_bucket()
    return s


@pytest.fixture(scope="session")
def session_factory(settings: Settings):
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def s3_client(settings: Settings):
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")


@dataclass
class PrivateDatabase:
    """A migrated database of one test module's own, on the session's Postgres server.

    For tests that read or write farm-wide rows (every queued job, every worker): processes
    of the session share its database, so those tests would otherwise see each other's rows
    and need cleanup to stay isolated. Dropped with the module."""

    settings: Settings
    session_factory: sessionmaker[Session]

    def new_key(self, team: str | None = None) -> str:
        with session_scope(self.session_factory) as session:
            return create_api_key(
                session, ensure_team(session, team or f"team-{uuid.uuid4().hex[:8]}")
            )


@pytest.fixture(scope="module")
def private_db(settings: Settings) -> Iterator[PrivateDatabase]:
    db = PostgresDatabase()
    db.create()
    try:
        upgrade(db.url)
        engine = make_engine(db.url)
        try:
            own = settings.model_copy(update={"database_url": db.url})
            yield PrivateDatabase(own, make_session_factory(engine))
        finally:
            engine.dispose()
    finally:
        db.drop()


@pytest.fixture
def new_key(session_factory) -> Callable[[str | None], str]:
    """Make a team (unique name unless given) and return a fresh API key for it."""

    def make(team: str | None = None) -> str:
        with session_scope(session_factory) as session:
            return create_api_key(
                session, ensure_team(session, team or f"team-{uuid.uuid4().hex[:8]}")
            )

    return make


@pytest.fixture(scope="session")
def app(settings: Settings):
    return create_app(settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@contextmanager
def spawner(
    settings_env: dict[str, str], session_dir: Path
) -> Iterator[Callable[..., ImgfarmProcess]]:
    """Start ``imgfarm`` subcommands as real processes; all are stopped on leaving."""
    started: list[ImgfarmProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ImgfarmProcess:
        full_env = {**os.environ, **settings_env, **(env or {})}
        log = session_dir / f"{args[0]}-{uuid.uuid4().hex[:6]}.log"
        proc = ImgfarmProcess(list(args), full_env, log).start()
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        stop_all(started)


@pytest.fixture
def spawn(settings_env: dict[str, str], session_dir: Path, settings: Settings):
    """``spawner`` for one test: what it starts is stopped after the test."""
    with spawner(settings_env, session_dir) as start:
        yield start


@pytest.fixture(scope="module")
def module_spawn(settings_env: dict[str, str], session_dir: Path, settings: Settings):
    """``spawner`` for a module whose tests can share processes (each start costs seconds)."""
    with spawner(settings_env, session_dir) as start:
        yield start


@pytest.fixture
def start_worker(spawn):
    """Start ``imgfarm worker --model ALIAS`` and wait until Celery says it is ready."""
    return partial(launch_worker, spawn)


@pytest.fixture
def start_dispatcher(spawn):
    """Start ``imgfarm dispatcher`` and wait until it is looping."""
    return partial(launch_dispatcher, spawn)


@pytest.fixture
def api_server(spawn) -> str:
    """``imgfarm api`` on a free port; returns its base URL once it answers."""
    return launch_api(spawn)
