from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config import errors
from config.health import health
from config.status import StatusView

api_v1 = [
    path("status", StatusView.as_view(), name="status"),
    path("", include("accounts.api.urls")),
    path("", include("tasks.api.urls")),
    path("", include("executions.api.urls")),
    path("", include("webhooks.api.urls")),
    path("", include("templates_app.api.urls")),
]

urlpatterns = [
    path("health", health, name="health"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("admin/", admin.site.urls),
]

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500
