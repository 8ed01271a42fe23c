"""Delivering webhooks, from the worker side: never inside a web request.

Two plain functions, with no state outside the database, so the ``runwebhooks`` loop and
the task worker can both call them, from any number of processes:

``fan_out()`` reads new events from the outbox (``events.Event``, through
``events.selectors.events_after``) and makes one ``Delivery`` per matching active
subscription, in the transaction that advances the outbox cursor.

``deliver_due()`` claims due deliveries (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL),
sends them outside any transaction, and records each attempt.

Reading the outbox. Event ids come from a sequence when the row is inserted, but the inserting
transactions commit in any order, so "every id above the last one seen" would skip an event
whose transaction commits after a higher id was read. The cursor (``OutboxCursor``) therefore
keeps, besides the highest id read, the *gaps* below it: ids not seen yet. Each pass reads new
ids and the gaps; an event found in a gap is fanned out then, and a gap is forgotten after
TASKFORGE_WEBHOOK_OUTBOX_GAP_SECONDS (its transaction rolled back, or the id was skipped).
Nothing waits for a gap to close, so one slow transaction never delays the others' events.
Deliveries are unique per (subscription, event), so an event read twice is harmless.

Guarantees: at least once (a sender that dies mid-send loses its lease and the delivery is
sent again); order is not promised, not even per subscription.
"""

from __future__ import annotations

import email.utils
import logging
import math
import secrets as secrets_module
import ssl
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from core.sql import lock_skipping_locked
from events.models import Event
from events.selectors import events_after
from tasks.models import Task
from tasks.serializers import TaskSerializer
from webhooks import ssrf
from webhooks.models import (
    EVENT_TYPES,
    RESPONSE_BODY_MAX,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    OutboxCursor,
    Subscription,
    Trigger,
)
from webhooks.services import payload_json, subscription_disable

logger = logging.getLogger("taskforge.webhooks")

# Waits before each retry: the first try is immediate, then these (SPEC §6), each +-10 %.
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=24),
)
JITTER = 0.1
GAPS_MAX = 1000
# Keys never copied from an event into a payload, at any depth.
SECRET_KEYS = frozenset({"secret_parameters", "secrets", "secret"})
USER_AGENT = f"Taskforge-Webhooks/{settings.TASKFORGE_VERSION}"


# --- Fan-out ------------------------------------------------------------------------------------
# What matching an event to subscriptions reads of it (not its data, nor who did it).
EVENT_MATCH_FIELDS = ("id", "project_id", "task_id", "type", "created_at")


def fan_out(batch: int = 500, *, now: datetime | None = None) -> int:
    """Turn up to ``batch`` new events into deliveries; returns how many events were read.

    Only one process fans out at a time (the cursor row is locked; others return 0 at once).
    """
    now = now or timezone.now()
    OutboxCursor.objects.get_or_create(pk=1)
    with transaction.atomic():
        cursor = lock_skipping_locked(OutboxCursor.objects.filter(pk=1)).first()
        if cursor is None:
            return 0  # another dispatcher holds the cursor
        gaps = [
            gap
            for gap in cursor.gaps
            if now.timestamp() - gap[2] < settings.TASKFORGE_WEBHOOK_OUTBOX_GAP_SECONDS
        ]
        # Read narrow: most events match no subscription; the rest are read whole below.
        events = events_after(cursor.last_event_id, batch, gaps=gaps, fields=EVENT_MATCH_FIELDS)
        if not events and gaps == cursor.gaps:
            return 0
        seen = [event.pk for event in events]
        gaps = remove_ids(gaps, [pk for pk in seen if pk <= cursor.last_event_id])
        new = [pk for pk in seen if pk > cursor.last_event_id]
        if new:
            gaps.extend(missing_ranges(cursor.last_event_id, new, now.timestamp()))
            cursor.last_event_id = new[-1]
        if len(gaps) > GAPS_MAX:
            logger.warning("Outbox cursor: %d gaps, forgetting the oldest", len(gaps))
            gaps = gaps[-GAPS_MAX:]
        _make_deliveries(events, now)
        cursor.gaps = gaps
        cursor.updated_at = now
        cursor.save(update_fields=["last_event_id", "gaps", "updated_at"])
    return len(events)


def missing_ranges(after: int, seen: list[int], first_seen: float) -> list[list[Any]]:
    """Ranges of ids in ``(after, max(seen)]`` absent from the sorted ``seen``."""
    ranges: list[list[Any]] = []
    expected = after + 1
    for pk in seen:
        if pk > expected:
            ranges.append([expected, pk - 1, first_seen])
        expected = pk + 1
    return ranges


