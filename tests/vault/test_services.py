"""vault.services: the reference check other apps call (schedules, triggers, workflows)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from vault import services

pytestmark = pytest.mark.django_db


def test_secret_refs_check_returns_the_references_and_names_what_is_missing(project, other_user, make_secret):
    make_secret(name="A_TOKEN")
    make_secret(name="B_TOKEN", in_project=other_user.personal_project)
    values = {"a": {"secret": "A_TOKEN"}, "plain": "text", "n": 3}
    assert services.secret_refs_check(project, values) == {"a": "A_TOKEN"}
    assert services.secret_refs_check(project.pk, {}) == {}
    with pytest.raises(ValidationError) as caught:
        services.secret_refs_check(
            project,
            {"a": {"secret": "A_TOKEN"}, "b": {"secret": "B_TOKEN"}, "c": {"secret": 1}},
            field="bindings",
        )
    errors = caught.value.message_dict
    assert set(errors) == {"bindings.b", "bindings.c"}
    assert "'B_TOKEN'" in errors["bindings.b"][0] and "'b'" in errors["bindings.b"][0]
    assert [e.code for e in caught.value.error_dict["bindings.b"]] == ["secret_not_found"]
    assert [e.code for e in caught.value.error_dict["bindings.c"]] == ["invalid_reference"]


def test_resolving_records_use_and_a_missing_secret_raises(project, make_secret):
    secret, value = make_secret()
    assert services.secret_refs_resolve(project=project, refs={"t": "DEPLOY_TOKEN", "u": "DEPLOY_TOKEN"}) == {
        "t": value,
        "u": value,
    }
    secret.refresh_from_db()
    assert secret.last_used_at is not None
    with pytest.raises(services.SecretMissing, match="'GONE'"):
        services.secret_refs_resolve(project=project, refs={"t": "DEPLOY_TOKEN", "x": "GONE"})
