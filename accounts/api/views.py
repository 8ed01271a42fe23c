from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import services
from accounts.api.base import TaskforgeAPIView, TaskforgeViewSet
from accounts.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    InvitationCreateSerializer,
    InvitationSentSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    MeSerializer,
    ProjectCreateSerializer,
    ProjectInvitationSerializer,
    ProjectSerializer,
    ReceivedInvitationSerializer,
)
from accounts.models import ApiKey, Invitation, InvitationStatus, Membership, Project, Role
from core.openapi import ProblemSerializer

INVITATION_SENT = (
    "Invitation sent. If this username belongs to an account that is not yet a member, its owner "
    "can accept it until it expires."
)


CASCADE_PARAMETER = OpenApiParameter(
    "cascade",
    str,
    enum=["true", "false"],
    description="Also revoke the keys this key created, recursively (default true).",
)


def roles_of(user: Any) -> dict[Any, str]:
    return dict(Membership.objects.filter(user=user).values_list("project_id", "role"))


class MeView(TaskforgeAPIView):
    """Who the caller is: user, the key in use, projects with roles."""

    scope_object = "account"

    @extend_schema(responses=MeSerializer, operation_id="me_retrieve")
    def get(self, request: Request) -> Response:
        projects = self.visible(Project)
        personal = getattr(request.user, "personal_project", None)
        if (
            personal is not None
            and self.api_key is not None
            and self.api_key.project_id not in (None, personal.pk)
        ):
            # A key restricted to another project learns nothing about projects beyond it
            # (found by the authorization matrix: /me named the personal project's id).
            personal = None
        data = {
            "user": request.user,
            "is_superuser": request.user.is_superuser,
            "personal_project": personal.pk if personal else None,
            "api_key": self.api_key,
            "projects": projects,
        }
        context = {"request": request, "roles": roles_of(request.user)}
        return Response(MeSerializer(data, context=context).data)