def remove_ids(gaps: list[list[Any]], found: Iterable[int]) -> list[list[Any]]:
    """``gaps`` with the ``found`` ids taken out (a range split around each)."""
    for pk in found:
        split: list[list[Any]] = []
        for low, high, first_seen in gaps:
            if low <= pk <= high:
                if low < pk:
                    split.append([low, pk - 1, first_seen])
                if pk < high:
                    split.append([pk + 1, high, first_seen])
            else:
                split.append([low, high, first_seen])
        gaps = split
    return gaps


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def event_payload(event: Event, task: Task | None) -> dict[str, Any]:
    """``{type, timestamp, data}``: the event's data, who did it, and the task as the API shows it.

    The task is read when the event is fanned out (normally within a second of it), so it
    may already show later changes; ``data`` holds what the event itself recorded.
    """
    actor = None
    if event.actor_id is not None:
        actor = {"id": event.actor_id, "username": event.actor.get_username()}
    data = {
        **_scrub(event.data),
        "event_id": event.pk,
        "project": event.project_id,
        "task_id": event.task_id,
        "actor": actor,
        "api_key": event.actor_key_prefix or None,
        "task": TaskSerializer(task).data if task is not None else None,
    }
    return {"type": event.type, "timestamp": event.created_at, "data": data}


def _make_deliveries(events: list[Event], now: datetime) -> int:
    events = [event for event in events if event.type in EVENT_TYPES]
    if not events:
        return 0
    by_project: dict[Any, list[Subscription]] = defaultdict(list)
    for subscription in Subscription.objects.active().filter(project_id__in={e.project_id for e in events}):
        by_project[subscription.project_id].append(subscription)
    matches = []
    for event in events:
        # A subscription receives what happens after it was made, not the history before it.
        targets = [
            s
            for s in by_project[event.project_id]
            if s.wants(event.type) and s.created_at <= event.created_at
        ]
        if targets:
            matches.append((event, targets))
    if not matches:
        return 0
    whole = Event.objects.select_related("actor").in_bulk([event.pk for event, _ in matches])
    matches = [(whole[event.pk], targets) for event, targets in matches if event.pk in whole]  # (pruned)
    task_ids = {event.task_id for event, _ in matches if event.task_id is not None}
    tasks = Task.objects.for_api().in_bulk(task_ids) if task_ids else {}
    deliveries = []
    for event, targets in matches:
        body = payload_json(event_payload(event, tasks.get(event.task_id)))
        deliveries.extend(
            Delivery(
                subscription=subscription,
                event=event,
                event_type=event.type,
                trigger=Trigger.EVENT,
                payload=body,
                next_attempt_at=now,
                created_at=now,
            )
            for subscription in targets
        )
    Delivery.objects.bulk_create(deliveries, ignore_conflicts=True)
    return len(deliveries)


