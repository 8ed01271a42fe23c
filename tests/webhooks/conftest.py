"""A real HTTP receiver on 127.0.0.1 (a thread), and the settings that let webhooks reach it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from accounts.models import User
from webhooks import services
from webhooks.models import Subscription

PUBLIC_URL = "https://93.184.216.34/hooks/taskforge"  # a literal public address: no DNS needed


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the receiver answers is ``mode``: ok, fail, slow, redirect, gone, busy, big."""

    url: str = ""
    port: int = 0
    mode: str = "ok"
    requests: list[Received] = field(default_factory=list)
    retry_after: str = "120"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> list[str]:
        with self.lock:
            return [r.headers["webhook-id"] for r in self.requests if r.path == "/hook"]

    def hook_requests(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == "/hook"]


def make_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._record(b"")
            self._answer(200, b"redirect target reached")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            self._record(body)
            mode = receiver.mode
            if mode == "ok":
                self._answer(200, b'{"ok": true}')
            elif mode == "accepted":
                self._answer(204, b"")
            elif mode == "fail":
                self._answer(500, b"receiver broken")
            elif mode == "big":
                self._answer(500, b"x" * 10_000)
            elif mode == "slow":
                time.sleep(3)
                self._answer(200, b"too late")
            elif mode == "redirect":
                self._answer(302, b"", {"Location": f"{receiver.url.rsplit('/', 1)[0]}/elsewhere"})
            elif mode == "gone":
                self._answer(410, b"gone")
            elif mode == "busy":
                self._answer(503, b"busy", {"Retry-After": receiver.retry_after})

        def _record(self, body: bytes) -> None:
            with receiver.lock:
                receiver.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the sender gave up (timeout test)
                pass

    return Handler


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # several dispatchers connect at once in the concurrency tests
    daemon_threads = True


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    server = Server(("127.0.0.1", 0), make_handler(state))
    state.port = server.server_address[1]
    state.url = f"http://127.0.0.1:{state.port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def local_targets(settings: Any) -> Any:
    """Private and plain-http targets allowed, and a short timeout: tests and local dev only."""
    settings.TASKFORGE_WEBHOOK_ALLOW_PRIVATE = True
    settings.TASKFORGE_WEBHOOK_ALLOW_HTTP = True
    settings.TASKFORGE_WEBHOOK_TIMEOUT = 1
    settings.TASKFORGE_WEBHOOK_CONCURRENCY = 4
    return settings


@pytest.fixture
def subscribe(user: User) -> Callable[..., tuple[Subscription, str]]:
    """``subscribe(url, **fields)`` -> (subscription in alice's personal project, its secret)."""

    def make(url: str = PUBLIC_URL, **fields: Any) -> tuple[Subscription, str]:
        return services.subscription_create(project=user.personal_project, actor=user, url=url, **fields)

    return make
