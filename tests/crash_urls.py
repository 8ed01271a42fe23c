"""A URL conf with a view that crashes, to test the 500 problem."""

from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response

from config.api import TaskforgeAPIView
from config.urls import urlpatterns as real_urlpatterns


class CrashView(TaskforgeAPIView):
    scope_object = "account"

    def get(self, request: Request) -> Response:
        raise RuntimeError("secret internals: /etc/passwd line 42")


urlpatterns = [path("api/v1/crash", CrashView.as_view()), path("", include(real_urlpatterns))]
handler404 = "config.errors.handler404"
handler500 = "config.errors.handler500"
