"""Every write about schedules: create, update, delete, pause, resume, run now, and the tick.

The API, the admin, ``manage.py schedules`` and the worker call these and nothing else.

**Exactly once, without a leader.** Every worker calls :func:`schedules_tick` about once a
second. Each due schedule is taken in a transaction of its own with ``SELECT … FOR UPDATE SKIP
LOCKED`` (SQLite: the IMMEDIATE transaction's write lock), so two tickers never process the same
schedule at once; within it each slot's ``ScheduleFire`` row is inserted with ``ON CONFLICT DO
NOTHING`` before its task and execution are made, and ``next_fire_at`` moves, all in that one
transaction. A ticker that read a stale schedule, or a crash between the two, can never fire a
slot twice: the unique row says who owns it. The next slot is computed from the slot just
handled, never from "now", so nothing drifts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.utils import timezone

from accounts.models import ApiKey, Project, User
from core.errors import Conflict
from core.sql import lock_skipping_locked
from schedules import firing, timing
from schedules.models import (
    RUN_ALL_CAP,
    FireKind,
    FireOutcome,
    MisfirePolicy,
    OverlapPolicy,
    RunOutcome,
    Schedule,
    ScheduleFire,
)
from schedules.parameters import is_secret_ref, parameter_errors
from tasks.models import Task
from templates_app import parameters as params
from templates_app import services as template_services
from vault.services import secret_ref_errors

logger = logging.getLogger("taskforge.schedules")
Errors = list[tuple[str, str, str]]
WRITABLE_FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "enabled",
    "template",
    "parameters",
    "overrides",
    "task",
    "cron",
    "timezone",
    "interval_seconds",
    "start_at",
    "end_at",
    "jitter_seconds",
    "overlap_policy",
    "misfire_policy",
    "catchup_window_seconds",
    "pause_after_failures",
)
# Changing one of these moves the next fire (from now: never a backfill).
TIMING_FIELDS = frozenset({"cron", "timezone", "interval_seconds", "start_at", "end_at", "jitter_seconds"})
# Task fields a schedule may override on its template's tasks (the template trigger's, minus the
# ones that make no sense repeated: a fixed due date, fixed dependencies).
OVERRIDABLE_FIELDS: tuple[str, ...] = tuple(
    name for name in template_services.OVERRIDABLE_FIELDS if name not in ("due_date", "depends_on")
)
PREVIEW_MAX = 100
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
TICK_BATCH = 50
# Slots that came due while nobody ticked, recorded one row each up to this many per pass; a
# longer outage leaves one row for the span before them (its reason gives the count).
MISSED_ROWS_MAX = 500
# Slots before the catch-up window are counted one by one up to this many (the reason then
# says "at least"), so a months-long outage of a per-minute cron never holds a tick for long.
_SCAN_MAX = 10_000


# --- validation ------------------------------------------------------------------------------------
def schedule_when(schedule: Schedule) -> timing.When:
    return timing.When(
        cron=schedule.cron,
        timezone=schedule.timezone,
        interval_seconds=schedule.interval_seconds,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
    )


def when_errors(schedule: Schedule) -> Errors:
    """What is wrong with when ``schedule`` fires (cron, zone, interval, start/end)."""
    errors: Errors = []
    if bool(schedule.cron) == bool(schedule.interval_seconds):
        errors.append(("cron", "required", "Give either cron (with timezone) or interval_seconds, not both."))
    try:
        timing.zone(schedule.timezone)
    except timing.TimingError as exc:
        errors.append((exc.field, exc.code, str(exc)))
    if schedule.cron:
        try:
            schedule.cron = timing.check_cron(schedule.cron)
        except timing.TimingError as exc:
            errors.append((exc.field, exc.code, str(exc)))
    for name in ("start_at", "end_at"):
        errors.extend(_instant_errors(name, getattr(schedule, name)))
    if schedule.start_at and schedule.end_at and schedule.end_at <= schedule.start_at:
        errors.append(("end_at", "invalid", "Must be after start_at."))
    return errors


def _instant_errors(field: str, value: datetime | None) -> Errors:
    """Times a schedule can compute with: from 1970 to 9000 (a year 9999 plus a jitter, or a
    year 1 in a zone west of UTC, is past what a datetime holds)."""
    if value is not None and not EARLIEST <= value <= LATEST:
        return [(field, "out_of_range", f"Between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}.")]
    return []


def target_errors(schedule: Schedule) -> Errors:
    """What is wrong with what ``schedule`` runs (a template of its project with fitting
    parameters, or a task of its project with a script)."""
    errors: Errors = []
    if (schedule.template_id is None) == (schedule.task_id is None):
        return [("template", "required", "Give a template (with parameters) or a task, not both.")]
    if schedule.template_id is not None:
        template = schedule.template
        if template.project_id != schedule.project_id:
            return [("template", "does_not_exist", "No such template in the schedule's project.")]
        problems = parameter_errors(template.spec(), schedule.parameters)
        errors.extend(problems)
        if isinstance(schedule.parameters, Mapping):
            # Each well-formed reference names a secret of the schedule's project (checked at
            # save and at every fire: a secret deleted since pauses the schedule, naming it).
            wrong = {field for field, _, _ in problems}
            refs = {
                name: value
                for name, value in schedule.parameters.items()
                if is_secret_ref(value) and f"parameters.{name}" not in wrong
            }
            errors.extend(secret_ref_errors(schedule.project_id, refs))
        errors.extend(override_errors(schedule.overrides))
    else:
        task = schedule.task
        if task.project_id != schedule.project_id:
            return [("task", "does_not_exist", "No such task in the schedule's project.")]
        if not task.script_content:
            errors.append(("task", "no_script", "This task has no script: it is a work item for agents."))
        if schedule.parameters:
            errors.append(("parameters", "invalid", "Only a schedule of a template takes parameters."))
        if schedule.overrides:
            errors.append(("overrides", "invalid", "Only a schedule of a template takes overrides."))
    return errors


def override_errors(overrides: Any) -> Errors:
    """Task fields and values a template's tasks may be given, checked as the task checks them."""
    if not isinstance(overrides, Mapping):
        return [("overrides", "invalid", "An object of task fields to values.")]
    errors: Errors = [
        (f"overrides.{name}", "unknown", f"Not overridable; one of {', '.join(OVERRIDABLE_FIELDS)}.")
        for name in overrides
        if name not in OVERRIDABLE_FIELDS
    ]
    known = {name: value for name, value in overrides.items() if name in OVERRIDABLE_FIELDS}
    try:
        Task(**known).clean_fields(exclude=[f.name for f in Task._meta.fields if f.name not in known])
    except ValidationError as exc:
        for field, messages in exc.error_dict.items():
            errors.extend((f"overrides.{field}", m.code or "invalid", _message(m)) for m in messages)
    except (TypeError, ValueError) as exc:
        errors.append(("overrides", "invalid", str(exc)))
    return errors


