"""The ticker with a controllable clock: slots, misfires, overlap, pauses, DST; both databases."""

from __future__ import annotations

from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError

from events.models import Event, EventType
from executions.models import Execution, ExecutionStatus, Trigger
from schedules import services
from schedules.models import FireKind, FireOutcome, ScheduleFire
from templates_app.services import template_update
from tests.schedules.conftest import REPORT_PARAMETERS, at

pytestmark = pytest.mark.django_db


def outcomes(schedule) -> list[tuple[str, str]]:
    return [
        (f.scheduled_for.strftime("%H:%M"), f.outcome)
        for f in ScheduleFire.objects.filter(schedule=schedule).order_by("scheduled_for")
    ]


def finish_all() -> None:
    """Every queued run ends (succeeded): nothing is active any more."""
    Execution.objects.filter(status=ExecutionStatus.QUEUED).update(
        status=ExecutionStatus.SUCCEEDED, finished_at=at("2025-01-01T00:00")
    )


def test_a_due_slot_fires_once_with_its_task_execution_and_event(make_schedule):
    schedule = make_schedule(
        interval_seconds=60, start_at=at("2025-01-01T10:00"), created=at("2025-01-01T09:59")
    )
    assert schedule.next_fire_at == at("2025-01-01T10:00")
    assert services.schedules_tick(now=at("2025-01-01T09:59:59")) == 0
    assert services.schedules_tick(now=at("2025-01-01T10:00:01")) == 1
    assert services.schedules_tick(now=at("2025-01-01T10:00:02")) == 0  # nothing due again
    (fire,) = ScheduleFire.objects.filter(schedule=schedule)
    assert fire.outcome == FireOutcome.FIRED and fire.kind == FireKind.SCHEDULED
    assert fire.execution.trigger == Trigger.SCHEDULE and fire.execution.task_id == fire.task_id
    assert fire.task.name == "Report for staging" and fire.task.parameters["days"] == 3
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at("2025-01-01T10:01")  # from the slot, not from now
    assert schedule.last_outcome == FireOutcome.FIRED
    event = Event.objects.get(type=EventType.SCHEDULE_FIRED)
    assert event.task_id == fire.task_id and event.data["schedule"] == str(schedule.pk)


def test_next_fire_is_computed_from_the_slot_so_nothing_drifts(make_schedule):
    schedule = make_schedule(
        interval_seconds=60, start_at=at("2025-01-01T10:00"), created=at("2025-01-01T09:59")
    )
    for minute in range(5):
        finish_all()
        services.schedules_tick(now=at(f"2025-01-01T10:0{minute}:00") + timedelta(seconds=59))  # always late
    assert [o for _, o in outcomes(schedule)] == ["fired"] * 5
    assert [t for t, _ in outcomes(schedule)] == ["10:00", "10:01", "10:02", "10:03", "10:04"]


def test_a_second_insert_for_the_same_slot_does_nothing(make_schedule):
    schedule = make_schedule(
        interval_seconds=60, start_at=at("2025-01-01T10:00"), created=at("2025-01-01T09:59")
    )
    from schedules import firing

    now = at("2025-01-01T10:00")
    assert firing.record(schedule, now, FireOutcome.MISSED, "", kind=FireKind.SCHEDULED, now=now) is not None
    assert firing.fire(schedule, now, kind=FireKind.SCHEDULED, now=now) is None  # owned already
    assert Execution.objects.count() == 0


# --- misfires ------------------------------------------------------------------------------------
def outage(make_schedule, policy, *, back_at="2025-01-01T10:30:30", **extra):
    """Hourly... no: every 5 minutes from 10:00; nobody ticks until ``back_at``."""
    schedule = make_schedule(
        interval_seconds=300,
        start_at=at("2025-01-01T10:00"),
        misfire_policy=policy,
        overlap_policy="allow",
        created=at("2025-01-01T09:59"),
        **extra,
    )
    services.schedules_tick(now=at(back_at))
    return schedule


