"""Real services for the test session: a private PostgreSQL database, a private Redis server,
an S3 endpoint (moto server over HTTP) and Celery worker processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

PG_ADMIN_URL = os.environ.get(
    "IMGFARM_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class PostgresDatabase:
    """A database of its own on the shared server, dropped at the end."""

    name: str = field(default_factory=lambda: f"imgfarm_test_{uuid.uuid4().hex[:12]}")

    @property
    def url(self) -> str:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{self.name}"

    def create(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@dataclass
class ServerProcess:
    """A server we started (Redis, moto) on a port of its own."""

    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port), timeout, f"{self.argv[0]} on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def redis_server(port: int, log_dir: Path) -> ServerProcess:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return ServerProcess(argv, port, log_dir / "redis.log")


def moto_server(port: int, log_dir: Path) -> ServerProcess:
    binary = str(Path(sys.executable).with_name("moto_server"))
    return ServerProcess([binary, "-H", "127.0.0.1", "-p", str(port)], port, log_dir / "moto.log")


@dataclass
class ImgfarmProcess:
    """An ``imgfarm`` subcommand (worker, api) in its own process, with its log."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ImgfarmProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgfarm", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 120) -> None:
        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.args} exited {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            return text in self.log()

        wait_for(seen, timeout, f"{text!r} in {self.log_path}", interval=0.1)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30) -> None:
        stop_all([self], timeout)


def stop_all(procs: Sequence[ImgfarmProcess], timeout: float = 30) -> None:
    """SIGTERM to every process first, then wait for each (killed past ``timeout``): their
    graceful shutdowns (a Celery worker's takes seconds) overlap instead of adding up."""
    running = [p.proc for p in procs if p.proc is not None and p.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch_worker(
    spawn: Callable[..., ImgfarmProcess], alias: str = "tiny", env: dict[str, str] | None = None
) -> ImgfarmProcess:
    """``imgfarm worker --model ALIAS``, once Celery says it is ready."""
    proc = spawn("worker", "--model", alias, env=env)
    proc.wait_log(" ready.", timeout=120)
    return proc


def launch_dispatcher(
    spawn: Callable[..., ImgfarmProcess], env: dict[str, str] | None = None
) -> ImgfarmProcess:
    """``imgfarm dispatcher``, once it is looping."""
    proc = spawn("dispatcher", env=env)
    proc.wait_log("dispatcher started", timeout=60)
    return proc


def launch_api(spawn: Callable[..., ImgfarmProcess]) -> str:
    """``imgfarm api`` on a free port; returns its base URL once it answers."""
    port = free_port()
    spawn("api", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    wait_answers(f"{url}/healthz", 60, "imgfarm api")
    return url


def wait_answers(url: str, timeout: float, what: str) -> None:
    """Wait until a GET of ``url`` answers 200 (a server starting up refuses or errors)."""

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout, what)


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL server of our own (initdb), for tests that restart it."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        if not found:
            raise RuntimeError(f"PostgreSQL binary {name} not found")
        return str(found[-1])

    def _as_postgres(self, *argv: str) -> None:
        # initdb and postgres refuse to run as root.
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(
            self._bin("initdb"), "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c fsync=off -c listen_addresses=127.0.0.1 -k {self.root}"
        self._as_postgres(
            self._bin("pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(
            self._bin("pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop"
        )


class TcpProxy:
    """A loopback TCP proxy we can cut and restore: a real network outage for one client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.close()
