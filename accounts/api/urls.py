from django.urls import path
from rest_framework.routers import SimpleRouter

from accounts.api import views

router = SimpleRouter(trailing_slash=False)
router.register("api-keys", views.ApiKeyViewSet, basename="apikey")
router.register("projects", views.ProjectViewSet, basename="project")

members = views.MembershipViewSet
invitations = views.ProjectInvitationViewSet
received = views.InvitationViewSet
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
    path(
        "projects/<uuid:project_pk>/invitations",
        invitations.as_view({"get": "list", "post": "create"}),
        name="project-invitation-list",
    ),
    path(
        "projects/<uuid:project_pk>/invitations/<uuid:pk>",
        invitations.as_view({"delete": "destroy"}),
        name="project-invitation-detail",
    ),
    path("invitations", received.as_view({"get": "list"}), name="invitation-list"),
    path("invitations/<uuid:pk>/accept", received.as_view({"post": "accept"}), name="invitation-accept"),
    path("invitations/<uuid:pk>/decline", received.as_view({"post": "decline"}), name="invitation-decline"),
    *router.urls,
]