def test_misfire_on_time_latest_runs_and_the_rest_are_missed(make_schedule):
    schedule = outage(make_schedule, "skip")  # 10:30 is 30 s late: within the grace
    assert outcomes(schedule) == [(f"10:{m:02}", "missed") for m in range(0, 30, 5)] + [("10:30", "fired")]
    assert Event.objects.filter(type=EventType.SCHEDULE_SKIPPED).count() == 1


@pytest.mark.parametrize(
    ("policy", "fired"),
    [
        ("skip", []),
        ("run_once", ["10:30"]),
        ("run_all", ["10:00", "10:05", "10:10", "10:15", "10:20", "10:25", "10:30"]),
    ],
)
def test_misfire_policies_after_an_outage(make_schedule, policy, fired):
    schedule = outage(make_schedule, policy, back_at="2025-01-01T10:33")  # 10:30 is 3 min late
    assert [t for t, o in outcomes(schedule) if o == "fired"] == fired
    assert [t for t, o in outcomes(schedule) if o == "missed"] == sorted(
        {f"10:{m:02}" for m in range(0, 35, 5)} - set(fired)
    )
    assert Execution.objects.count() == len(fired)
    kinds = set(ScheduleFire.objects.filter(outcome="fired").values_list("kind", flat=True))
    assert kinds <= {FireKind.CATCHUP}
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at("2025-01-01T10:35")


def test_run_all_is_capped_and_the_catchup_window_bounds_everything(make_schedule):
    schedule = outage(make_schedule, "run_all", back_at="2025-01-01T12:02", catchup_window_seconds=3600)
    fired = [t for t, o in outcomes(schedule) if o == "fired"]
    assert fired == ["11:15", "11:20", "11:25", "11:30", "11:35", "11:40", "11:45", "11:50", "11:55", "12:00"]
    older = ScheduleFire.objects.get(schedule=schedule, scheduled_for=at("2025-01-01T10:00"))
    assert older.outcome == "missed" and "13 slots" in older.reason and "catch-up window" in older.reason
    assert ScheduleFire.objects.filter(schedule=schedule, outcome="missed").count() == 1 + 2


def test_a_long_outage_leaves_bounded_rows(make_schedule):
    schedule = outage(make_schedule, "skip", back_at="2025-02-01T00:00:30", catchup_window_seconds=0)
    fires = ScheduleFire.objects.filter(schedule=schedule)
    assert fires.count() <= 3
    assert "slots from 2025-01-01T10:00:00+00:00" in fires.order_by("scheduled_for").first().reason


# --- overlap ---------------------------------------------------------------------------------------
def overlapping(make_schedule, policy):
    schedule = make_schedule(
        interval_seconds=60,
        start_at=at("2025-01-01T10:00"),
        overlap_policy=policy,
        created=at("2025-01-01T09:59"),
    )
    services.schedules_tick(now=at("2025-01-01T10:00:01"))  # run 1, still queued
    services.schedules_tick(now=at("2025-01-01T10:01:01"))
    return schedule


def test_overlap_skip_records_the_slot(make_schedule):
    schedule = overlapping(make_schedule, "skip")
    assert outcomes(schedule) == [("10:00", "fired"), ("10:01", "skipped_overlap")]
    assert "still queued" in ScheduleFire.objects.get(outcome="skipped_overlap").reason
    finish_all()
    services.schedules_tick(now=at("2025-01-01T10:02:01"))
    assert outcomes(schedule)[-1] == ("10:02", "fired")


def test_overlap_allow_runs_alongside(make_schedule):
    schedule = overlapping(make_schedule, "allow")
    assert outcomes(schedule) == [("10:00", "fired"), ("10:01", "fired")]
    assert Execution.objects.filter(status=ExecutionStatus.QUEUED).count() == 2


def test_overlap_cancel_previous(make_schedule):
    schedule = overlapping(make_schedule, "cancel_previous")
    assert outcomes(schedule) == [("10:00", "fired"), ("10:01", "fired")]
    statuses = list(Execution.objects.order_by("queued_at").values_list("status", flat=True))
    assert statuses == [ExecutionStatus.CANCELLED, ExecutionStatus.QUEUED]