def _message(error: ValidationError) -> str:
    return str(error.message % error.params if error.params else error.message)


def schedule_errors(schedule: Schedule) -> Errors:
    errors: Errors = []
    try:
        schedule.full_clean(exclude=["project", "template", "task"], validate_constraints=False)
    except ValidationError as exc:
        for field, messages in exc.error_dict.items():
            errors.extend((field, m.code or "invalid", _message(m)) for m in messages)
    bad = {field for field, _code, _message in errors}
    errors.extend(e for e in when_errors(schedule) if e[0] not in bad)
    if schedule.interval_seconds and schedule.jitter_seconds >= schedule.interval_seconds:
        errors.append(("jitter_seconds", "invalid", "Must be less than interval_seconds."))
    errors.extend(target_errors(schedule))
    return errors


def _raise(errors: Errors) -> None:
    if errors:
        raise params.as_validation_error([(field or "__all__", code, msg) for field, code, msg in errors])


# --- timing ------------------------------------------------------------------------------------
def _plan(schedule: Schedule, after: datetime) -> None:
    """Point ``next_fire_at`` at the first slot after ``after`` (None: no more slots)."""
    slot = schedule_when(schedule).next_after(after) if schedule.enabled else None
    schedule.next_fire_at = slot
    schedule.due_at = slot + timing.jitter(schedule.pk, slot, schedule.jitter_seconds) if slot else None


