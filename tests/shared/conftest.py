"""Fixtures of the tests of shared/."""

from __future__ import annotations

import pytest

from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade


@pytest.fixture
def factory(postgres_url):
    """Sessions on the test session's Postgres database, migrated, with an engine of their own."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    yield make_session_factory(engine)
    engine.dispose()
