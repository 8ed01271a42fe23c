from django.apps import AppConfig


class TemplatesAppConfig(AppConfig):
    name = "templates_app"
    verbose_name = "Templates"

    def ready(self) -> None:
        # executions runs templated tasks through this app's parameters without importing it.
        from executions.preparers import register_run_preparer
        from templates_app.parameters import prepare_run

        register_run_preparer(prepare_run)
