from django.apps import AppConfig


class BenchConfig(AppConfig):
    """The benchmark harness: only its ``manage.py benchmark`` command (no models)."""

    name = "bench"
    verbose_name = "Benchmark"
