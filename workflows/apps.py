from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"

    def ready(self) -> None:
        # A node's task ends -> the run decides what runs next, in the same transaction.
        from tasks.hooks import register_task_finished
        from workflows.engine import node_task_finished

        register_task_finished(node_task_finished)