# --- Signing ------------------------------------------------------------------------------------
def signature_headers(
    *, message_id: str, body: str, secrets: Iterable[str], timestamp: datetime
) -> dict[str, str]:
    """Standard Webhooks headers; one ``v1,<base64>`` signature per secret, space-separated."""
    timestamp = timestamp.astimezone(UTC)
    signatures = [Webhook(secret).sign(message_id, timestamp, body) for secret in secrets]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(math.floor(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


# --- Sending ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sender:
    """How to send: everything a test may replace. ``None`` means "from settings"."""

    resolver: ssrf.Resolver | None = None
    verify: ssl.SSLContext | bool = True
    timeout: float | None = None
    allow_http: bool | None = None
    allow_private: bool | None = None
    concurrency: int | None = None

    @property
    def timeout_seconds(self) -> float:
        return float(self.timeout if self.timeout is not None else settings.TASKFORGE_WEBHOOK_TIMEOUT)

    @property
    def threads(self) -> int:
        return max(1, self.concurrency or settings.TASKFORGE_WEBHOOK_CONCURRENCY)


@dataclass(frozen=True)
class Outgoing:
    """A claimed delivery, ready to send (no database access needed)."""

    delivery_id: uuid.UUID
    claim_token: uuid.UUID
    subscription_id: uuid.UUID
    failures: int
    url: str
    message_id: str
    body: str
    secrets: tuple[str, ...]


@dataclass
class Outcome:
    """What one attempt came to."""

    started_at: datetime
    url: str
    duration_ms: int = 0
    address: str = ""
    status_code: int | None = None
    response_body: str = ""
    error: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def send(outgoing: Outgoing, sender: Sender | None = None) -> Outcome:
    """One HTTP attempt: check the URL, connect to an address it was checked at, POST, read.

    Never raises for the receiver's sake: every failure is an ``Outcome`` with ``error``.
    """
    sender = sender or Sender()
    outcome = Outcome(started_at=timezone.now(), url=outgoing.url)
    started = time.monotonic()
    try:
        target = ssrf.check_url(
            outgoing.url,
            resolver=sender.resolver,
            allow_http=sender.allow_http,
            allow_private=sender.allow_private,
        )
    except ssrf.UnsafeURL as exc:
        outcome.error = f"Refused before sending: {exc}"
        return outcome
    body = outgoing.body.encode("utf-8")
    headers = {
        "host": target.host_header,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "accept-encoding": "identity",  # read the first 4 KiB as sent: no decompression bombs
        **signature_headers(
            message_id=outgoing.message_id,
            body=outgoing.body,
            secrets=outgoing.secrets,
            timestamp=datetime.now(UTC),
        ),
    }
    timeout = sender.timeout_seconds
    deadline = started + timeout
    errors = []
    with httpx.Client(
        verify=sender.verify,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,  # no proxy from the environment: the connection must go where we checked
    ) as client:
        for address in target.addresses:
            outcome.address = address
            try:
                with client.stream(
                    "POST",
                    target.request_url(address),
                    content=body,
                    headers=headers,
                    extensions=target.extensions(),
                ) as response:
                    outcome.status_code = response.status_code
                    outcome.response_body = _read_head(response, deadline, outcome)
                    outcome.retry_after = parse_retry_after(
                        response.headers.get("retry-after"), timezone.now()
                    )
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        outcome.error = f"Redirect ({response.status_code}) to {location!r} not followed."
                    elif not outcome.ok and not outcome.error:
                        outcome.error = f"HTTP {response.status_code}."
                    break
            except httpx.ConnectError as exc:
                errors.append(f"{address}: {exc or type(exc).__name__}")
                continue  # try the next checked address
            except httpx.TimeoutException as exc:
                outcome.error = f"Timed out after {timeout:g} s ({type(exc).__name__})."
                break
            except httpx.HTTPError as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
                break
        else:
            outcome.error = "Could not connect: " + "; ".join(errors)
    outcome.duration_ms = round((time.monotonic() - started) * 1000)
    return outcome


def _read_head(response: httpx.Response, deadline: float, outcome: Outcome) -> str:
    """The first 4 KiB of the answer, within the overall deadline; the rest is not read."""
    head = b""
    try:
        for chunk in response.iter_raw():
            head += chunk
            if len(head) >= RESPONSE_BODY_MAX or time.monotonic() > deadline:
                break
    except httpx.HTTPError as exc:
        outcome.error = f"Reading the answer failed: {type(exc).__name__}."
    return head[:RESPONSE_BODY_MAX].decode("utf-8", errors="replace")


# --- Claiming and recording ---------------------------------------------------------------------
def _lease(sender: Sender, count: int) -> timedelta:
    """Long enough for the whole claimed batch: connect, write and read may each take ``timeout``."""
    rounds = math.ceil(count / sender.threads)
    return timedelta(seconds=sender.timeout_seconds * 3 * rounds + 60)


def _claim(limit: int, now: datetime, sender: Sender) -> list[Delivery]:
    token = uuid.uuid4()
    with transaction.atomic():
        due = lock_skipping_locked(Delivery.objects.due(now).order_by("next_attempt_at"))
        rows = list(due.values_list("pk", "trigger", "subscription__active")[:limit])
        # A disabled subscription gets only what its owner asked for by hand (tests, replays).
        stale = [pk for pk, trigger, active in rows if not active and trigger == Trigger.EVENT]
        if stale:
            Delivery.objects.filter(pk__in=stale).update(
                status=DeliveryStatus.CANCELLED,
                next_attempt_at=None,
                last_error="Cancelled: the subscription is disabled.",
            )
        ids = [pk for pk, trigger, active in rows if pk not in stale]
        if not ids:
            return []
        Delivery.objects.filter(pk__in=ids).update(
            claim_token=token,
            next_attempt_at=now + _lease(sender, len(ids)),
            attempt_count=F("attempt_count") + 1,
        )
    return list(Delivery.objects.filter(claim_token=token).select_related("subscription"))


def _outgoing(delivery: Delivery, now: datetime) -> Outgoing:
    subscription = delivery.subscription
    return Outgoing(
        delivery_id=delivery.pk,
        claim_token=delivery.claim_token,  # type: ignore[arg-type]
        subscription_id=subscription.pk,
        failures=delivery.failures,
        url=subscription.url,
        message_id=delivery.message_id,
        body=delivery.payload,
        secrets=tuple(subscription.signing_secrets(now)),
    )


def retry_delay(failures: int, retry_after: float | None, rng: Any = None) -> timedelta | None:
    """Wait before the next try after ``failures`` failed ones; None when the schedule ran out.

    The scheduled wait gets +-10 % jitter; a ``Retry-After`` longer than that wins, capped at
    TASKFORGE_WEBHOOK_RETRY_AFTER_MAX.
    """
    if failures > len(RETRY_SCHEDULE):
        return None
    rng = rng or secrets_module.SystemRandom()
    delay = RETRY_SCHEDULE[failures - 1].total_seconds() * rng.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, float(settings.TASKFORGE_WEBHOOK_RETRY_AFTER_MAX)))
    return timedelta(seconds=delay)


