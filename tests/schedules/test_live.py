"""Exactly once with many tickers, misfires after an outage, and scripts outliving their interval:
real threads and real ``runworker`` processes against the test database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections, transaction

from executions.models import Execution, ExecutionStatus, Worker
from schedules import firing, services
from schedules.models import FireKind, Schedule, ScheduleFire
from tasks.models import Task
from templates_app.services import template_create
from tests.live import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
SQLITE_SKIP = (
    "SQLite has one writer at a time: its IMMEDIATE transactions serialise the tickers, so there "
    "is no race to show (the real-worker tests below run on both databases)"
)


def require_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip(SQLITE_SKIP)


def whole_seconds_ago(seconds: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds)


def sleeper(project, user, slug: str, seconds: float):
    return template_create(
        project=project,
        actor=user,
        slug=slug,
        name=slug,
        name_pattern=slug,
        script_type="bash",
        script=f"sleep {seconds}",
    )


def test_many_tickers_fire_each_slot_exactly_once(make_schedule):
    require_postgres()
    slots, tickers = 12, 6
    start = datetime(2025, 1, 1, 10, tzinfo=UTC)
    schedule = make_schedule(
        interval_seconds=10, start_at=start, overlap_policy="allow", created=start - timedelta(seconds=1)
    )
    barrier = threading.Barrier(tickers)
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            for step in range(slots):
                barrier.wait(timeout=30)  # every ticker at once, on the same clock
                services.schedules_tick(now=start + timedelta(seconds=10 * step, milliseconds=500))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=tick) for _ in range(tickers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    fires = list(ScheduleFire.objects.filter(schedule=schedule).order_by("scheduled_for"))
    assert [f.scheduled_for for f in fires] == [start + timedelta(seconds=10 * i) for i in range(slots)]
    assert {f.outcome for f in fires} == {"fired"}
    assert Task.objects.filter(template=schedule.template).count() == slots
    assert Execution.objects.count() == slots


def test_the_fire_row_alone_stops_a_second_fire_of_a_slot(make_schedule):
    """Even two firings that skip the schedule's row lock make one run: the UNIQUE fire row."""
    require_postgres()
    schedule = make_schedule(interval_seconds=60, overlap_policy="allow")
    slot = datetime(2025, 1, 1, 10, tzinfo=UTC)
    barrier = threading.Barrier(4)
    results: list[object] = []

    def fire() -> None:
        try:
            own = Schedule.objects.select_related("template").get(pk=schedule.pk)
            barrier.wait(timeout=30)
            with transaction.atomic():
                results.append(firing.fire(own, slot, kind=FireKind.SCHEDULED, now=slot))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(result is not None for result in results) == 1
    assert ScheduleFire.objects.count() == 1 and Execution.objects.count() == 1


def test_real_workers_fire_a_ten_second_schedule_once_per_slot(make_schedule):
    start = whole_seconds_ago(-4)  # the first slot in 4 s, then every 10 s
    # run_all: should the workers take longer than a slot to start, the slot still fires.
    schedule = make_schedule(
        interval_seconds=10, start_at=start, overlap_policy="allow", misfire_policy="run_all"
    )
    with worker("--concurrency", "1"), worker("--concurrency", "1"), worker("--concurrency", "1"):
        wait_for(lambda: ScheduleFire.objects.filter(schedule=schedule).count() >= 3, timeout=60)
    fires = list(ScheduleFire.objects.filter(schedule=schedule).order_by("scheduled_for"))
    expected = [start + timedelta(seconds=10 * i) for i in range(len(fires))]
    assert [f.scheduled_for for f in fires] == expected  # every slot, each once, none skipped
    assert {f.outcome for f in fires} == {"fired"}
    assert Task.objects.filter(template=schedule.template).count() == len(fires)
    assert Execution.objects.filter(task__template=schedule.template).count() == len(fires)


