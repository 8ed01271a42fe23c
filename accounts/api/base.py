"""The base every API view goes through: tenancy, scopes, roles and rate limits.

Subclasses cannot override ``get_queryset``, ``get_object`` or ``get_permissions``
(``__init_subclass__`` refuses it); they narrow the queryset through ``scoped_queryset``.
Anything else they read goes through ``visible(model)`` / ``visible_project(pk)``: this module
is the only one under an ``api/`` package that calls ``visible_to`` (a test scans for it).
Scopes: an ``@action(..., scopes=(...))`` adds scopes to its object's, and
``required_scopes(request)`` is the hook for a scope that depends on the request body.
Creating goes through ``CreateWithServiceMixin``. A test walks the URL conf and fails for any
API view that does not inherit from here, or any write that declares no scope.
"""

from __future__ import annotations

import operator
import uuid
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.shortcuts import get_object_or_404
from django.urls import reverse
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import NotAcceptable, NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.idempotency import idempotent
from accounts.models import ApiKey, Project, Role, visible_project_ids
from accounts.permissions import HasProjectRole, HasScope, declared_scopes, require_role
from accounts.scopes import SCOPE_OBJECTS, ScopeObject
from accounts.selectors import project_for_new_object
from core.errors import Conflict
from core.filters import list_parameters, refuse_repeated
from core.ratelimit import enforce_rate_limit, rate_limit_headers
from core.validators import is_uuid

SEALED = ("get_queryset", "get_object", "get_permissions", "perform_authentication")


class TaskforgeAPIMixin:
    """Rate limiting and its headers, and the scope declaration, for every API view."""

    scope_object: ClassVar[ScopeObject]
    # An @action may set these (DRF passes @action keyword arguments to the view instance):
    # ``scope_action`` the kind ("read"/"write") its object scope and role check use, and
    # ``scopes`` the further scopes it needs (template trigger: scopes=("task:write",)).
    scope_action: str | None = None
    scopes: tuple[str, ...] = ()
    # The actions an agent-bound key may call here (accounts.permissions.agent_key_allowed);
    # none unless a view lists them.
    agent_actions: ClassVar[frozenset[str]] = frozenset()
    permission_classes = (HasScope, HasProjectRole)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in SEALED if name in cls.__dict__]
        if overridden and not cls.__dict__.get("_taskforge_base", False):
            raise ImproperlyConfigured(
                f"{cls.__name__} overrides {', '.join(overridden)}; narrow the queryset with "
                "scoped_queryset() instead, so tenancy and scopes cannot be bypassed."
            )
        scope = getattr(cls, "scope_object", None)
        if scope is not None and scope not in SCOPE_OBJECTS:
            raise ImproperlyConfigured(f"{cls.__name__}.scope_object must be one of {SCOPE_OBJECTS}")

    @property
    def api_key(self) -> ApiKey | None:
        """The API key of this request, or None for a session login."""
        auth = getattr(self.request, "auth", None)  # type: ignore[attr-defined]
        return auth if isinstance(auth, ApiKey) else None

    def get_permissions(self) -> list[Any]:
        return [permission() for permission in (HasScope, HasProjectRole)]

    def required_scopes(self, request: Request) -> tuple[str, ...]:
        """The scopes this request needs, checked in order by ``HasScope`` (before the view).

        Override (calling super) only for a scope that depends on the request itself, e.g. the
        body: the trigger needs ``execution:write`` only when it executes.
        """
        return declared_scopes(request, self)  # type: ignore[arg-type]

    def visible(self, model: type[models.Model] | models.QuerySet) -> models.QuerySet:
        """What the caller (user, narrowed by the key) may see of ``model``: the tenancy rule."""
        queryset = model._default_manager.all() if isinstance(model, type) else model.all()
        return queryset.visible_to(self.request.user, api_key=self.api_key)  # type: ignore[attr-defined]

    def visible_project_ids(self) -> list[uuid.UUID] | None:
        """The ids of the projects the caller may read (None: all), for a reader that filters
        in memory (the event stream); the same rule as ``visible()``."""
        return visible_project_ids(self.request.user, self.api_key)  # type: ignore[attr-defined]

    def visible_project(self, pk: Any) -> Project:
        """The caller's project ``pk`` (404 for one the caller cannot see, or that does not exist)."""
        return get_object_or_404(self.visible(Project), pk=pk)

    def perform_authentication(self, request: Request) -> None:
        # Rate limiting runs whether authentication succeeded or not, so a flood of bad
        # keys is limited per IP like any anonymous call (and gets 429, not 401).
        try:
            request.user  # noqa: B018 - forces authentication
        finally:
            enforce_rate_limit(request)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        # A NUL in a path parameter (/api-keys/%00) reached PostgreSQL, which refuses NUL in
        # text: a 500 (found by tests/hardening/test_bad_input.py). No object has one: 404.
        if any("\x00" in str(value) for value in kwargs.values()):
            raise NotFound()
        # Likewise an integer id past BIGINT (/members/10223607211099392302907392): SQLite
        # raised OverflowError, a 500. No row has one: 404.
        if any(isinstance(value, int) and not -(2**63) <= value < 2**63 for value in kwargs.values()):
            raise NotFound()
        # A parameter given twice is a set when it is a list filter (status=a&status=b), else a
        # 400 naming it: never the last value with the others silently dropped (issue 19).
        refuse_repeated(request.query_params, list_parameters(self))

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # DRF ignores an empty ``?format=``; the schema documents an enum, so refuse it (400)
        # like any other value outside it (DRF answers 404 for an unknown format).
        if not force and request.query_params.get("format") == "":
            raise ValidationError({"format": ["Must not be empty."]}, code="blank")
        try:
            return super().perform_content_negotiation(request, force)  # type: ignore[misc]
        except NotAcceptable:
            # No 406 anywhere (RFC 9110 lets a server disregard Accept): an explicit ?format=
            # wins over Accept, and an Accept nothing matches gets the default, JSON.
            wanted = request.query_params.get("format")
            for renderer in self.get_renderers():  # type: ignore[attr-defined]
                if wanted is None or renderer.format == wanted:
                    return renderer, renderer.media_type
            raise

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        # Slots of long-lived requests (?wait) the view took: the wait is over (core.holding).
        for slot in getattr(request, "_taskforge_slots", ()):
            slot.release()
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        usage = getattr(request, "_rate_usage", None)
        if usage is not None:
            for header, value in rate_limit_headers(usage).items():
                response[header] = value
        return response


