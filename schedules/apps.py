from django.apps import AppConfig


class SchedulesConfig(AppConfig):
    name = "schedules"
    verbose_name = "Schedules"

    def ready(self) -> None:
        from executions.engine.jobs import SCHEDULE_TICK, register_job
        from schedules.jobs import tick_schedules

        # Every worker ticks (no leader): the fire rows make each slot fire once.
        register_job(SCHEDULE_TICK, 1.0, tick_schedules)
