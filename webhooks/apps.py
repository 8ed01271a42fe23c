from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from executions.engine.jobs import WEBHOOK_DELIVERY, register_job
        from webhooks.jobs import deliver_webhooks

        # Every worker fans events out to subscriptions and sends what is due (never a web request).
        register_job(WEBHOOK_DELIVERY, 1.0, deliver_webhooks)
