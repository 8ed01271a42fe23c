"""The production URL conf plus the benchmark's baseline view (``bench.settings`` only).

The bare view is mounted here and nowhere else, so it is unreachable in production.
"""

from django.urls import path

from bench.views import bare_task_list
from config.urls import handler400, handler403, handler404, handler500
from config.urls import urlpatterns as product_urlpatterns

urlpatterns = [path("bench/bare-tasks", bare_task_list, name="bench-bare-tasks"), *product_urlpatterns]

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]