class TaskforgeAPIView(TaskforgeAPIMixin, APIView):
    """A non-model API view (``/me``, ``/status``)."""

    _taskforge_base = True


class TaskforgeViewSet(TaskforgeAPIMixin, viewsets.GenericViewSet):
    """A model viewset scoped to the caller's projects.

    Declare ``queryset`` (its model's QuerySet has ``visible_to``), ``scope_object``,
    ``project_lookup`` (attribute path from the object to its Project, or None for objects
    owned by a user) and ``write_role``. Roles are checked by the project's id, read off the
    object's foreign key: the Project row itself is never loaded for that.
    """

    _taskforge_base = True
    project_lookup: ClassVar[str | None] = "project"
    write_role: ClassVar[str] = Role.MEMBER

    _visible: models.QuerySet | None = None

    def get_queryset(self) -> models.QuerySet:
        # A view instance serves one request: what the caller may see (the project ids, resolved
        # by visible_to) is read once, not again when a write reads its object back to render it.
        if self._visible is None:
            queryset = self.queryset
            if queryset is None or not hasattr(queryset, "visible_to"):
                raise ImproperlyConfigured(f"{type(self).__name__}.queryset needs a visible_to() method")
            self._visible = self.visible(queryset)
        return self.scoped_queryset(self._visible.all())

    def scoped_queryset(self, queryset: models.QuerySet) -> models.QuerySet:
        """Narrow (filter, select_related) the visible queryset; never widen it."""
        return queryset

    def get_object(self) -> Any:
        return super().get_object()

    def project_of(self, obj: Any) -> Project | uuid.UUID | None:
        """``obj``'s project or its id (the last hop's foreign key column: no query)."""
        if self.project_lookup is None:
            return None
        *hops, last = self.project_lookup.split("__")
        return operator.attrgetter(".".join([*hops, f"{last}_id"]))(obj)

    def require_role(self, project: Project | uuid.UUID, needed: str | None = None) -> None:
        require_role(self.request, project, needed or self.write_role)