def schedule_preview(
    *, when: timing.When, count: int = 5, after: datetime | None = None
) -> list[dict[str, object]]:
    """The next ``count`` fire times after ``after`` (default now): local, UTC, DST."""
    if not 1 <= count <= PREVIEW_MAX:
        raise params.as_validation_error([("count", "out_of_range", f"Between 1 and {PREVIEW_MAX}.")])
    _raise(_instant_errors("after", after))
    tz = timing.zone(when.timezone)
    found = []
    for slot in when.slots_after(after or timezone.now()):
        found.append(timing.describe(slot, tz))
        if len(found) >= count:
            break
    return found


def preview_errors(when: timing.When) -> Errors:
    """What is wrong with an unsaved ``when`` (the same checks as a schedule's)."""
    fields = ("cron", "timezone", "interval_seconds", "start_at", "end_at")
    return when_errors(Schedule(**{name: getattr(when, name) for name in fields}))


# --- writes ------------------------------------------------------------------------------------
@transaction.atomic
def schedule_create(
    *, project: Project, actor: User | None, api_key: ApiKey | None = None, **fields: Any
) -> Schedule:
    """Create a schedule in ``project`` (the caller checks the role there)."""
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable schedule fields: {sorted(unknown)}")
    schedule = Schedule(
        project=project, created_by=actor if actor and actor.is_authenticated else None, **fields
    )
    if schedule.interval_seconds and schedule.start_at is None:
        schedule.start_at = timezone.now().replace(microsecond=0)  # the interval's anchor
    _raise(schedule_errors(schedule))
    now = timezone.now()
    if not schedule.enabled:
        schedule.paused_at, schedule.paused_reason = now, _by(actor)
    _plan(schedule, now)
    schedule.save(force_insert=True)
    return schedule


def _by(actor: User | None) -> str:
    return f"Paused by {actor.username}." if actor is not None and actor.is_authenticated else "Paused."


@transaction.atomic
def schedule_update(
    *,
    schedule: Schedule,
    actor: User | None,
    api_key: ApiKey | None = None,
    fields: Mapping[str, Any],
    replace: bool = False,
) -> Schedule:
    """Change a schedule. A change of when it fires plans the next fire from now (no backfill);
    ``enabled`` false pauses it, true resumes it. With ``replace`` (PUT) the fields not given
    return to their defaults."""
    fields = dict(fields)
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable schedule fields: {sorted(unknown)}")
    schedule = _locked(schedule)
    if replace:
        for name in WRITABLE_FIELDS:
            if name not in fields:
                fields[name] = Schedule._meta.get_field(name).get_default()
    if fields.get("template") is not None and "task" not in fields:
        fields["task"] = None  # switching what it runs: one or the other
    if fields.get("task") is not None and "template" not in fields:
        fields["template"] = None
    enabled = fields.pop("enabled", schedule.enabled)
    changed = {name for name, value in fields.items() if getattr(schedule, name) != value}
    for name in changed:
        setattr(schedule, name, fields[name])
    if schedule.interval_seconds and schedule.start_at is None:
        schedule.start_at = timezone.now().replace(microsecond=0)  # the interval's anchor
        changed.add("start_at")
    _raise(schedule_errors(schedule))
    now = timezone.now()
    if enabled != schedule.enabled:
        if enabled:
            _resume(schedule, now)
        else:
            firing.pause(schedule, _by(actor), actor=actor, api_key=api_key, now=now)
    elif changed & TIMING_FIELDS:
        _plan(schedule, now)
    schedule.updated_at = now
    schedule.save()
    return schedule


@transaction.atomic
def schedule_delete(*, schedule: Schedule, actor: User | None, api_key: ApiKey | None = None) -> None:
    """Delete a schedule and its fire log; the tasks and executions it made stay."""
    Schedule.objects.filter(pk=schedule.pk).delete()


def _locked(schedule: Schedule) -> Schedule:
    return (
        Schedule.objects.select_for_update(of=("self",))
        .select_related("template", "task")
        .get(pk=schedule.pk)
    )


