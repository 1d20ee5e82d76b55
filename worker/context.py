"""What a worker process holds for its lifetime: settings, the warm model, storage, sessions."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings
from shared.storage import Storage
from worker.pipelines import LoadedModel


@dataclass
class WorkerContext:
    settings: Settings
    model: LoadedModel
    storage: Storage
    session_factory: sessionmaker[Session]
