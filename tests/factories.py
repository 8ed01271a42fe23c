"""factory-boy factories shared by every test module."""

from __future__ import annotations

from typing import Any

import factory

from accounts.models import ApiKey, Membership, Project, Role, User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("pw-for-tests")

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        # Through the manager, so the user gets a personal project like every real user.
        password = kwargs.pop("password", None)
        user = model_class.objects.create_user(*args, **kwargs)
        if password:
            user.password = password
            user.save(update_fields=["password"])
        return user


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"project {n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MEMBER


def make_key(user: User, scopes: list[str] | None = None, **extra: Any) -> tuple[ApiKey, str]:
    """A real API key (hashed in the database) and its secret."""
    return ApiKey.objects.create_key(owner=user, name="test", scopes=scopes or ["*"], **extra)


class TaskFactory(factory.django.DjangoModelFactory):
    """A task row (no event): for tests that need data, not the create service."""

    class Meta:
        model = "tasks.Task"

    project = factory.LazyAttribute(lambda t: t.created_by.personal_project)
    created_by = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"task {n}")
