"""The embedded stack: api, dispatcher and one worker per model as child processes, on SQLite,
a local folder and Celery's filesystem broker. Same code as production, no servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from shared.db import make_engine, make_session_factory, session_scope
from shared.migrate import upgrade
from shared.settings import Settings
from shared.teams import KeyScope, create_api_key, ensure_team, team_for_key

LOCAL_TEAM = "local"
# Keys are stored hashed: the embedded farm keeps its own key in its data dir to reuse it.
LOCAL_KEY_FILE = "local-api-key"


def _die_with_parent() -> None:
    """Children get SIGTERM if `imgfarm up` itself is killed, so none is left orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _cpu_count() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def issue_key(settings: Settings, team: str, scope: KeyScope = KeyScope.ADMIN) -> str:
    """Create ``team`` if needed and return a fresh API key for it (admin unless asked)."""
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return create_api_key(session, ensure_team(session, team), scope)
    finally:
        engine.dispose()


def local_key(settings: Settings) -> str:
    """The embedded farm's key for team ``local``: the one saved in the data dir while it
    still works, else a new one saved there (mode 0600), so runs do not pile up keys."""
    saved = settings.data_dir / LOCAL_KEY_FILE
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            if saved.exists():
                key = saved.read_text().strip()
                team = team_for_key(session, key)
                if team is not None and team.name == LOCAL_TEAM:
                    return key
            key = create_api_key(session, ensure_team(session, LOCAL_TEAM))
    finally:
        engine.dispose()
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.touch(mode=0o600)
    saved.write_text(key + "\n")
    return key


@dataclass
class EmbeddedStack:
    """Start with ``with EmbeddedStack(...) as stack``; children stop on exit."""

    data_dir: Path
    port: int = 0
    models: tuple[str, ...] = ("tiny",)
    webhooks: bool = True
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""
    api_key: str = ""

    def _env(self, threads: int | None = None) -> dict[str, str]:
        env = dict(os.environ)
        if threads is not None:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        env["IMGFARM_DATA_DIR"] = str(self.data_dir)
        env["IMGFARM_PUBLIC_URL"] = self.url
        # Off Postgres there is no NOTIFY: poll often so a demo job starts promptly.
        env.setdefault("IMGFARM_DISPATCH_POLL_SECONDS", "0.2")
        return env

    def _spawn(self, name: str, *args: str, threads: int | None = None) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgfarm", *args],
            env=self._env(threads),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.processes[name] = proc

    def start(self, timeout: float = 120.0) -> EmbeddedStack:
        self.data_dir = self.data_dir.resolve()
        self.port = self.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = Settings(data_dir=self.data_dir, public_url=self.url)
        upgrade(settings.database_url)
        self.api_key = local_key(settings)
        self._spawn("api", "api", "--host", "127.0.0.1", "--port", str(self.port))
        self._spawn("dispatcher", "dispatcher")
        # Model workers share this machine's CPUs: each gets its share of threads. torch's
        # default, a thread per core in every process, oversubscribes them, and its threads
        # then wait on each other: tiny loaded and warmed in 17-23 s with 1 thread against
        # 34-49 s with 2 on a busy 2-core machine.
        threads = max(1, _cpu_count() // max(1, len(self.models)))
        for alias in self.models:
            self._spawn(f"worker-{alias}", "worker", "--model", alias, threads=threads)
        if self.webhooks:
            self._spawn("webhooks", "worker", "--webhooks")
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}; see {self.data_dir}/logs"
                    )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"api not ready after {timeout}s; see {self.data_dir}/logs")

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
