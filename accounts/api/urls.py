from django.urls import path
from rest_framework.routers import SimpleRouter

from accounts.api import views

router = SimpleRouter(trailing_slash=False)
router.register("api-keys", views.ApiKeyViewSet, basename="apikey")
router.register("projects", views.ProjectViewSet, basename="project")

members = views.MembershipViewSet
urlpatterns = [
    path("me", views.MeView.as_view(), name="me"),
    path(
        "projects/<uuid:project_pk>/members",
        members.as_view({"get": "list", "post": "create"}),
        name="member-list",
    ),
    path(
        "projects/<uuid:project_pk>/members/<int:user>",
        members.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="member-detail",
    ),
    *router.urls,
]