def test_overlap_queue_one_holds_one_slot_until_the_run_ends(make_schedule):
    schedule = overlapping(make_schedule, "queue_one")
    assert outcomes(schedule) == [("10:00", "fired")]
    schedule.refresh_from_db()
    assert schedule.pending_slot == at("2025-01-01T10:01")
    services.schedules_tick(now=at("2025-01-01T10:02:01"))  # still active: 10:02 is skipped
    assert outcomes(schedule) == [("10:00", "fired"), ("10:02", "skipped_overlap")]
    finish_all()
    services.schedules_tick(now=at("2025-01-01T10:02:30"))  # the waiting slot runs now
    assert outcomes(schedule) == [("10:00", "fired"), ("10:01", "fired"), ("10:02", "skipped_overlap")]
    schedule.refresh_from_db()
    assert schedule.pending_slot is None


# --- pauses ----------------------------------------------------------------------------------------
def test_a_template_change_that_breaks_the_parameters_pauses_with_the_reason(make_schedule, template, user):
    schedule = make_schedule(
        interval_seconds=60, start_at=at("2025-01-01T10:00"), created=at("2025-01-01T09:59")
    )
    changed = [dict(p) for p in REPORT_PARAMETERS]
    changed[1]["max"] = 2  # days=3 no longer fits
    template_update(template=template, actor=user, fields={}, parameters=changed)
    services.schedules_tick(now=at("2025-01-01T10:00:01"))
    assert outcomes(schedule) == [("10:00", "invalid")]
    schedule.refresh_from_db()
    assert not schedule.enabled and "parameters.days" in schedule.paused_reason
    assert Execution.objects.count() == 0
    assert Event.objects.get(type=EventType.SCHEDULE_PAUSED).data["reason"] == schedule.paused_reason
    services.schedules_tick(now=at("2025-01-01T10:05:01"))
    assert len(outcomes(schedule)) == 1  # paused: no failure loop
    with pytest.raises(ValidationError) as caught:
        services.schedule_resume(schedule=schedule, actor=user)
    assert "parameters.days" in caught.value.message_dict


def test_pause_after_failures(make_schedule):
    schedule = make_schedule(
        interval_seconds=60,
        start_at=at("2025-01-01T10:00"),
        pause_after_failures=2,
        overlap_policy="allow",
        created=at("2025-01-01T09:59"),
    )
    for minute in range(2):
        services.schedules_tick(now=at(f"2025-01-01T10:0{minute}:01"))
        Execution.objects.filter(status=ExecutionStatus.QUEUED).update(
            status=ExecutionStatus.FAILED, finished_at=at("2025-01-01T10:00")
        )
    services.schedules_tick(now=at("2025-01-01T10:02:01"))
    assert outcomes(schedule) == [("10:00", "fired"), ("10:01", "fired"), ("10:02", "paused")]
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.paused_reason == "Paused after 2 failed runs in a row."


def test_resuming_never_backfills(make_schedule, user, settings):
    schedule = make_schedule(interval_seconds=60, start_at=at("2020-01-01T10:00"))
    services.schedule_pause(schedule=schedule, actor=user)
    schedule = services.schedule_resume(schedule=schedule, actor=user)
    assert schedule.next_fire_at > services.timezone.now()
    services.schedules_tick()
    assert not ScheduleFire.objects.filter(schedule=schedule).exists()