@extend_schema(tags=["api-keys"])
class ApiKeyViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, TaskforgeViewSet):
    """The caller's own API keys. Creating and revoking needs the `*` scope."""

    queryset = ApiKey.objects.select_related("project", "parent")
    serializer_class = ApiKeySerializer
    scope_object = "account"
    project_lookup = None
    lookup_field = "prefix"
    lookup_url_kwarg = "id"

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer},
        examples=[
            OpenApiExample(
                "CI key",
                value={"name": "ci-pipeline", "scopes": ["task:write", "execution:write"]},
                request_only=True,
            )
        ],
    )
    def create(self, request: Request) -> Response:
        incoming = ApiKeyCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        project = None
        if data["project"] is not None:
            project = self.visible(Project).filter(pk=data["project"]).first()
            if project is None:
                from rest_framework.exceptions import ValidationError

                raise ValidationError(
                    {"project": ["No project of yours has this id."]}, code="does_not_exist"
                )
        api_key, raw = services.api_key_create(
            owner=request.user,
            name=data["name"],
            scopes=data["scopes"],
            project=project,
            expires_at=data["expires_at"],
            rate_limit=data["rate_limit"],
            creator_key=self.api_key,
        )
        api_key.key = raw
        return Response(
            ApiKeyCreatedSerializer(api_key, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(
        responses={204: None},
        parameters=[CASCADE_PARAMETER],
        description="Revoke the key (it stops working at once), and by default every key it "
        "created, recursively.",
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        cascade = request.query_params.get("cascade", "true")
        if cascade not in ("true", "false"):
            from rest_framework.exceptions import ValidationError

            raise ValidationError({"cascade": ["Must be true or false."]}, code="invalid")
        services.api_key_revoke(api_key=self.get_object(), cascade=cascade == "true")
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["projects"])
class ProjectViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TaskforgeViewSet):
    """Projects the caller belongs to, with the caller's role."""

    queryset = Project.objects.all()
    serializer_class = ProjectSerializer
    scope_object = "account"
    write_role = Role.ADMIN

    def project_of(self, obj: Project) -> Project:
        return obj

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "roles": roles_of(self.request.user)}

    @extend_schema(request=ProjectCreateSerializer, responses={201: ProjectSerializer})
    def create(self, request: Request) -> Response:
        """Create a team project; the caller becomes its admin."""
        if self.api_key is not None and self.api_key.project_id is not None:
            from rest_framework.exceptions import PermissionDenied

            raise PermissionDenied("A project-restricted key cannot create projects.")
        incoming = ProjectCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        project = services.project_create(actor=request.user, **incoming.validated_data)
        return Response(
            ProjectSerializer(project, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )


def _invite(view: TaskforgeViewSet, request: Request, project: Project) -> Response:
    """Invite a username to ``project``; the answer never says whether the account exists."""
    view.require_role(project, Role.ADMIN)
    incoming = InvitationCreateSerializer(data=request.data)
    incoming.is_valid(raise_exception=True)
    username = incoming.validated_data["username"].strip()
    role = incoming.validated_data["role"]
    services.invitation_create(project=project, username=username, role=role, actor=request.user)
    body = {"detail": INVITATION_SENT, "username": username, "role": role}
    return Response(InvitationSentSerializer(body).data, status=status.HTTP_202_ACCEPTED)


def _visible_project(view: TaskforgeViewSet) -> Project:
    return view.visible_project(view.kwargs["project_pk"])


@extend_schema(tags=["projects"])
class MembershipViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TaskforgeViewSet
):
    """Members of a project. Project admins invite, change and remove them; any member may
    leave; the last admin of a team project and a personal project's owner stay."""

    queryset = Membership.objects.select_related("user", "project")
    serializer_class = MembershipSerializer
    scope_object = "account"
    write_role = Role.ADMIN
    lookup_field = "user_id"
    lookup_url_kwarg = "user"
    lookup_value_regex = r"\d+"

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        if int(self.kwargs.get("user", 0)) > 2**63 - 1:  # ids are BIGINT: larger ones match nothing
            raise Http404
        return queryset.filter(project_id=self.kwargs["project_pk"]).order_by("user_id")

    def project(self) -> Project:
        return _visible_project(self)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self.project()  # 404 for a project the caller cannot see
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=InvitationCreateSerializer,
        responses={202: InvitationSentSerializer},
        description="Kept for compatibility: nobody is added directly any more. This sends an "
        "invitation exactly like POST /projects/{id}/invitations (same 202 answer); the user "
        "becomes a member when they accept it.",
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return _invite(self, request, self.project())

    @extend_schema(request=MembershipUpdateSerializer, responses=MembershipSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        membership = self.get_object()
        # PATCH semantics (as documented): a body without role changes nothing.
        incoming = MembershipUpdateSerializer(data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        if "role" in incoming.validated_data:
            membership = services.membership_set_role(
                membership=membership, role=incoming.validated_data["role"]
            )
        return Response(MembershipSerializer(membership, context=self.get_serializer_context()).data)

    @extend_schema(
        responses={
            204: None,
            409: OpenApiResponse(
                ProblemSerializer, description="The last admin, or the owner (`last_admin`)."
            ),
        },
        description="Admins remove members; every member may remove themself (leave), except a "
        "personal project's owner and a team project's last admin (409: hand over first).",
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        membership = get_object_or_404(self.get_queryset(), user_id=self.kwargs["user"])
        if membership.user_id != request.user.pk:
            self.check_object_permissions(request, membership)  # removing someone else: admins
        services.membership_remove(membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["projects"])
class ProjectInvitationViewSet(mixins.ListModelMixin, TaskforgeViewSet):
    """A project's pending invitations, for its admins: invite, list, revoke."""

    queryset = Invitation.of_admins.select_related("invited_by")
    serializer_class = ProjectInvitationSerializer
    scope_object = "account"
    write_role = Role.ADMIN

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = queryset.filter(project_id=self.kwargs["project_pk"], status=InvitationStatus.PENDING)
        return queryset.pending() if self.action == "list" else queryset

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self.require_role(_visible_project(self), Role.ADMIN)
        return super().list(request, *args, **kwargs)

    @extend_schema(request=InvitationCreateSerializer, responses={202: InvitationSentSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Invite a user by username. The answer is the same whether or not the account exists."""
        return _invite(self, request, _visible_project(self))

    @extend_schema(responses={204: None}, description="Revoke a pending invitation.")
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self.require_role(_visible_project(self), Role.ADMIN)
        services.invitation_revoke(invitation=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["projects"])
class InvitationViewSet(mixins.ListModelMixin, TaskforgeViewSet):
    """Invitations the caller received and has not answered yet: accept or decline them.

    A project-restricted key sees none (joining a project is not within one project)."""

    queryset = Invitation.objects.select_related("project", "invited_by")
    serializer_class = ReceivedInvitationSerializer
    scope_object = "account"
    project_lookup = None  # the invitee is not (yet) a member: the queryset is the check

    def scoped_queryset(self, queryset: QuerySet) -> QuerySet:
        # Expired ones are still found (accepting one answers 409 "expired"), but not listed.
        queryset = queryset.filter(status=InvitationStatus.PENDING)
        return queryset.pending() if self.action == "list" else queryset

    @extend_schema(request=None, responses={200: ProjectSerializer})
    @action(detail=True, methods=["post"])
    def accept(self, request: Request, pk: str | None = None) -> Response:
        """Join the project with the invitation's role."""
        membership = services.invitation_accept(invitation=self.get_object(), actor=request.user)
        context = {"request": request, "roles": roles_of(request.user)}
        return Response(ProjectSerializer(membership.project, context=context).data)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["post"])
    def decline(self, request: Request, pk: str | None = None) -> Response:
        services.invitation_decline(invitation=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
