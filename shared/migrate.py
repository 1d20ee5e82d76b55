"""Apply Alembic migrations programmatically (``imgfarm migrate``, tests, the embedded stack)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.pool import NullPool

from shared.db import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Percent signs in passwords would be read as interpolation by ConfigParser.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> list[str]:
    """Bring the database schema to ``revision``; returns the revisions applied, oldest first."""
    cfg = alembic_config(database_url)
    before = current_revision(database_url)
    command.upgrade(cfg, revision)
    after = current_revision(database_url)
    if after is None or after == before:
        return []
    script = ScriptDirectory.from_config(cfg)
    # Newest first, from ``after`` down to ``before`` (inclusive, so it is dropped).
    steps = script.walk_revisions(base=before or "base", head=after)
    return [f"{r.revision} ({r.doc})" for r in steps if r.revision != before][::-1]


def current_revision(database_url: str) -> str | None:
    """The schema revision the database is at (None: never migrated)."""
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
