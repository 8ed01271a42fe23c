from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        from config.health import COMPONENT_CHECKS, DEGRADED, HEALTHY

        def workers() -> str:
            from executions.models import Worker

            return HEALTHY if Worker.objects.alive().exists() else DEGRADED

        COMPONENT_CHECKS["workers"] = workers
