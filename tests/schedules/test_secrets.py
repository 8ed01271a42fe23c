"""Schedules bound to project secrets (docs/schedules.md, docs/secrets.md): the reference is
checked at save and at every fire, resolved only when the run is claimed, never stored."""

from __future__ import annotations

import pytest

from executions.engine.sandbox import SandboxConfig
from executions.engine.worker import WorkerProcess
from executions.models import Execution, ExecutionStatus
from executions.serializers import ExecutionDetailSerializer
from schedules import services
from schedules.models import FireOutcome, ScheduleFire
from templates_app.services import template_create
from tests.schedules.conftest import at
from vault.services import secret_create, secret_delete

pytestmark = pytest.mark.django_db
URL = "/api/v1/schedules"


@pytest.fixture
def show_token(user, project):
    return template_create(
        project=project,
        actor=user,
        slug="show-token",
        name="Show token",
        name_pattern="show",
        script_type="bash",
        # The value (masked when stored) and reversed (proves the script received it).
        script='printf "%s|%s" "$PARAM_TOKEN" "$(printf %s "$PARAM_TOKEN" | rev)"',
        parameters=[{"name": "token", "type": "string", "secret": True}],
    )


def test_a_reference_to_a_secret_the_project_lacks_is_a_400_naming_it(api, show_token, other_user):
    # Another project's secret of the same name does not count.
    theirs = other_user.personal_project
    secret_create(project=theirs, actor=other_user, name="DEPLOY_TOKEN", value="theirs-1234")
    body = {
        "project": str(show_token.project_id),
        "name": "s",
        "template": str(show_token.pk),
        "interval_seconds": 60,
        "parameters": {"token": {"secret": "DEPLOY_TOKEN"}},
    }
    response = api.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    [error] = response.json()["errors"]
    assert (error["field"], error["code"]) == ("parameters.token", "secret_not_found")
    assert "DEPLOY_TOKEN" in error["message"]


def test_a_bound_secret_reaches_the_run_at_claim_and_never_its_output(
    user, project, show_token, make_schedule
):
    secret_create(project=project, actor=user, name="DEPLOY_TOKEN", value="tok-7f3a9c")
    schedule = make_schedule(
        template=show_token,
        parameters={"token": {"secret": "DEPLOY_TOKEN"}},
        start_at=at("2025-01-01T10:00"),
        created=at("2025-01-01T09:59"),
    )
    assert services.schedules_tick(now=at("2025-01-01T10:00:01")) == 1
    execution = Execution.objects.get()
    assert execution.parameters["token"] == {"secret": "DEPLOY_TOKEN"}
    assert WorkerProcess(concurrency=1, sandbox=SandboxConfig.from_settings()).run_pending() == 1
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.SUCCEEDED, ExecutionDetailSerializer(execution).data
    assert ExecutionDetailSerializer(execution).data["stdout"] == "***|c9a3f7-kot"
    assert ScheduleFire.objects.get(schedule=schedule).outcome == FireOutcome.FIRED


def test_a_secret_deleted_later_pauses_the_schedule_naming_it(user, project, show_token, make_schedule):
    secret = secret_create(project=project, actor=user, name="DEPLOY_TOKEN", value="tok-7f3a9c")
    schedule = make_schedule(
        template=show_token,
        parameters={"token": {"secret": "DEPLOY_TOKEN"}},
        start_at=at("2025-01-01T10:00"),
        created=at("2025-01-01T09:59"),
    )
    secret_delete(secret=secret, actor=user)
    services.schedules_tick(now=at("2025-01-01T10:00:01"))
    schedule.refresh_from_db()
    assert not schedule.enabled
    assert "DEPLOY_TOKEN" in schedule.paused_reason
    assert not Execution.objects.exists()
    assert ScheduleFire.objects.get(schedule=schedule).outcome == FireOutcome.INVALID
