"""The webhooks app's job in the worker (registered in ``WebhooksConfig.ready``)."""

from __future__ import annotations

from webhooks.dispatcher import deliver_due, fan_out

WEBHOOK_PAUSE = 0.2
FANOUT_BATCH = 500
DELIVERY_BATCH = 50


def deliver_webhooks() -> float:
    """Fan events out to webhook subscriptions and send what is due; the pause before the next call.

    Idle: look again in a second. Busy but not saturated: pause briefly, so a steady trickle of
    events is fanned out in batches rather than by a loop spending a core on re-reading the
    outbox for one or two events at a time. Saturated: at once.
    """
    events, sent = fan_out(FANOUT_BATCH), deliver_due(DELIVERY_BATCH)
    if events < FANOUT_BATCH and sent < DELIVERY_BATCH:
        return WEBHOOK_PAUSE if events or sent else 1.0
    return 0.0
