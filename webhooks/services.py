"""Every write to webhook subscriptions and deliveries made on behalf of a person.

The API, the admin and management commands call these; the dispatcher
(``webhooks.dispatcher``) owns the writes of sending. Nothing here makes an HTTP request:
a test delivery or a replay is queued for the dispatcher, never sent inside a web request.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from accounts.models import Project, User
from core.errors import Conflict, field_error
from core.serializers import user_ref
from webhooks import ssrf
from webhooks.models import (
    ALL_EVENTS,
    SUBSCRIPTIONS_PER_PROJECT_MAX,
    TEST_EVENT_TYPE,
    Delivery,
    DeliveryStatus,
    Subscription,
    Trigger,
    generate_secret,
)

WRITABLE_FIELDS: tuple[str, ...] = ("url", "event_types", "active", "description")


def payload_json(payload: dict[str, Any]) -> str:
    """The body as sent: compact JSON, rendered like the API renders (DRF's encoder)."""
    return json.dumps(payload, cls=JSONEncoder, separators=(",", ":"), ensure_ascii=False)


# --- What a project's non-admins may see (docs/webhooks.md, "Who sees what") ---------------
# A webhook URL often carries a credential in its path or query (Slack, CI triggers, ?token=),
# and a receiver's answer may echo anything; only the project's admins, who manage the
# subscription, see them. Everyone else gets the scheme and host only.
MASK = "…"
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """``scheme://host[:port]/…``: user info, path, query and fragment hidden."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username
    return f"{parts.scheme}://{netloc}/{MASK if hidden else ''}"


def mask_urls_in(text: str) -> str:
    """``text`` with every URL in it masked (errors quote a redirect's Location)."""
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text or "")


def check_url(url: str, *, resolver: ssrf.Resolver | None = None) -> str:
    """``url`` if webhooks may call it; a 400 naming ``url`` otherwise."""
    try:
        ssrf.check_url(url, resolver=resolver)
    except ssrf.UnsafeURL as exc:
        raise field_error("url", str(exc), exc.code) from None
    return url


def _normalize(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable webhook fields: {sorted(unknown)}")
    if isinstance(fields.get("event_types"), list):
        fields["event_types"] = list(dict.fromkeys(fields["event_types"]))
    return fields


def _cancel_pending(subscription: Subscription, reason: str) -> int:
    """Cancel the event deliveries still waiting (tests and replays were asked for by hand)."""
    return Delivery.objects.filter(
        subscription=subscription, status=DeliveryStatus.PENDING, trigger=Trigger.EVENT
    ).update(
        status=DeliveryStatus.CANCELLED,
        next_attempt_at=None,
        claim_token=None,
        last_error=reason,
    )


def subscription_create(
    *,
    project: Project,
    actor: User | None,
    url: str,
    event_types: list[str] | None = None,
    active: bool = True,
    description: str = "",
    resolver: ssrf.Resolver | None = None,
) -> tuple[Subscription, str]:
    """Create a subscription; returns it and its secret (the only time the secret is handed out).

    The caller checks the actor's role in ``project``.
    """
    fields = _normalize(
        {
            "url": url,
            "event_types": [ALL_EVENTS] if event_types is None else event_types,
            "active": active,
            "description": description,
        }
    )
    subscription = Subscription(project=project, created_by=actor, secret=generate_secret(), **fields)
    subscription.full_clean()
    check_url(subscription.url, resolver=resolver)  # resolves: outside the transaction
    with transaction.atomic():
        # Lock the project row so two creates cannot both pass the per-project limit.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if Subscription.objects.filter(project=project).count() >= SUBSCRIPTIONS_PER_PROJECT_MAX:
            raise Conflict(
                f"A project may have at most {SUBSCRIPTIONS_PER_PROJECT_MAX} webhook subscriptions.",
                code="limit_reached",
            )
        subscription.save(force_insert=True)
    return subscription, subscription.secret


def subscription_update(
    *,
    subscription: Subscription,
    actor: User | None,
    fields: dict[str, Any],
    resolver: ssrf.Resolver | None = None,
) -> Subscription:
    """Change url, event_types, active or description.

    Switching ``active`` off cancels the pending event deliveries; switching it on clears the
    reason it was disabled for and the failure streak.
    """
    fields = _normalize(dict(fields))
    if "url" in fields and fields["url"] != subscription.url:
        check_url(fields["url"], resolver=resolver)  # resolves: outside the transaction
    with transaction.atomic():
        return _apply_update(subscription, fields)


def _apply_update(subscription: Subscription, fields: dict[str, Any]) -> Subscription:
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    changed = [name for name, value in fields.items() if getattr(subscription, name) != value]
    if not changed:
        return subscription
    for name in changed:
        setattr(subscription, name, fields[name])
    update = [*changed, "updated_at"]
    if "active" in changed:
        if subscription.active:
            subscription.disabled_reason = ""
            subscription.disabled_at = None
            subscription.failing_since = None
        else:
            subscription.disabled_reason = "Disabled by its owner."
            subscription.disabled_at = timezone.now()
            _cancel_pending(subscription, "Cancelled: the subscription was disabled by its owner.")
        update += ["disabled_reason", "disabled_at", "failing_since"]
    subscription.updated_at = timezone.now()
    subscription.full_clean()
    subscription.save(update_fields=update)
    return subscription


@transaction.atomic
def subscription_rotate_secret(
    *, subscription: Subscription, actor: User | None, now: datetime | None = None
) -> tuple[Subscription, str]:
    """A new secret; the old one keeps signing for TASKFORGE_WEBHOOK_ROTATION_GRACE seconds.

    Deliveries carry both signatures meanwhile, so receivers can switch without downtime.
    Rotating twice drops the first secret at once (for a leaked secret).
    """
    now = now or timezone.now()
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    subscription.previous_secret = subscription.secret
    subscription.previous_secret_expires_at = now + timedelta(
        seconds=settings.TASKFORGE_WEBHOOK_ROTATION_GRACE
    )
    subscription.secret = generate_secret()
    subscription.updated_at = now
    subscription.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    return subscription, subscription.secret


@transaction.atomic
def subscription_delete(*, subscription: Subscription, actor: User | None) -> None:
    """Delete a subscription and its delivery log. A send in flight finishes unrecorded."""
    Subscription.objects.filter(pk=subscription.pk).delete()


def subscription_disable(*, subscription_id: Any, reason: str, now: datetime | None = None) -> bool:
    """Switch a subscription off for ``reason`` (shown to its owner); False if it already was."""
    now = now or timezone.now()
    with transaction.atomic():
        disabled = Subscription.objects.filter(pk=subscription_id, active=True).update(
            active=False, disabled_reason=reason, disabled_at=now, updated_at=now
        )
        if disabled:
            subscription = Subscription(pk=subscription_id)
            _cancel_pending(subscription, f"Cancelled: the subscription was disabled. {reason}")
    return bool(disabled)


def _queue(subscription: Subscription, **fields: Any) -> Delivery:
    now = timezone.now()
    delivery = Delivery(subscription=subscription, next_attempt_at=now, created_at=now, **fields)
    delivery.save(force_insert=True)
    return delivery


@transaction.atomic
def send_test(*, subscription: Subscription, actor: User | None) -> Delivery:
    """Queue a ``webhook.test`` delivery (sent by the dispatcher, even to a disabled subscription)."""
    now = timezone.now()
    payload = {
        "type": TEST_EVENT_TYPE,
        "timestamp": now,
        "data": {
            "webhook": subscription.pk,
            "project": subscription.project_id,
            "message": "A test delivery from Taskforge.",
            "requested_by": user_ref(actor),
        },
    }
    return _queue(
        subscription, event_type=TEST_EVENT_TYPE, trigger=Trigger.TEST, payload=payload_json(payload)
    )


@transaction.atomic
def delivery_replay(*, delivery: Delivery, actor: User | None) -> Delivery:
    """Send a delivery again, now: the same body and the same ``webhook-id``.

    It goes back to pending with its attempt log kept; its retry schedule starts over. A
    delivery being sent right now cannot be replayed (409).
    """
    now = timezone.now()
    delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
    if delivery.status == DeliveryStatus.PENDING and delivery.claim_token is not None:
        raise Conflict("The delivery is being sent right now; try again shortly.", code="delivery_in_flight")
    delivery.status = DeliveryStatus.PENDING
    delivery.trigger = Trigger.REPLAY
    delivery.next_attempt_at = now
    delivery.failures = 0
    delivery.claim_token = None
    delivery.last_error = ""
    delivery.save(
        update_fields=["status", "trigger", "next_attempt_at", "failures", "claim_token", "last_error"]
    )
    return delivery
