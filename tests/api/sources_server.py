"""A loopback HTTP server of source images for the intake tests: a good PNG, a body that
is not an image, and a slow drip (one byte every ``interval`` seconds), counting hits."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.factories import png_bytes
from tests.services import free_port


class SourcesServer:
    """``/png`` (a 96x80 PNG), ``/junk`` (not an image), ``/drip?interval=S&n=N``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: Counter[str] = Counter()
        self.dripping = 0  # connections being dripped to right now
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> SourcesServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                with outer._lock:
                    outer.hits[parts.path] += 1
                if parts.path == "/drip":
                    self._drip(parse_qs(parts.query))
                    return
                body = png_bytes() if parts.path == "/png" else b"this is not an image"
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _drip(self, query: dict[str, list[str]]) -> None:
                interval = float(query.get("interval", ["0.5"])[0])
                n = int(query.get("n", ["1000"])[0])
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(n))
                self.end_headers()
                with outer._lock:
                    outer.dripping += 1
                try:
                    for _ in range(n):
                        self.wfile.write(b"\x89")
                        self.wfile.flush()
                        time.sleep(interval)
                except OSError:
                    pass  # the fetcher hung up: what a deadline does
                finally:
                    with outer._lock:
                        outer.dripping -= 1

        return Handler
