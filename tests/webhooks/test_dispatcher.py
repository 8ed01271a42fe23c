"""Fan-out from the outbox, signing, and delivery to a real HTTP receiver on 127.0.0.1.

Time is controlled by passing ``now`` (never by sleeping): a retry due in five hours is sent
by calling ``deliver_due(now=<five hours later>)``.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from events.models import Event, EventType
from tasks import services as task_services
from webhooks import dispatcher, services
from webhooks.dispatcher import RETRY_SCHEDULE, deliver_due, fan_out, missing_ranges, remove_ids
from webhooks.models import (
    RESPONSE_BODY_MAX,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    OutboxCursor,
    Subscription,
    Trigger,
)

pytestmark = pytest.mark.django_db


class Midpoint:
    """Jitter without randomness: every draw is the middle of its range."""

    def uniform(self, low: float, high: float) -> float:
        return (low + high) / 2


MID = Midpoint()


def make_task(user, name="backup", **fields):
    return task_services.task_create(project=user.personal_project, actor=user, name=name, **fields)


def only_delivery(subscription: Subscription) -> Delivery:
    (delivery,) = Delivery.objects.filter(subscription=subscription)
    return delivery


# --- Fan-out ------------------------------------------------------------------------------------
def test_fan_out_makes_one_delivery_per_matching_subscription(user, other_user, subscribe):
    everything, _ = subscribe()
    completions, _ = subscribe(event_types=["task.completed"])
    paused, _ = subscribe(active=False)
    foreign, _ = services.subscription_create(
        project=other_user.personal_project, actor=other_user, url="https://93.184.216.34/other"
    )
    make_task(user)

    assert fan_out() == 1
    delivery = only_delivery(everything)
    assert delivery.event_type == "task.created" and delivery.trigger == Trigger.EVENT
    assert delivery.status == DeliveryStatus.PENDING and delivery.next_attempt_at is not None
    for subscription in (completions, paused, foreign):
        assert not Delivery.objects.filter(subscription=subscription).exists()
    assert fan_out() == 0  # nothing new


def test_fan_out_skips_history_from_before_the_subscription_and_is_idempotent(user, subscribe):
    make_task(user, "before")
    subscribe()
    make_task(user, "after")
    fan_out()
    assert [json.loads(d.payload)["data"]["name"] for d in Delivery.objects.all()] == ["after"]
    # Reading the same events again (a cursor reset) makes no duplicates.
    OutboxCursor.objects.update(last_event_id=0, gaps=[])
    fan_out()
    assert Delivery.objects.count() == 1


def test_fan_out_works_in_batches(user, subscribe):
    subscribe()
    for n in range(7):
        make_task(user, f"t{n}")
    assert fan_out(batch=3) == 3
    assert fan_out(batch=3) == 3
    assert fan_out(batch=3) == 1
    assert Delivery.objects.count() == 7


def test_an_event_committed_late_is_still_fanned_out(user, subscribe):
    """Ids are handed out at insert but commits come in any order: a skipped id is a gap."""
    subscribe()
    _, late, _ = (make_task(user, name) for name in ("first", "late", "last"))
    late_event = Event.objects.get(task=late)
    late_row = {f.attname: getattr(late_event, f.attname) for f in Event._meta.concrete_fields}
    late_event.delete()  # as if its transaction had not committed yet

    fan_out()
    gaps = [gap[:2] for gap in OutboxCursor.objects.get().gaps]
    assert [late_row["id"], late_row["id"]] in gaps
    assert Delivery.objects.count() == 2

    Event.objects.create(**late_row)  # ... and now it commits
    assert fan_out() == 1
    assert sorted(json.loads(d.payload)["data"]["name"] for d in Delivery.objects.all()) == [
        "first",
        "last",
        "late",
    ]
    assert [late_row["id"], late_row["id"]] not in [gap[:2] for gap in OutboxCursor.objects.get().gaps]


def test_gaps_are_forgotten_after_the_grace_period(user, subscribe, settings):
    subscribe()
    make_task(user, "a")
    gone = make_task(user, "b")
    make_task(user, "c")
    Event.objects.filter(task=gone).delete()  # rolled back
    fan_out()
    gone_id = Event.objects.get(task__name="a").pk + 1
    assert [gone_id, gone_id] in [gap[:2] for gap in OutboxCursor.objects.get().gaps]
    later = timezone.now() + timedelta(seconds=settings.TASKFORGE_WEBHOOK_OUTBOX_GAP_SECONDS + 1)
    fan_out(now=later)
    assert OutboxCursor.objects.get().gaps == []


def test_gap_bookkeeping():
    assert missing_ranges(10, [11, 12, 15, 16, 20], 1.0) == [[13, 14, 1.0], [17, 19, 1.0]]
    assert missing_ranges(0, [1, 2, 3], 1.0) == []
    gaps = [[13, 14, 1.0], [17, 19, 1.0]]
    assert remove_ids(gaps, [13, 18]) == [[14, 14, 1.0], [17, 17, 1.0], [19, 19, 1.0]]
    assert remove_ids([[5, 5, 2.0]], [5]) == []


def test_payload_has_type_timestamp_and_the_task_as_the_api_shows_it(user, subscribe, api):
    subscription, secret = subscribe()
    task = make_task(user, "nightly", tags=["ops"], metadata={"owner": "ops"})
    event = Event.objects.get(task=task)
    event.data["secret_parameters"] = {"token": "hunter2"}  # never copied into a payload
    event.save()
    fan_out()
    payload = json.loads(only_delivery(subscription).payload)
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "task.created"
    assert payload["timestamp"] == event.created_at.isoformat().replace("+00:00", "Z")
    data = payload["data"]
    assert data["name"] == "nightly" and data["status"] == "pending"  # the event's own data
    assert data["event_id"] == event.pk and data["task_id"] == str(task.pk)
    assert data["actor"] == {"id": user.pk, "username": user.username}
    assert data["task"] == api.get(f"/api/v1/tasks/{task.pk}").json()
    body = only_delivery(subscription).payload
    assert "hunter2" not in body and "secret_parameters" not in body
    assert secret not in body and secret.removeprefix("whsec_") not in body


def test_a_deleted_tasks_events_still_go_out_without_the_task(user, subscribe):
    subscription, _ = subscribe(event_types=["task.deleted"])
    task = make_task(user)
    task_services.task_delete(task=task, actor=user)
    fan_out()
    data = json.loads(only_delivery(subscription).payload)["data"]
    assert data["task"] is None and data["task_id"] == str(task.pk)


def test_unpublished_event_types_are_not_sent(user, subscribe):
    subscribe()
    Event.objects.create(project=user.personal_project, type="internal.thing")
    fan_out()
    assert not Delivery.objects.exists()


# --- Signing and sending --------------------------------------------------------------------------
def test_delivery_is_signed_and_verifies_with_the_library(user, subscribe, receiver, local_targets):
    subscription, secret = subscribe(receiver.url)
    make_task(user)
    fan_out()
    assert deliver_due() == 1

    (request,) = receiver.hook_requests()
    delivery = only_delivery(subscription)
    assert request.headers["webhook-id"] == delivery.message_id
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(request.body, request.headers)["type"] == "task.created"
    assert request.body.decode() == delivery.payload
    with pytest.raises(WebhookVerificationError):
        Webhook(services.generate_secret()).verify(request.body, request.headers)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.delivered_at is not None
    (attempt,) = delivery.attempts.all()
    assert attempt.status_code == 200 and attempt.address == "127.0.0.1" and attempt.duration_ms >= 0
    assert attempt.response_body == '{"ok": true}'


def test_rotation_signs_with_both_secrets_for_the_grace_period(user, subscribe, receiver, local_targets):
    subscription, old = subscribe(receiver.url)
    subscription, new = services.subscription_rotate_secret(subscription=subscription, actor=user)
    assert new != old and new.startswith("whsec_")
    services.send_test(subscription=subscription, actor=user)
    deliver_due()
    request = receiver.hook_requests()[-1]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(request.body, request.headers)
    Webhook(new).verify(request.body, request.headers)

    # After the grace period only the new secret signs.
    after = timezone.now() + timedelta(hours=24, seconds=1)
    services.send_test(subscription=subscription, actor=user)
    Delivery.objects.filter(status=DeliveryStatus.PENDING).update(next_attempt_at=after)
    deliver_due(now=after)
    request = receiver.hook_requests()[-1]
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(request.body, request.headers)


def test_signature_headers_follow_the_standard():
    secret = services.generate_secret()
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    headers = dispatcher.signature_headers(
        message_id="msg_1", body='{"a":1}', secrets=[secret], timestamp=when
    )
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(when.timestamp()))
    assert headers["webhook-signature"] == Webhook(secret).sign("msg_1", when, '{"a":1}')


# --- Failures and retries ---------------------------------------------------------------------------
def failing_delivery(user, subscribe, receiver, mode):
    receiver.mode = mode
    subscription, _ = subscribe(receiver.url)
    make_task(user)
    fan_out()
    return subscription


def test_a_500_is_retried_after_about_five_seconds_and_logged(user, subscribe, receiver, local_targets):
    subscription = failing_delivery(user, subscribe, receiver, "big")
    now = timezone.now()
    deliver_due(now=now, rng=MID)
    delivery = only_delivery(subscription)
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.next_attempt_at == now + timedelta(seconds=5)
    assert delivery.last_status_code == 500 and delivery.failures == 1
    (attempt,) = delivery.attempts.all()
    assert attempt.status_code == 500 and attempt.number == 1
    assert attempt.response_body == "x" * RESPONSE_BODY_MAX  # the first 4 KiB only
    subscription.refresh_from_db()
    assert subscription.failing_since == now

    assert deliver_due(now=now + timedelta(seconds=4)) == 0  # not due yet
    receiver.mode = "ok"
    assert deliver_due(now=now + timedelta(seconds=5)) == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempt_count == 2
    subscription.refresh_from_db()
    assert subscription.failing_since is None


def test_jitter_stays_within_ten_percent(user, subscribe, receiver, local_targets):
    subscription = failing_delivery(user, subscribe, receiver, "fail")
    now = timezone.now()
    deliver_due(now=now)
    wait = only_delivery(subscription).next_attempt_at - now
    assert timedelta(seconds=4.5) <= wait <= timedelta(seconds=5.5)


def test_the_whole_retry_schedule_then_failed(user, subscribe, receiver, local_targets, settings):
    settings.TASKFORGE_WEBHOOK_DISABLE_AFTER = 30 * 24 * 3600  # keep the subscription on here
    subscription = failing_delivery(user, subscribe, receiver, "fail")
    now = timezone.now()
    waits = []
    for _ in range(len(RETRY_SCHEDULE) + 1):
        assert deliver_due(now=now, rng=MID) == 1
        delivery = only_delivery(subscription)
        if delivery.status != DeliveryStatus.PENDING:
            break
        waits.append(delivery.next_attempt_at - now)
        now = delivery.next_attempt_at
    assert waits == list(RETRY_SCHEDULE)
    assert delivery.status == DeliveryStatus.FAILED and delivery.next_attempt_at is None
    assert delivery.attempts.count() == len(RETRY_SCHEDULE) + 1 == 10
    assert len(receiver.hook_requests()) == 10


def test_a_timeout_is_a_failure(user, subscribe, receiver, local_targets):
    subscription = failing_delivery(user, subscribe, receiver, "slow")
    deliver_due()
    delivery = only_delivery(subscription)
    assert delivery.status == DeliveryStatus.PENDING and delivery.failures == 1
    (attempt,) = delivery.attempts.all()
    assert attempt.status_code is None and "Timed out after 1 s" in attempt.error
    assert attempt.duration_ms < 2500


def test_a_redirect_is_a_failure_and_is_not_followed(user, subscribe, receiver, local_targets):
    subscription = failing_delivery(user, subscribe, receiver, "redirect")
    deliver_due()
    delivery = only_delivery(subscription)
    assert delivery.status == DeliveryStatus.PENDING and delivery.last_status_code == 302
    assert "not followed" in delivery.last_error
    assert [r.path for r in receiver.requests] == ["/hook"]  # /elsewhere never requested


def test_410_disables_the_subscription_at_once(user, subscribe, receiver, local_targets):
    subscription = failing_delivery(user, subscribe, receiver, "gone")
    make_task(user, "second")
    fan_out()
    deliver_due(limit=1)
    subscription.refresh_from_db()
    assert not subscription.active
    assert "410" in subscription.disabled_reason and subscription.disabled_at is not None
    statuses = sorted(Delivery.objects.values_list("status", flat=True))
    assert statuses == [DeliveryStatus.CANCELLED, DeliveryStatus.FAILED]
    make_task(user, "third")
    fan_out()
    assert Delivery.objects.count() == 2  # no new deliveries while disabled
    assert deliver_due() == 0
    assert len(receiver.hook_requests()) == 1


def test_three_days_of_failures_disable_the_subscription(user, subscribe, receiver, local_targets):
    subscription = failing_delivery(user, subscribe, receiver, "fail")
    start = timezone.now()
    deliver_due(now=start, rng=MID)
    make_task(user, "later")
    fan_out()
    Delivery.objects.filter(status=DeliveryStatus.PENDING).update(next_attempt_at=start + timedelta(days=2))
    deliver_due(now=start + timedelta(days=2), rng=MID)
    subscription.refresh_from_db()
    assert subscription.active and subscription.failing_since == start

    Delivery.objects.filter(status=DeliveryStatus.PENDING).update(next_attempt_at=start + timedelta(days=3))
    deliver_due(now=start + timedelta(days=3), limit=1, rng=MID)
    subscription.refresh_from_db()
    assert not subscription.active
    assert "failed for 3 days" in subscription.disabled_reason and "HTTP 500" in subscription.disabled_reason


def test_a_success_resets_the_failure_streak(user, subscribe, receiver, local_targets):
    subscription = failing_delivery(user, subscribe, receiver, "fail")
    start = timezone.now()
    deliver_due(now=start)
    receiver.mode = "ok"
    Delivery.objects.update(next_attempt_at=start + timedelta(days=2))
    deliver_due(now=start + timedelta(days=2))
    receiver.mode = "fail"
    make_task(user, "again")
    fan_out(now=start + timedelta(days=3))
    Delivery.objects.filter(status=DeliveryStatus.PENDING).update(next_attempt_at=start + timedelta(days=3))
    deliver_due(now=start + timedelta(days=3))
    subscription.refresh_from_db()
    assert subscription.active and subscription.failing_since == start + timedelta(days=3)


@pytest.mark.parametrize("header_kind", ["seconds", "date"])
def test_retry_after_wins_when_longer_than_the_schedule(
    user, subscribe, receiver, local_targets, header_kind
):
    subscription = failing_delivery(user, subscribe, receiver, "busy")
    now = timezone.now()
    receiver.retry_after = (
        "600"
        if header_kind == "seconds"
        else format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True)
    )
    deliver_due(now=now, rng=MID)
    wait = only_delivery(subscription).next_attempt_at - now
    assert timedelta(seconds=590) <= wait <= timedelta(seconds=601)


def test_retry_after_is_capped_and_never_shortens_the_schedule(settings):
    settings.TASKFORGE_WEBHOOK_RETRY_AFTER_MAX = 3600
    assert dispatcher.retry_delay(1, 10 * 86400, MID) == timedelta(hours=1)
    assert dispatcher.retry_delay(3, 1, MID) == timedelta(minutes=30)  # schedule wins
    assert dispatcher.retry_delay(len(RETRY_SCHEDULE) + 1, None, MID) is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert dispatcher.parse_retry_after("120", now) == 120
    assert dispatcher.parse_retry_after("Thu, 01 Jan 2026 00:02:00 GMT", now) == 120
    assert dispatcher.parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0
    assert dispatcher.parse_retry_after("soon", now) is None


def test_every_event_arrives_at_least_once_after_the_receiver_recovers(
    user, subscribe, receiver, local_targets
):
    subscription, _ = subscribe(receiver.url)
    receiver.mode = "fail"
    tasks = [make_task(user, f"t{n}") for n in range(5)]
    task_services.task_move(task=tasks[0], to_status="cancelled", actor=user)
    fan_out()
    now = timezone.now()
    deliver_due(now=now)
    assert len(receiver.hook_requests()) == 6
    assert not Delivery.objects.filter(status=DeliveryStatus.SUCCEEDED).exists()

    receiver.mode = "ok"
    for _ in range(3):  # follow the schedule forward until nothing is due
        now += timedelta(minutes=6)
        deliver_due(now=now)
    delivered = {json.loads(r.body)["data"]["event_id"] for r in receiver.hook_requests() if r.body}
    expected = set(Event.objects.filter(project=subscription.project).values_list("pk", flat=True))
    assert delivered == expected
    assert Delivery.objects.filter(status=DeliveryStatus.SUCCEEDED).count() == 6


def test_a_sender_that_died_loses_its_lease_and_the_delivery_goes_out_again(
    user, subscribe, receiver, local_targets
):
    subscription, _ = subscribe(receiver.url)
    make_task(user)
    fan_out()
    now = timezone.now()
    claimed = dispatcher._claim(10, now, dispatcher.Sender())  # claimed, then the process dies
    assert len(claimed) == 1
    assert deliver_due(now=now) == 0  # leased
    lease_end = Delivery.objects.get().next_attempt_at
    assert deliver_due(now=lease_end) == 1
    assert only_delivery(subscription).status == DeliveryStatus.SUCCEEDED
    assert len(receiver.hook_requests()) == 1


def test_a_disabled_subscription_still_gets_tests_and_replays(user, subscribe, receiver, local_targets):
    subscription, _ = subscribe(receiver.url)
    make_task(user)
    fan_out()
    event_delivery = only_delivery(subscription)
    services.subscription_update(subscription=subscription, actor=user, fields={"active": False})
    event_delivery.refresh_from_db()
    assert event_delivery.status == DeliveryStatus.CANCELLED
    test = services.send_test(subscription=subscription, actor=user)
    services.delivery_replay(delivery=event_delivery, actor=user)
    assert deliver_due() == 2
    assert {r.headers["webhook-id"] for r in receiver.hook_requests()} == {
        test.message_id,
        event_delivery.message_id,  # a replay keeps its webhook-id
    }
    assert json.loads(receiver.hook_requests()[0].body)["type"] in ("webhook.test", "task.created")


def test_attempts_of_a_deleted_subscription_are_dropped(user, subscribe, receiver, local_targets):
    subscription, _ = subscribe(receiver.url)
    services.send_test(subscription=subscription, actor=user)
    claimed = dispatcher._claim(10, timezone.now(), dispatcher.Sender())
    outgoing = dispatcher._outgoing(claimed[0], timezone.now())
    outcome = dispatcher.send(outgoing)
    services.subscription_delete(subscription=subscription, actor=user)
    dispatcher._record(outgoing, outcome, timezone.now(), MID)
    assert not DeliveryAttempt.objects.exists()


def test_runwebhooks_once(user, subscribe, receiver, local_targets, capsys):
    subscribe(receiver.url)
    make_task(user)
    call_command("runwebhooks", "--once")
    assert "read 1 event(s), sent 1 delivery" in capsys.readouterr().out
    assert len(receiver.hook_requests()) == 1


# --- Concurrency ----------------------------------------------------------------------------------
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_never_send_the_same_delivery_twice(user, subscribe, receiver, local_targets):
    subscription, _ = subscribe(receiver.url)
    for _ in range(30):
        services.send_test(subscription=subscription, actor=user)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def dispatch() -> None:
        try:
            barrier.wait()
            while deliver_due(limit=4):
                pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert list(DeliveryAttempt.objects.exclude(status_code=200).values_list("error", flat=True)) == []
    ids = receiver.ids()
    assert len(ids) == 30 and len(set(ids)) == 30
    assert Delivery.objects.filter(status=DeliveryStatus.SUCCEEDED).count() == 30
    assert DeliveryAttempt.objects.count() == 30


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_concurrent_fan_outs_make_each_delivery_once(user, subscribe):
    subscribe()
    for n in range(20):
        make_task(user, f"t{n}")
    barrier = threading.Barrier(3)

    def run() -> None:
        try:
            barrier.wait()
            for _ in range(10):
                fan_out(batch=3)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    while fan_out():
        pass
    assert Delivery.objects.count() == 20
    assert Event.objects.filter(type=EventType.TASK_CREATED).count() == 20


def test_service_validation_matches_the_api(user, subscribe):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        subscribe(event_types=[])
    assert caught.value.error_dict["event_types"][0].code == "blank"
    with pytest.raises(ValidationError) as caught:
        subscribe(url="https://10.0.0.1/x")
    assert caught.value.error_dict["url"][0].code == "forbidden_address"
    assert not Subscription.objects.exists()
