from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import services
from accounts.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    MembershipCreateSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    MeSerializer,
    ProjectCreateSerializer,
    ProjectSerializer,
)
from accounts.models import ApiKey, Membership, Project, Role
from config.api import TaskforgeAPIView, TaskforgeViewSet


def roles_of(user: Any) -> dict[Any, str]:
    return dict(Membership.objects.filter(user=user).values_list("project_id", "role"))


class MeView(TaskforgeAPIView):
    """Who the caller is: user, the key in use, projects with roles."""

    scope_object = "account"

    @extend_schema(responses=MeSerializer, operation_id="me_retrieve")
    def get(self, request: Request) -> Response:
        projects = Project.objects.visible_to(request.user, self.api_key)
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

    queryset = ApiKey.objects.select_related("project")
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
            project = (
                Project.objects.visible_to(request.user, self.api_key).filter(pk=data["project"]).first()
            )
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
        return Response(ApiKeyCreatedSerializer(api_key).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None}, description="Revoke the key (it stops working at once).")
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.api_key_revoke(api_key=self.get_object())
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


@extend_schema(tags=["projects"])
class MembershipViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TaskforgeViewSet
):
    """Members of a project. Project admins add, change and remove them; the last admin stays."""

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
        return get_object_or_404(
            Project.objects.visible_to(self.request.user, self.api_key), pk=self.kwargs["project_pk"]
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self.project()  # 404 for a project the caller cannot see
        return super().list(request, *args, **kwargs)

    @extend_schema(request=MembershipCreateSerializer, responses={201: MembershipSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        project = self.project()
        self.require_role(project)
        incoming = MembershipCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        membership = services.membership_add(
            project=project, user=incoming.validated_data["username"], role=incoming.validated_data["role"]
        )
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

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
        return Response(MembershipSerializer(membership).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.membership_remove(membership=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