class CreateWithServiceMixin:
    """``POST`` on a collection, the one way: validate ``create_input``, resolve the target
    project (the body's ``project``, else the key's, else the caller's own; 400 for a project
    the caller cannot see), require ``write_role`` there, call ``create_via_service``, then
    answer 201 with ``Location`` and the object re-read through the view's queryset (tenancy
    is checked again after the write), rendered with ``create_output``.

    Subclasses declare ``create_input``, ``create_output`` (default ``serializer_class``),
    ``detail_route`` (the URL name of the new object's page) and ``create_via_service``;
    ``idempotent_create = True`` honours ``Idempotency-Key``. ``create_via_service`` may return
    ``(obj, shown_once)``: attributes set on the re-read object before rendering (a webhook's
    secret, shown this once).
    """

    create_input: ClassVar[type[serializers.Serializer]]
    create_output: ClassVar[type[serializers.Serializer] | None] = None
    detail_route: ClassVar[str]
    detail_kwarg: ClassVar[str] = "pk"
    idempotent_create: ClassVar[bool] = False

    def create_via_service(self, project: Project, fields: dict[str, Any]) -> Any:
        raise NotImplementedError

    # No docstring on purpose: drf-spectacular would publish it as each create's description.
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if self.idempotent_create:
            return self._idempotent_create(request)
        return self._create(request)

    def _create(self, request: Request) -> Response:
        view: Any = self
        incoming = self.create_input(data=request.data)
        incoming.is_valid(raise_exception=True)
        fields = dict(incoming.validated_data)
        project = project_for_new_object(
            user=request.user, api_key=view.api_key, project_id=fields.pop("project", None)
        )
        view.require_role(project)
        created = self.create_via_service(project, fields)
        obj, shown_once = created if isinstance(created, tuple) else (created, {})
        fresh = view.get_queryset().get(pk=obj.pk)
        for name, value in shown_once.items():
            setattr(fresh, name, value)
        output = self.create_output or view.serializer_class
        data = output(fresh, context=view.get_serializer_context()).data
        location = request.build_absolute_uri(reverse(self.detail_route, kwargs={self.detail_kwarg: obj.pk}))
        return Response(data, status=status.HTTP_201_CREATED, headers={"Location": location})

    _idempotent_create = idempotent(_create)


def slug_scope(
    view: TaskforgeAPIMixin, queryset: models.QuerySet, slug: str, project: Any, noun: str
) -> models.QuerySet:
    """``queryset`` narrowed for looking ``slug`` up: to ``project`` when given, else to the
    projects a request reaches without naming one (``Project.implicit_for``: the key's project,
    or projects the caller belonged to before the key was made, so another member cannot make a
    slug ambiguous); 409 ``ambiguous_slug`` when several of them have it (``noun`` names it)."""
    if project:
        if not is_uuid(str(project)):
            raise ValidationError({"project": ["Must be a project id (UUID)."]})
        queryset = queryset.filter(project_id=project)
    else:
        implicit = Project.objects.implicit_for(view.request.user, view.api_key)
        queryset = queryset.filter(project_id__in=list(implicit.values_list("pk", flat=True)))
    projects = list(queryset.filter(slug=slug).values_list("project_id", flat=True)[:10])
    if len(projects) > 1:
        raise Conflict(
            f"Several of your projects have a {noun} {slug!r}: use its id, or name the project "
            "(?project=<id>).",
            code="ambiguous_slug",
            projects=[str(pk) for pk in projects],
        )
    return queryset


class SlugLookupMixin:
    """Objects addressed by id or by slug (unique per project) under the ``ref`` URL kwarg; a
    slug is looked up as ``slug_scope`` says (``?project=`` narrows it), ``slug_noun`` names
    the object in the 409."""

    slug_noun: ClassVar[str]
    lookup_url_kwarg = "ref"
    lookup_value_regex = r"[^/]+"
    detail_kwarg = "ref"

    @property
    def lookup_field(self) -> str:  # type: ignore[override]
        return "pk" if is_uuid(getattr(self, "kwargs", {}).get("ref", "")) else "slug"

    def ref_scope(self, queryset: models.QuerySet) -> models.QuerySet:
        """``queryset`` narrowed for the URL's ``ref`` when it is a slug."""
        ref = getattr(self, "kwargs", {}).get("ref")
        if ref is not None and not is_uuid(ref):
            project = self.request.query_params.get("project")  # type: ignore[attr-defined]
            return slug_scope(self, queryset, ref, project, self.slug_noun)
        return queryset
