from django.apps import AppConfig


class OpsConfig(AppConfig):
    """The operations room: the status endpoint, the admin site and its dashboard, and
    ``runworker`` (the engine's worker with the jobs the apps register). It sits above every
    app and below ``config``."""

    name = "ops"
    verbose_name = "Operations"