@transaction.atomic
def schedule_pause(
    *, schedule: Schedule, actor: User | None, api_key: ApiKey | None = None, reason: str = ""
) -> Schedule:
    """Stop firing. Paused slots are not recorded one by one: resuming never backfills."""
    schedule = _locked(schedule)
    if schedule.enabled:
        now = timezone.now()
        firing.pause(schedule, reason or _by(actor), actor=actor, api_key=api_key, now=now)
        schedule.updated_at = now
        schedule.save()
    return schedule


def _resume(schedule: Schedule, now: datetime) -> None:
    schedule.enabled = True
    schedule.paused_at, schedule.paused_reason = None, ""
    _plan(schedule, now)  # from now: the slots missed while paused are not run


@transaction.atomic
def schedule_resume(*, schedule: Schedule, actor: User | None, api_key: ApiKey | None = None) -> Schedule:
    """Fire again from the next slot after now (never a backfill). 400 naming the field when
    what it runs no longer fits (the template's parameters changed): fix it first."""
    schedule = _locked(schedule)
    if not schedule.enabled:
        _raise(schedule_errors(schedule))
        now = timezone.now()
        _resume(schedule, now)
        schedule.updated_at = now
        schedule.save()
    return schedule


@transaction.atomic
def schedule_trigger(
    *, schedule: Schedule, actor: User | None, api_key: ApiKey | None = None
) -> tuple[str, ScheduleFire | None]:
    """Run now, obeying the overlap policy: ``("fired", fire)``; ``("queued", None)`` when
    queue_one holds it behind the active run. 409 when the policy skips it (skip, or a run
    already waiting), 400 naming the field when its parameters no longer fit."""
    schedule = _locked(schedule)
    _raise(target_errors(schedule))
    now = timezone.now()
    active = firing.active_runs(schedule)
    if active and schedule.overlap_policy in (OverlapPolicy.SKIP, OverlapPolicy.QUEUE_ONE):
        if schedule.overlap_policy == OverlapPolicy.QUEUE_ONE and schedule.pending_slot is None:
            schedule.pending_slot, schedule.pending_kind = now, FireKind.MANUAL
            schedule.save(update_fields=["pending_slot", "pending_kind"])
            return RunOutcome.QUEUED, None
        raise Conflict(
            "The previous run of this schedule is still active; its overlap policy "
            f"({schedule.overlap_policy}) does not start another.",
            code="overlap",
            active=[str(run.pk) for run in active],
        )
    if active and schedule.overlap_policy == OverlapPolicy.CANCEL_PREVIOUS:
        firing.cancel_runs(active)
    try:
        fired = firing.fire(schedule, now, kind=FireKind.MANUAL, now=now, actor=actor, api_key=api_key)
    except firing.FireRefused as refused:
        raise Conflict(str(refused), code="not_runnable") from None
    schedule.save(update_fields=["last_outcome", "last_scheduled_for"])
    return RunOutcome.FIRED, fired


# --- the tick ------------------------------------------------------------------------------------
def schedules_tick(*, now: datetime | None = None, limit: int = TICK_BATCH) -> int:
    """Handle up to ``limit`` due schedules, each in its own short transaction; how many.

    Safe to call from any number of processes at once (see the module's docstring).
    """
    seen: list[Any] = []
    while len(seen) < limit:
        taken: Schedule | None = None
        try:
            with transaction.atomic():
                taken = _take_due(now or timezone.now(), seen)
                if taken is None:
                    break
                seen.append(taken.pk)
                _handle(taken, now or timezone.now())
        except DatabaseError:
            raise  # the database is away: the worker's job loop retries in a second
        except Exception:
            if taken is None:
                raise
            # One schedule's bug must not stop the others (it is first in line every tick):
            # its transaction rolled back; the rest are handled, and it is tried again next tick.
            logger.exception("Schedule %s could not be handled", taken.pk)
    return len(seen)


