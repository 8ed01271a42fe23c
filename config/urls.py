from collections.abc import Callable

from django.conf import settings
from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path
from django.utils.csp import CSP
from django.views.decorators.csp import csp_override, csp_report_only_override
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from core import errors
from core.health import health

api_v1 = [
    path("", include("ops.api.urls")),
    path("", include("accounts.api.urls")),
    path("", include("tasks.api.urls")),
    path("", include("executions.api.urls")),
    path("", include("webhooks.api.urls")),
    path("", include("vault.api.urls")),
    path("", include("schedules.api.urls")),
    path("", include("templates_app.api.urls")),
    path("", include("triggers.api.urls")),
    path("", include("workflows.api.urls")),
    path("", include("events.api.urls")),
]


def _redoc_view() -> Callable[..., HttpResponse]:
    """ReDoc styles itself with <style> elements that carry no nonce, and builds its search
    index in a worker from a blob: URL: its page allows both; scripts stay strict."""
    view = SpectacularRedocView.as_view(url_name="schema", template_name="api_docs/redoc.html")
    policy = {
        **settings.CSP_POLICY,
        "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
        "worker-src": [CSP.SELF, "blob:"],
    }
    if settings.SECURE_CSP:
        view = csp_override(policy)(view)
    if settings.SECURE_CSP_REPORT_ONLY:
        view = csp_report_only_override(policy)(view)
    return view


urlpatterns = [
    path("health", health, name="health"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", template_name="api_docs/swagger_ui.html"),
        name="swagger-ui",
    ),
    path("api/redoc/", _redoc_view(), name="redoc"),
    path("admin/", admin.site.urls),
    # Inbound triggers: outside the API (no key, no CSRF; each trigger checks its own sender).
    path("hooks/", include("triggers.urls")),
]

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500