def _record(outgoing: Outgoing, outcome: Outcome, now: datetime, rng: Any) -> None:
    mine = Delivery.objects.filter(pk=outgoing.delivery_id, claim_token=outgoing.claim_token)
    common: dict[str, Any] = {
        "claim_token": None,
        "last_attempt_at": outcome.started_at,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error[:2000],
    }
    disable_reason = None
    if outcome.ok:
        change = {**common, "status": DeliveryStatus.SUCCEEDED, "next_attempt_at": None, "delivered_at": now}
    elif outcome.status_code == 410:
        change = {**common, "status": DeliveryStatus.FAILED, "next_attempt_at": None}
        disable_reason = f"The endpoint answered 410 Gone at {now:%Y-%m-%d %H:%M:%S} UTC."
    else:
        failures = outgoing.failures + 1
        delay = retry_delay(failures, outcome.retry_after, rng)
        change = {**common, "failures": failures}
        if delay is None:
            change.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
        else:
            change.update(next_attempt_at=now + delay)
    with transaction.atomic():
        # Zero rows: the subscription was deleted meanwhile (stop), or our lease ran out and
        # another sender took the delivery over (log the try, change nothing).
        if not mine.update(**change) and not Delivery.objects.filter(pk=outgoing.delivery_id).exists():
            return
        number = (
            Delivery.objects.filter(pk=outgoing.delivery_id).values_list("attempt_count", flat=True).first()
        )
        DeliveryAttempt.objects.create(
            delivery_id=outgoing.delivery_id,
            number=number or 0,
            started_at=outcome.started_at,
            duration_ms=outcome.duration_ms,
            url=outgoing.url[:2048],
            address=outcome.address,
            status_code=outcome.status_code,
            response_body=outcome.response_body,
            error=outcome.error,
        )
        subscriptions = Subscription.objects.filter(pk=outgoing.subscription_id)
        if outcome.ok:
            subscriptions.filter(failing_since__isnull=False).update(failing_since=None)
            return
        subscriptions.filter(active=True, failing_since__isnull=True).update(failing_since=now)
        if disable_reason is None:
            since = subscriptions.filter(active=True).values_list("failing_since", flat=True).first()
            limit = timedelta(seconds=settings.TASKFORGE_WEBHOOK_DISABLE_AFTER)
            if since is not None and now - since >= limit:
                disable_reason = (
                    f"Every delivery failed for {limit.total_seconds() / 86400:g} days "
                    f"(since {since:%Y-%m-%d %H:%M:%S} UTC); last error: {outcome.error[:500]}"
                )
    if disable_reason is not None:
        subscription_disable(subscription_id=outgoing.subscription_id, reason=disable_reason, now=now)
        logger.warning("Webhook %s disabled: %s", outgoing.subscription_id, disable_reason)


def deliver_due(
    limit: int = 50, *, now: datetime | None = None, sender: Sender | None = None, rng: Any = None
) -> int:
    """Claim up to ``limit`` due deliveries, send them (in threads), record every attempt.

    Returns how many were claimed. ``now`` fixes the clock for claiming and scheduling (tests
    move it forward instead of sleeping); ``sender`` and ``rng`` replace the network settings
    and the jitter's randomness.
    """
    sender = sender or Sender()
    clock = now or timezone.now()
    claimed = _claim(limit, clock, sender)
    if not claimed:
        return 0
    if sender.verify is True:  # load the CA bundle once per batch, not once per request
        sender = replace(sender, verify=httpx.create_ssl_context())
    batch = [_outgoing(delivery, clock) for delivery in claimed]
    if len(batch) == 1 or sender.threads == 1:
        for outgoing in batch:
            _record(outgoing, send(outgoing, sender), now or timezone.now(), rng)
        return len(batch)
    # Threads do only HTTP; the database is written from this thread, one result at a time.
    with ThreadPoolExecutor(max_workers=min(sender.threads, len(batch))) as pool:
        futures = {pool.submit(send, outgoing, sender): outgoing for outgoing in batch}
        for future in as_completed(futures):
            _record(futures[future], future.result(), now or timezone.now(), rng)
    return len(batch)