def _take_due(now: datetime, seen: list[Any]) -> Schedule | None:
    """Lock one due schedule no other ticker holds (SKIP LOCKED), the most overdue first."""
    due = Schedule.objects.due(now).exclude(pk__in=seen).order_by("due_at", "id")
    pk = lock_skipping_locked(due).values_list("pk", flat=True).first()
    if pk is None:
        return None
    schedule = Schedule.objects.select_related("template", "task").get(pk=pk)
    # Read again under the lock: another ticker may have handled it between its read and ours.
    if not schedule.enabled or not (
        (schedule.due_at is not None and schedule.due_at <= now) or schedule.pending_slot is not None
    ):
        return None
    return schedule


def _handle(schedule: Schedule, now: datetime) -> None:
    """One locked schedule: the slot waiting behind a run (queue_one), then the due slots."""
    if schedule.pending_slot is not None and not firing.active_runs(schedule):
        slot, kind = schedule.pending_slot, schedule.pending_kind or FireKind.SCHEDULED
        schedule.pending_slot, schedule.pending_kind = None, ""
        _fire_all(schedule, [slot], kind, now, overlap_checked=True)
    if schedule.enabled and schedule.due_at is not None and schedule.due_at <= now:
        try:
            due, older, following = _due_slots(schedule, now)
        except timing.TimingError as exc:  # e.g. its zone left the system's tz database
            _pause_recording(schedule, [], f"Cannot compute its slots: {exc.field}: {exc}", now)
            due, older, following = [], (0, None, None), None
        _fire_due(schedule, due, older, now)
        if schedule.enabled:
            schedule.next_fire_at = following
            schedule.due_at = (
                following + timing.jitter(schedule.pk, following, schedule.jitter_seconds)
                if following
                else None
            )
    schedule.save(
        update_fields=[
            "enabled",
            "paused_at",
            "paused_reason",
            "next_fire_at",
            "due_at",
            "pending_slot",
            "pending_kind",
            "last_outcome",
            "last_scheduled_for",
        ]
    )


def _due_slots(
    schedule: Schedule, now: datetime
) -> tuple[list[datetime], tuple[int, datetime | None, datetime | None], datetime | None]:
    """The due slots from ``next_fire_at`` on: ``(within the catch-up window, (count, first,
    last) of those before it, the first slot not due yet)``."""
    assert schedule.next_fire_at is not None
    window_start = now - timedelta(seconds=schedule.catchup_window_seconds)
    when = schedule_when(schedule)
    older_count, older_first, older_last = 0, None, None
    slot: datetime | None = schedule.next_fire_at
    if slot < window_start:
        # Count what the outage swallowed (bounded), then jump to the window.
        scanned = 0
        while slot is not None and slot < window_start and scanned < _SCAN_MAX:
            older_count += 1
            older_first = older_first or slot
            older_last = slot
            slot = when.next_after(slot)
            scanned += 1
        if slot is not None and slot < window_start:
            slot = when.next_after(window_start - timedelta(microseconds=1))
    due: list[datetime] = []
    while slot is not None and slot + timing.jitter(schedule.pk, slot, schedule.jitter_seconds) <= now:
        due.append(slot)
        slot = when.next_after(slot)
    return due, (older_count, older_first, older_last), slot


def _fire_due(
    schedule: Schedule,
    due: list[datetime],
    older: tuple[int, datetime | None, datetime | None],
    now: datetime,
) -> None:
    """Apply the misfire policy to the due slots, then the overlap policy to those that run."""
    count, first, last = older
    window = f"catch-up window ({schedule.catchup_window_seconds} s)"
    if count:
        assert first is not None
        assert last is not None
        why = f"Older than the {window} when a worker next ticked."
        if count >= _SCAN_MAX:
            why = f"At least {count} slots; {why}"
        _record_span(schedule, count, first, last, why, now)
    if not due:
        return
    latest = due[-1]
    lateness = now - (latest + timing.jitter(schedule.pk, latest, schedule.jitter_seconds))
    on_time = lateness <= timedelta(seconds=settings.TASKFORGE_SCHEDULE_MISFIRE_GRACE_SECONDS)
    policy = schedule.misfire_policy
    if policy == MisfirePolicy.RUN_ALL:
        run, kind = due[-RUN_ALL_CAP:], FireKind.SCHEDULED if on_time and len(due) == 1 else FireKind.CATCHUP
        missed, why = (
            due[:-RUN_ALL_CAP],
            f"Missed while no worker ticked; over run_all's cap of {RUN_ALL_CAP}.",
        )
    elif on_time:
        run, kind = [latest], FireKind.SCHEDULED
        missed, why = (
            due[:-1],
            f"Missed while no worker ticked; the slot at {latest.isoformat()} ran on time.",
        )
    elif policy == MisfirePolicy.RUN_ONCE:
        run, kind = [latest], FireKind.CATCHUP
        missed, why = (
            due[:-1],
            f"Missed while no worker ticked; run_once ran the latest, {latest.isoformat()}.",
        )
    else:
        run, kind = [], FireKind.SCHEDULED
        missed, why = due, "Missed while no worker ticked; misfire_policy is skip."
    _record_many(schedule, missed, why, now)
    _fire_all(schedule, run, kind, now)


