"""Regressions found by the schemathesis run after templates and hardening were merged."""

import pytest

pytestmark = pytest.mark.django_db


def test_huge_member_id_is_404_not_an_overflow(api, user):
    url = f"/api/v1/projects/{user.personal_project.pk}/members/232016785742801240326144"
    assert api.get(url).status_code == 404


def test_empty_template_project_filter_is_400(api):
    assert api.get("/api/v1/templates?project=").status_code == 400


def test_lone_surrogate_in_a_template_script_is_a_400(api):
    body = '{"slug": "s", "name": "n", "name_pattern": "n", "script_type": "bash", "script": "\\ud800"}'
    response = api.post("/api/v1/templates", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "surrogate_characters_not_allowed"
