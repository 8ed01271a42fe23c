"""A small HTTP load generator: threads with keep-alive connections (stdlib ``http.client``,
cheaper per request than a full client, so the generator takes less of the two cores from the
server it measures)."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# A request: (method, path with query, headers, JSON body or None)
Request = tuple[str, str, dict[str, str], Any]


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive connection (one per thread)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn: http.client.HTTPConnection | None = None

    def send(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> Response:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **headers}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                self.conn.request(method, path, body=payload, headers=headers)
                reply = self.conn.getresponse()
                data = reply.read()
                if reply.getheader("Connection", "").lower() == "close":
                    self.close()
                return Response(reply.status, data)
            except (http.client.HTTPException, ConnectionError):
                # The server closed an idle keep-alive connection: reconnect once.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def run_load(
    base: str,
    make_request: Callable[[int], Request],
    *,
    concurrency: int,
    count: int | None = None,
    duration: float | None = None,
    on_done: Callable[[], None] | None = None,
    expect: tuple[int, ...] = (200,),
) -> LoadResult:
    """Send requests from ``concurrency`` threads until ``count`` were sent or ``duration``
    seconds passed; ``make_request(i)`` builds the i-th request."""
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(count if count is not None else 10**12))
    stop_at = None if duration is None else time.perf_counter() + duration

    def worker() -> None:
        client = Client(base)
        try:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None or (stop_at is not None and time.perf_counter() >= stop_at):
                    return
                method, path, headers, body = make_request(index)
                started = time.perf_counter()
                try:
                    reply = client.send(method, path, headers, body)
                except OSError as exc:
                    with lock:
                        result.errors.append(f"{path}: {exc}")
                    continue
                took = time.perf_counter() - started
                with lock:
                    if reply.status in expect:
                        result.latencies.append(took)
                    else:
                        result.errors.append(f"{reply.status} {path}: {reply.body[:200]!r}")
                if on_done is not None:
                    on_done()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.elapsed = time.perf_counter() - began
    return result