def test_workers_back_after_an_outage_apply_each_misfire_policy(make_schedule):
    # Slots every 30 s; the last one before "now" was 5 s ago and nobody ticked for 95 s.
    start = whole_seconds_ago(95)
    schedules = {}
    for policy in ("skip", "run_once", "run_all"):
        schedule = make_schedule(
            name=policy, interval_seconds=30, start_at=start, misfire_policy=policy, overlap_policy="allow"
        )
        Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=start, due_at=start)  # the outage
        schedules[policy] = schedule
    with worker("--concurrency", "4", extra_env={"TASKFORGE_SCHEDULE_MISFIRE_GRACE_SECONDS": "1"}):
        wait_for(
            lambda: Schedule.objects.filter(next_fire_at=start + timedelta(seconds=120)).count() == 3,
            timeout=30,
        )
    slots = [start + timedelta(seconds=30 * i) for i in range(4)]

    def outcomes(policy: str) -> list[str]:
        fires = ScheduleFire.objects.filter(schedule=schedules[policy]).order_by("scheduled_for")
        assert [f.scheduled_for for f in fires] == slots  # every slot on record
        return [f.outcome for f in fires]

    assert outcomes("skip") == ["missed"] * 4
    assert outcomes("run_once") == ["missed"] * 3 + ["fired"]
    assert outcomes("run_all") == ["fired"] * 4


def test_a_script_outliving_its_interval_under_each_overlap_policy(make_schedule, user, project):
    start = whole_seconds_ago(-8)  # time for the worker to start before the first slot
    schedules = {}
    for policy in ("skip", "allow", "cancel_previous", "queue_one"):
        schedules[policy] = make_schedule(
            name=policy,
            template=sleeper(project, user, f"sleep-{policy.replace('_', '-')}", 14),
            parameters={},
            interval_seconds=10,
            start_at=start,
            overlap_policy=policy,
        )
    third = start + timedelta(seconds=20)

    def settled() -> bool:  # the third slot has been handled by every schedule
        return Schedule.objects.filter(next_fire_at__gt=third).count() == 4

    with worker("--concurrency", "8"):
        wait_for(settled, timeout=90)
    slots = [start + timedelta(seconds=10 * i) for i in range(3)]

    def fires(policy: str) -> list[tuple[datetime, str]]:
        rows = ScheduleFire.objects.filter(schedule=schedules[policy]).order_by("scheduled_for")
        return [(f.scheduled_for, f.outcome) for f in rows]

    def runs(policy: str) -> list[Execution]:
        return list(Execution.objects.filter(task__template=schedules[policy].template).order_by("queued_at"))

    # skip: the second slot finds the first run still running; the third finds it over.
    assert fires("skip") == [(slots[0], "fired"), (slots[1], "skipped_overlap"), (slots[2], "fired")]
    # allow: a run per slot, side by side.
    assert fires("allow") == [(slot, "fired") for slot in slots]
    first, second = runs("allow")[:2]
    assert second.started_at is not None and second.started_at < (first.finished_at or datetime.now(UTC))
    # cancel_previous: each slot cancels the run before it.
    assert fires("cancel_previous") == [(slot, "fired") for slot in slots]
    first, second = runs("cancel_previous")[:2]
    assert wait_for(lambda: Execution.objects.get(pk=second.pk).is_final, timeout=20)
    assert Execution.objects.get(pk=first.pk).status == ExecutionStatus.CANCELLED
    assert Execution.objects.get(pk=second.pk).status == ExecutionStatus.CANCELLED
    # queue_one: the second slot waits for the first run and starts after it; the third waits.
    assert fires("queue_one") == [(slots[0], "fired"), (slots[1], "fired")]
    first, second = runs("queue_one")
    assert second.queued_at >= first.finished_at
    assert Schedule.objects.get(pk=schedules["queue_one"].pk).pending_slot == slots[2]


def test_a_worker_with_no_schedules_does_not_tick(make_schedule):
    schedule = make_schedule(interval_seconds=3600)
    past = whole_seconds_ago(1)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=past, due_at=past)
    with worker("--no-schedules"):
        wait_for(lambda: Worker.objects.filter(stopped_at__isnull=True).exists())
        threading.Event().wait(3)  # a ticking worker fires within a second of starting
        assert not ScheduleFire.objects.exists()
    with worker():
        wait_for(lambda: ScheduleFire.objects.filter(schedule=schedule, outcome="fired").exists())