# --- DST through the ticker --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("zone", "day", "expression", "count", "first_local"),
    [
        ("Europe/Riga", "2025-03-30", "0 * * * *", 23, None),
        ("Europe/Riga", "2025-10-26", "0 * * * *", 25, None),
        ("America/New_York", "2025-03-09", "0 * * * *", 23, None),
        ("America/New_York", "2025-11-02", "0 * * * *", 25, None),
        ("Europe/Riga", "2025-03-30", "30 3 * * *", 1, "2025-03-30T04:00:00+03:00"),
        ("Europe/Riga", "2025-10-26", "30 3 * * *", 1, "2025-10-26T03:30:00+03:00"),
        ("America/New_York", "2025-03-09", "30 2 * * *", 1, "2025-03-09T03:00:00-04:00"),
        ("America/New_York", "2025-11-02", "30 1 * * *", 1, "2025-11-02T01:30:00-04:00"),
    ],
)
def test_dst_days_tick_by_tick(make_schedule, zone, day, expression, count, first_local):
    tz = ZoneInfo(zone)
    start = services.datetime.fromisoformat(day).replace(tzinfo=tz)
    end = (start + timedelta(days=1, hours=1)).replace(hour=0)
    schedule = make_schedule(
        cron=expression, timezone=zone, overlap_policy="allow", created=start - timedelta(seconds=1)
    )
    now, end = start.astimezone(UTC), end.astimezone(UTC)  # UTC: aware local arithmetic is wall time
    while now < end:  # a tick every 10 minutes of real time
        services.schedules_tick(now=now)
        now += timedelta(minutes=10)
    fires = list(ScheduleFire.objects.filter(schedule=schedule).order_by("scheduled_for"))
    assert [f.outcome for f in fires] == ["fired"] * count
    if first_local:
        assert fires[0].scheduled_for.astimezone(tz).isoformat() == first_local


def test_webhooks_receive_schedule_events(make_schedule, user, project):
    import json

    from webhooks.dispatcher import fan_out
    from webhooks.models import Delivery
    from webhooks.services import subscription_create

    subscription_create(
        project=project,
        actor=user,
        url="https://93.184.216.34/hook",
        event_types=["schedule.fired", "schedule.skipped", "schedule.paused"],
    )
    schedule = make_schedule(
        interval_seconds=60, start_at=at("2025-01-01T10:00"), created=at("2025-01-01T09:59")
    )
    services.schedules_tick(now=at("2025-01-01T10:00:01"))
    services.schedules_tick(now=at("2025-01-01T10:01:01"))  # skipped: the first run is queued
    services.schedule_pause(schedule=schedule, actor=user, reason="enough")
    fan_out(100)
    payloads = [json.loads(d.payload) for d in Delivery.objects.order_by("event_id")]
    assert [p["type"] for p in payloads] == ["schedule.fired", "schedule.skipped", "schedule.paused"]
    assert payloads[0]["data"]["task"]["name"] == "Report for staging"
    assert payloads[1]["data"]["outcome"] == "skipped_overlap"
    assert payloads[2]["data"]["reason"] == "enough" and payloads[2]["data"]["actor"]["username"] == "alice"


def test_a_schedule_that_cannot_compute_its_slots_pauses_and_the_others_still_fire(make_schedule):
    broken = make_schedule(name="broken", cron="0 * * * *", created=at("2025-01-01T09:59"))
    healthy = make_schedule(name="healthy", interval_seconds=60, start_at=at("2025-01-01T10:00"))
    # Its zone left the system's tz database since it was saved (or a hand-edited row).
    type(broken).objects.filter(pk=broken.pk).update(
        timezone="Mars/Olympus_Mons", due_at=at("2025-01-01T09:00")
    )
    type(healthy).objects.filter(pk=healthy.pk).update(
        next_fire_at=at("2025-01-01T10:00"), due_at=at("2025-01-01T10:00")
    )
    services.schedules_tick(now=at("2025-01-01T10:00:01"))
    broken.refresh_from_db()
    assert not broken.enabled and "timezone" in broken.paused_reason
    assert outcomes(healthy) == [("10:00", "fired")]


def test_run_now_refuses_parameters_that_no_longer_fit(make_schedule, template, user):
    schedule = make_schedule(interval_seconds=3600)
    changed = [dict(p) for p in REPORT_PARAMETERS]
    changed[1]["max"] = 2
    template_update(template=template, actor=user, fields={}, parameters=changed)
    with pytest.raises(ValidationError) as caught:
        services.schedule_trigger(schedule=schedule, actor=user)
    assert "parameters.days" in caught.value.message_dict
    assert not ScheduleFire.objects.exists()


def test_run_now_records_who_pressed_it(make_schedule, user):
    schedule = make_schedule(interval_seconds=3600)
    outcome, fire = services.schedule_trigger(schedule=schedule, actor=user)
    assert outcome == "fired" and fire.kind == FireKind.MANUAL
    assert Event.objects.get(type=EventType.SCHEDULE_FIRED).actor == user