def _record_span(
    schedule: Schedule, count: int, first: datetime, last: datetime, why: str, now: datetime
) -> None:
    if count == 1:
        firing.record_skipped(schedule, [first], FireOutcome.MISSED, why, kind=FireKind.SCHEDULED, now=now)
        return
    firing.record_skipped(
        schedule,
        [first],
        FireOutcome.MISSED,
        f"{count} slots from {first.isoformat()} to {last.isoformat()} missed. {why}",
        kind=FireKind.SCHEDULED,
        now=now,
    )


def _record_many(schedule: Schedule, slots: list[datetime], why: str, now: datetime) -> None:
    if len(slots) > MISSED_ROWS_MAX:
        head, slots = slots[: -MISSED_ROWS_MAX + 1], slots[-MISSED_ROWS_MAX + 1 :]
        _record_span(schedule, len(head), head[0], head[-1], why, now)
    if slots:
        firing.record_skipped(schedule, slots, FireOutcome.MISSED, why, kind=FireKind.SCHEDULED, now=now)


def _fire_all(
    schedule: Schedule, slots: list[datetime], kind: str, now: datetime, *, overlap_checked: bool = False
) -> None:
    """Run ``slots`` unless the overlap policy, a failure streak or a refusal stops them.

    The overlap policy looks once, at the runs from before this pass: the catch-up runs of
    run_all are one batch and do not skip each other.
    """
    if not slots:
        return
    if firing.failure_streak(schedule):
        reason = f"Paused after {schedule.pause_after_failures} failed runs in a row."
        _pause_recording(schedule, slots, reason, now)
        return
    active = [] if overlap_checked else firing.active_runs(schedule)
    if active:
        policy = schedule.overlap_policy
        why = f"The previous run ({active[-1].pk}) was still {active[-1].status}."
        if policy == OverlapPolicy.SKIP:
            firing.record_skipped(schedule, slots, FireOutcome.SKIPPED_OVERLAP, why, kind=kind, now=now)
            return
        if policy == OverlapPolicy.QUEUE_ONE:
            waiting = schedule.pending_slot is None
            skipped = slots[:-1] if waiting else slots
            firing.record_skipped(
                schedule,
                skipped,
                FireOutcome.SKIPPED_OVERLAP,
                why + (" A later slot waits to run after it." if waiting else " A slot already waits."),
                kind=kind,
                now=now,
            )
            if waiting:
                schedule.pending_slot, schedule.pending_kind = slots[-1], kind
            return
        if policy == OverlapPolicy.CANCEL_PREVIOUS:
            firing.cancel_runs(active)
    for index, slot in enumerate(slots):
        try:
            firing.fire(schedule, slot, kind=kind, now=now)
        except firing.FireRefused as refused:
            _pause_recording(schedule, slots[index + 1 :], f"Cannot run: {refused}", now)
            return


def _pause_recording(schedule: Schedule, slots: list[datetime], reason: str, now: datetime) -> None:
    firing.pause(schedule, reason, now=now)
    for slot in slots:
        firing.record(schedule, slot, FireOutcome.PAUSED, reason, kind=FireKind.SCHEDULED, now=now)
