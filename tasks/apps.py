from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"

    def ready(self) -> None:
        from agents.hooks import register_agent_change
        from tasks.routing import after_agent_change

        register_agent_change(after_agent_change)
