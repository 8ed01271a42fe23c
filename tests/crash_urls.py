"""A URL conf with views that crash, to test the 500 problem (and the 503 of a lost database)."""

from django.db import OperationalError
from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import TaskforgeAPIView
from config.urls import urlpatterns as real_urlpatterns


class CrashView(TaskforgeAPIView):
    scope_object = "account"

    def get(self, request: Request) -> Response:
        raise RuntimeError("secret internals: /etc/passwd line 42")


class DatabaseGoneView(TaskforgeAPIView):
    scope_object = "account"

    def get(self, request: Request) -> Response:
        raise OperationalError("connection to server at 10.0.0.5 failed: Connection refused")


urlpatterns = [
    path("api/v1/crash", CrashView.as_view()),
    path("api/v1/crash-db", DatabaseGoneView.as_view()),
    path("", include(real_urlpatterns)),
]
handler404 = "core.errors.handler404"
handler500 = "core.errors.handler500"
