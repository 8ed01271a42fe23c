"""Schedules over HTTP: CRUD, the 400s naming the field, tenancy, scopes, roles, run now, preview."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from accounts.models import Role
from executions.models import Execution
from schedules import services
from schedules.models import Schedule, ScheduleFire
from tests.factories import MembershipFactory, TaskFactory, UserFactory
from tests.schedules.conftest import at
from tests.tasks.conftest import error_fields, problem_of

pytestmark = pytest.mark.django_db
URL = "/api/v1/schedules"


def body(template: Any, **extra: Any) -> dict[str, Any]:
    return {
        "name": "nightly",
        "template": str(template.pk),
        "parameters": {"days": 3},
        "cron": "30 3 * * *",
        "timezone": "Europe/Riga",
        **extra,
    }


def test_create_read_change_delete(api, template):
    created = api.post(URL, body(template), format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert created["Location"].endswith(f"/schedules/{data['id']}")
    assert data["overlap_policy"] == "skip" and data["misfire_policy"] == "run_once"
    assert data["catchup_window_seconds"] == 3600 and data["enabled"] is True
    assert data["next_fire"]["local"].endswith("03:30:00+02:00") or data["next_fire"]["local"].endswith(
        "03:30:00+03:00"
    )
    assert data["next_fire_at"] is not None
    url = f"{URL}/{data['id']}"
    assert api.get(url).json()["name"] == "nightly"
    assert [s["id"] for s in api.get(URL).json()["results"]] == [data["id"]]
    changed = api.patch(url, {"cron": "0 * * * *", "overlap_policy": "allow"}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["cron"] == "0 * * * *" and changed.json()["overlap_policy"] == "allow"
    assert api.delete(url).status_code == 204
    assert not Schedule.objects.exists()


def test_an_interval_schedule_of_a_task(api, script_task):
    response = api.post(
        URL, {"name": "ping", "task": str(script_task.pk), "interval_seconds": 10}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["task"] == str(script_task.pk) and response.json()["start_at"] is not None


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"cron": "0 0 31 2 *"}, "cron", "day-of-month"),
        ({"cron": "61 * * * *"}, "cron", "minute"),
        ({"cron": "* * *"}, "cron", "Five fields"),
        ({"timezone": "Europe/Atlantis"}, "timezone", "IANA"),
        ({"parameters": {"days": 99}}, "parameters.days", ""),
        ({"parameters": {"days": "3"}}, "parameters.days", ""),
        ({"parameters": {}}, "parameters.days", "required"),
        ({"parameters": {"days": 3, "nope": 1}}, "parameters.nope", ""),
        (
            {"parameters": {"days": 3, "token": "hunter2"}},
            "parameters.token",
            'bind it to a project secret: {"secret": "name"}',
        ),
        ({"parameters": {"days": 3, "env": {"secret": "x"}}}, "parameters.env", "not a secret parameter"),
        ({"cron": "", "interval_seconds": 5}, "interval_seconds", ""),
        ({"interval_seconds": 60}, "cron", "not both"),
        ({"overrides": {"priority": 99}}, "overrides.priority", ""),
        ({"overrides": {"script_content": "rm -rf /"}}, "overrides.script_content", ""),
        ({"start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}, "end_at", ""),
        ({"overlap_policy": "sometimes"}, "overlap_policy", ""),
        ({"start_at": "0001-01-01T00:00:00Z"}, "start_at", "between"),
        ({"cron": "", "interval_seconds": 60, "end_at": "9999-12-31T23:59:59Z"}, "end_at", "between"),
        ({"cron": "", "interval_seconds": 60, "jitter_seconds": 60}, "jitter_seconds", "less than"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(api, template, change, field, words):
    problem = problem_of(api.post(URL, body(template, **change), format="json"), 400)
    assert field in error_fields(problem), problem
    if words:
        assert any(words.lower() in e["message"].lower() for e in problem["errors"] if e["field"] == field), (
            problem
        )
    assert not Schedule.objects.exists()


def test_a_secret_parameter_is_stored_as_a_reference_only(api, template, user):
    from vault.services import secret_create

    secret_create(project=template.project, actor=user, name="REPORT_TOKEN", value="tok-123456")
    response = api.post(
        URL, body(template, parameters={"days": 3, "token": {"secret": "REPORT_TOKEN"}}), format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["parameters"]["token"] == {"secret": "REPORT_TOKEN"}
    assert Schedule.objects.get().parameters["token"] == {"secret": "REPORT_TOKEN"}
    assert "tok-123456" not in response.content.decode()


def test_a_template_of_another_project_is_refused(api, other_user):
    from templates_app.services import template_create

    foreign = template_create(
        project=other_user.personal_project,
        actor=other_user,
        slug="x",
        name="X",
        name_pattern="x",
        script_type="bash",
        script="echo x",
    )
    problem = problem_of(api.post(URL, body(foreign, parameters={}), format="json"), 400)
    assert "template" in error_fields(problem)


def test_another_projects_schedule_is_404_on_every_verb(other_api, api, template):
    schedule_id = api.post(URL, body(template), format="json").json()["id"]
    url = f"{URL}/{schedule_id}"
    calls = [
        other_api.get(url),
        other_api.patch(url, {"name": "x"}, format="json"),
        other_api.put(url, body(template), format="json"),
        other_api.delete(url),
        other_api.post(f"{url}/pause"),
        other_api.post(f"{url}/resume"),
        other_api.post(f"{url}/trigger"),
        other_api.get(f"{url}/fires"),
        other_api.get(f"{url}/preview"),
    ]
    assert [c.status_code for c in calls] == [404] * len(calls)
    assert other_api.get(URL).json()["results"] == []
    assert Schedule.objects.get().name == "nightly" and Schedule.objects.get().enabled


def test_viewer_writes_are_403_member_may_run_now_admin_changes(team, key_client, user, script_task):
    project, viewer = team(Role.VIEWER)
    member = UserFactory()
    MembershipFactory(project=project, user=member, role=Role.MEMBER)
    task = TaskFactory(project=project, created_by=user, script_type="bash", script_content="echo hi")
    admin = key_client(user)
    created = admin.post(
        URL,
        {"project": str(project.pk), "name": "s", "task": str(task.pk), "interval_seconds": 60},
        format="json",
    )
    assert created.status_code == 201, created.content
    url = f"{URL}/{created.json()['id']}"
    as_viewer, as_member = key_client(viewer), key_client(member)
    assert as_viewer.get(url).status_code == 200
    for response in (
        as_viewer.patch(url, {"name": "x"}, format="json"),
        as_viewer.delete(url),
        as_viewer.post(f"{url}/pause"),
        as_viewer.post(f"{url}/trigger"),
        as_member.patch(url, {"name": "x"}, format="json"),
        as_member.post(f"{url}/pause"),
        as_member.post(
            URL,
            {"project": str(project.pk), "name": "s", "task": str(task.pk), "interval_seconds": 60},
            format="json",
        ),
    ):
        assert problem_of(response, 403)["code"] == "insufficient_role"
    assert as_member.post(f"{url}/trigger").status_code == 201
    assert Schedule.objects.get().name == "s"


def test_narrow_keys_stay_narrow(key_client, user, template, project, other_user):
    reader = key_client(user, ["schedule:read"])
    problem = problem_of(reader.post(URL, body(template), format="json"), 403)
    assert problem["required_scope"] == "schedule:write"
    assert problem_of(key_client(user, ["template:write"]).get(URL), 403)["required_scope"] == "schedule:read"
    writer = key_client(user, ["schedule:write"])
    schedule_id = writer.post(URL, body(template), format="json").json()["id"]
    trigger = problem_of(writer.post(f"{URL}/{schedule_id}/trigger"), 403)
    assert trigger["required_scope"] == "execution:write"
    assert reader.post(f"{URL}/preview", {"cron": "0 * * * *"}, format="json").status_code == 200
    # A key restricted to another project of alice's does not see this one.
    shared = MembershipFactory(user=user, role=Role.ADMIN).project
    restricted = key_client(user, project=shared)
    assert restricted.get(f"{URL}/{schedule_id}").status_code == 404
    assert restricted.get(URL).json()["results"] == []


def test_run_now_obeys_the_overlap_policy(api, script_task):
    created = api.post(
        URL, {"name": "s", "task": str(script_task.pk), "interval_seconds": 3600}, format="json"
    )
    url = f"{URL}/{created.json()['id']}"
    first = api.post(f"{url}/trigger")
    assert first.status_code == 201 and first.json()["outcome"] == "fired"
    assert first.json()["fire"]["execution"] == str(Execution.objects.get().pk)
    assert problem_of(api.post(f"{url}/trigger"), 409)["code"] == "overlap"  # skip: still queued
    api.patch(url, {"overlap_policy": "queue_one"}, format="json")
    queued = api.post(f"{url}/trigger")
    assert queued.status_code == 202 and queued.json() == {"outcome": "queued", "fire": None}
    assert problem_of(api.post(f"{url}/trigger"), 409)["code"] == "overlap"  # one waits already
    Execution.objects.update(status="succeeded", finished_at=timezone.now())
    services.schedules_tick()  # the first run is over: the waiting one starts
    assert Execution.objects.filter(status="queued").count() == 1
    api.patch(url, {"overlap_policy": "allow"}, format="json")
    assert api.post(f"{url}/trigger").status_code == 201
    assert Execution.objects.count() == 3
    fires = api.get(f"{url}/fires").json()["results"]
    assert [f["kind"] for f in fires] == ["manual", "manual", "manual"]


def test_pause_and_resume(api, script_task):
    created = api.post(URL, {"name": "s", "task": str(script_task.pk), "interval_seconds": 60}, format="json")
    url = f"{URL}/{created.json()['id']}"
    paused = api.post(f"{url}/pause").json()
    assert (
        paused["enabled"] is False
        and paused["paused_reason"] == "Paused by alice."
        and paused["next_fire"] is None
    )
    resumed = api.post(f"{url}/resume").json()
    assert resumed["enabled"] is True and resumed["paused_reason"] == "" and resumed["next_fire"] is not None
    assert api.patch(url, {"enabled": False}, format="json").json()["paused_reason"] == "Paused by alice."


def test_preview_of_a_saved_schedule_and_an_unsaved_expression(api, template):
    schedule_id = api.post(
        URL, body(template, cron="0 * * * *", timezone="America/New_York"), format="json"
    ).json()["id"]
    saved = api.get(f"{URL}/{schedule_id}/preview", {"count": 3, "after": "2025-03-09T05:30:00Z"})
    assert saved.status_code == 200, saved.content
    assert saved.json()["fires"] == [
        {"local": "2025-03-09T01:00:00-05:00", "utc": "2025-03-09T06:00:00Z", "dst": False},
        {"local": "2025-03-09T03:00:00-04:00", "utc": "2025-03-09T07:00:00Z", "dst": True},
        {"local": "2025-03-09T04:00:00-04:00", "utc": "2025-03-09T08:00:00Z", "dst": True},
    ]
    unsaved = api.post(
        f"{URL}/preview",
        {"cron": "30 3 * * *", "timezone": "Europe/Riga", "count": 2, "after": "2025-10-25T12:00:00Z"},
        format="json",
    )
    assert [f["local"] for f in unsaved.json()["fires"]] == [
        "2025-10-26T03:30:00+03:00",
        "2025-10-27T03:30:00+02:00",
    ]
    interval = api.post(
        f"{URL}/preview", {"interval_seconds": 30, "count": 2, "after": "2025-01-01T00:00:00Z"}, format="json"
    )
    assert [f["utc"] for f in interval.json()["fires"]] == ["2025-01-01T00:00:30Z", "2025-01-01T00:01:00Z"]
    far = {"cron": "* * * * *", "after": "9999-12-31T23:59:59Z"}
    assert "after" in error_fields(problem_of(api.post(f"{URL}/preview", far, format="json"), 400))
    for bad, field in (
        ({"cron": "0 0 31 2 *"}, "cron"),
        ({"cron": "* * * * *", "timezone": "Nowhere/Land"}, "timezone"),
        ({"cron": "* * * * *", "count": 1000}, "count"),
    ):
        assert field in error_fields(problem_of(api.post(f"{URL}/preview", bad, format="json"), 400))
    assert "count" in error_fields(problem_of(api.get(f"{URL}/{schedule_id}/preview", {"count": 0}), 400))


def test_fires_list_is_newest_first(api, make_schedule):
    from schedules import services

    schedule = make_schedule(
        interval_seconds=60,
        start_at=at("2025-01-01T10:00"),
        overlap_policy="allow",
        created=at("2025-01-01T09:59"),
    )
    services.schedules_tick(now=at("2025-01-01T10:00:01"))
    services.schedules_tick(now=at("2025-01-01T10:01:01"))
    fires = api.get(f"{URL}/{schedule.pk}/fires").json()["results"]
    assert [f["scheduled_for"] for f in fires] == ["2025-01-01T10:01:00Z", "2025-01-01T10:00:00Z"]
    assert all(f["outcome"] == "fired" and f["task"] and f["execution"] for f in fires)
    assert ScheduleFire.objects.count() == 2


def test_list_filters(api, template, script_task):
    api.post(URL, body(template), format="json")
    paused = api.post(
        URL, {"name": "other", "task": str(script_task.pk), "interval_seconds": 60}, format="json"
    )
    api.post(f"{URL}/{paused.json()['id']}/pause")
    assert [s["name"] for s in api.get(URL, {"enabled": "false"}).json()["results"]] == ["other"]
    assert [s["name"] for s in api.get(URL, {"enabled": "true"}).json()["results"]] == ["nightly"]
    assert [s["name"] for s in api.get(URL, {"template": str(template.pk)}).json()["results"]] == ["nightly"]
    assert [s["name"] for s in api.get(URL, {"search": "oth"}).json()["results"]] == ["other"]
    assert "enabled" in error_fields(problem_of(api.get(URL, {"enabled": "AAA"}), 400))
