"""The event stream under concurrency, with real connections, threads and gunicorn: an id that
commits after a higher one is delivered, in order (PostgreSQL); a subscriber that disconnects
and reconnects with Last-Event-ID while events are produced misses none and repeats none (both
databases); the listener's NOTIFY wakes subscribers and subscribers in one process share their
reads (PostgreSQL)."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import httpx
import pytest
from django.db import connection, connections, transaction

from core.listening import dispatcher
from events import stream
from events.models import Event
from events.selectors import START, EventFilter
from events.services import event_record
from tests.factories import make_key

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/api/v1/events"


@pytest.fixture
def postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs concurrent writers and NOTIFY: SQLite lets one write at a time, and polls")


def record(project: Any, **data: Any) -> Event:
    return event_record(type="task.updated", project=project, task=None, actor=None, data=data)


def in_thread(target: Any) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def drain(subscription: stream.Subscription) -> list[int]:
    got: list[int] = []
    while True:
        items, caught_up = subscription.read()
        got.extend(item.event.pk for item in items)
        if caught_up:
            return got


def test_an_id_committed_after_a_higher_one_is_delivered_in_commit_order(user, postgres):
    project = user.personal_project
    inserted, commit = threading.Event(), threading.Event()
    early: list[Event] = []

    def slow_writer() -> None:
        with transaction.atomic():
            early.append(record(project, n="early"))
            inserted.set()
            commit.wait(30)

    visible = EventFilter(projects=frozenset({project.pk}))
    with stream.Subscription(visible, START) as subscription:
        writer = in_thread(slow_writer)
        try:
            assert inserted.wait(30)
            late = record(project, n="late")  # a higher id, committed first
            assert late.pk > early[0].pk
            # Committed, but its transaction began after one still running: held, not skipped.
            assert drain(subscription) == []
            assert subscription.held
        finally:
            commit.set()
            writer.join(30)
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:  # the stream's loop
            subscription.wait(1)  # woken by the commit, or the held-back poll
            got.extend(drain(subscription))
        assert got == [early[0].pk, late.pk]
        assert drain(subscription) == []


def test_a_notify_wakes_subscribers_and_one_read_serves_them_all(user, monkeypatch, postgres):
    project = user.personal_project
    refreshes = []
    real_refresh = stream._Feed.refresh

    def counting_refresh(feed: Any) -> None:
        refreshes.append(1)
        real_refresh(feed)

    monkeypatch.setattr(stream._Feed, "refresh", counting_refresh)
    visible = EventFilter(projects=frozenset({project.pk}))
    with stream.Subscription(visible, START) as a, stream.Subscription(visible, START) as b:
        assert a.feed is b.feed
        drain(a), drain(b)
        refreshes.clear()
        woken = threading.Event()
        waiter = threading.Thread(target=lambda: (a.wait(30), woken.set()))
        started = time.monotonic()
        waiter.start()
        in_thread(lambda: record(project, n=1)).join(30)
        waiter.join(30)
        assert woken.is_set()
        assert dispatcher.notified_at.get(stream.WAKE_KEY, 0) >= started  # the NOTIFY, not a poll
        assert len(drain(a)) == 1 and len(drain(b)) == 1
        assert len(refreshes) == 1  # b took a's read


def sse_lines(response: httpx.Response) -> Any:
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
            continue
        name, _, value = line.partition(": ")
        if name in ("id", "event", "data"):
            event[name] = value


def test_reconnecting_with_last_event_id_while_events_are_produced_misses_and_repeats_none(user):
    from tests.live import gunicorn

    project = user.personal_project
    _, raw = make_key(user, ["event:read"])
    producers, per_producer = 4, 40
    produced: list[int] = []
    lock = threading.Lock()

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        for n in range(per_producer):
            with transaction.atomic():
                event = record(project, producer=seed, n=n)
                time.sleep(rng.uniform(0, 0.02))  # commits interleave: ids commit out of order
            with lock:
                produced.append(event.pk)

    received: list[int] = []
    headers = {"Authorization": f"Api-Key {raw}", "Accept": "text/event-stream"}
    env = {"TASKFORGE_STREAM_MAX_SECONDS": "2"}  # the server also ends streams now and then
    with gunicorn(workers=1, extra_env=env) as base, httpx.Client(base_url=base, timeout=30) as http:
        first = record(project, n="before")
        threads: list[threading.Thread] = []
        last_id = str(first.pk)
        deadline = time.monotonic() + 120
        connects = 0
        while len(received) < producers * per_producer and time.monotonic() < deadline:
            connects += 1
            with http.stream("GET", URL, headers={**headers, "Last-Event-ID": last_id}) as response:
                assert response.status_code == 200
                if not threads:  # producing starts once the first subscriber is open
                    threads = [in_thread(lambda s=s: produce(s)) for s in range(producers)]
                leave_after = random.randint(5, 30)
                for n, event in enumerate(sse_lines(response)):
                    if event.get("event") == "reconnect":
                        break
                    received.append(json.loads(event["data"])["id"])
                    last_id = event["id"]
                    if n + 1 >= leave_after:
                        break  # the client disconnects mid-stream
        for thread in threads:
            thread.join(30)
    assert connects > 3
    assert len(received) == len(set(received)), "an event was delivered twice"
    assert sorted(received) == sorted(produced), "an event was missed"


def test_two_requests_racing_with_one_ticket_open_one_stream(user, postgres):
    from events.services import stream_ticket_create, stream_ticket_redeem

    _, raw = stream_ticket_create(user=user, api_key=None, filters={})
    barrier = threading.Barrier(8)
    won: list[Any] = []

    def redeem() -> None:
        barrier.wait(10)
        ticket = stream_ticket_redeem(raw)
        if ticket is not None:
            won.append(ticket)

    threads = [in_thread(redeem) for _ in range(8)]
    for thread in threads:
        thread.join(30)
    assert len(won) == 1 and won[0].user_id == user.pk
