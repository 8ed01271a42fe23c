"""Project secrets in runs: references checked at the trigger, resolved at the claim, handed to
the script like passed secrets, masked in every stored output, and a deleted secret failing only
its own run."""

from __future__ import annotations

import base64
import json

import pytest
from django.db.models import TextField
from django.db.models.functions import Cast
from django.test import Client

from accounts.models import Role
from events.models import Event
from executions.models import ErrorCode, Execution, ExecutionStatus, OutputChunk
from tasks.models import Task
from templates_app import services as template_services
from tests.executions.test_streams import events as sse_events
from tests.executions.test_streams import streamed
from tests.factories import MembershipFactory, UserFactory
from tests.tasks.conftest import error_fields, problem_of
from tests.webhooks.conftest import PUBLIC_URL
from vault import services
from vault.models import Secret
from webhooks.dispatcher import fan_out
from webhooks.models import Delivery
from webhooks.services import subscription_create

pytestmark = pytest.mark.django_db

PARAMETERS = [{"name": "token", "type": "string", "secret": True, "required": True}]
# Prints the value whole, then base64-encoded (so the test sees what the script received).
ECHO_BASH = 'echo "token="{{ token }}; printf "%s" {{ token }} | base64 -w0; echo'


def template(user, project, script=ECHO_BASH, script_type="bash", slug="deploy", **fields):
    return template_services.template_create(
        project=project,
        actor=user,
        slug=slug,
        name="Deploy",
        name_pattern="Deploy",
        script_type=script_type,
        script=script,
        parameters=PARAMETERS,
        **fields,
    )


def trigger(client, slug="deploy", **parameters):
    return client.post(f"/api/v1/templates/{slug}/trigger", {"parameters": parameters}, format="json")


def stdout(execution: Execution) -> str:
    return "".join(execution.chunks.filter(stream="stdout").order_by("seq").values_list("data", flat=True))


def test_a_reference_runs_with_the_value_masked_everywhere(api, user, project, make_secret, inline_worker):
    secret, value = make_secret()
    template(user, project)
    hook, _ = subscription_create(project=project, actor=user, url=PUBLIC_URL)
    response = trigger(api, token={"secret": "DEPLOY_TOKEN"})
    assert response.status_code == 202, response.content
    execution = Execution.objects.get(pk=response.json()["execution"]["id"])
    assert execution.parameters == {"token": {"secret": "DEPLOY_TOKEN"}}  # the reference, not the value
    raw = Execution.objects.filter(pk=execution.pk).values_list(
        Cast("secret_parameters", TextField()), flat=True
    )
    assert "DEPLOY_TOKEN" not in raw.get() and value not in raw.get()  # encrypted, even the reference

    assert inline_worker.run_pending() == 1
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.SUCCEEDED, stdout(execution)
    printed = stdout(execution).splitlines()
    assert printed[0] == "token=***"
    assert base64.b64decode(printed[1]).decode() == value  # the script did receive it
    assert execution.secret_parameters == {}  # wiped after the run

    # Recorded: secret.used (never the value) and last_used_at.
    used = Event.objects.get(type="secret.used")
    assert used.data["name"] == "DEPLOY_TOKEN" and used.data["execution_id"] == str(execution.pk)
    assert used.data["parameters"] == ["token"] and used.task_id == execution.task_id
    secret.refresh_from_db()
    assert secret.last_used_at is not None

    # Nowhere in the API, the log (JSON and the SSE stream), the admin, events or webhooks.
    task_id = execution.task_id
    base = f"/api/v1/tasks/{task_id}/executions/{execution.pk}"
    seen = [
        api.get(base).content.decode(),
        api.get(f"{base}/log").content.decode(),
        api.get(f"/api/v1/tasks/{task_id}").content.decode(),
        api.get("/api/v1/secrets").content.decode(),
    ]
    stream = streamed(api.get(f"{base}/log?format=sse"))
    assert "token=***" in "".join(
        e["data"].get("data", "") for e in sse_events(stream) if e["event"] == "chunk"
    )
    seen.append(stream)
    assert "token=***" in json.loads(seen[0])["stdout"]
    assert "token=***" in json.dumps(Task.objects.get(pk=task_id).result)
    user.is_staff = user.is_superuser = True
    user.save()
    admin = Client()
    admin.force_login(user)
    for url in (
        f"/admin/executions/execution/{execution.pk}/change/",
        f"/admin/tasks/task/{task_id}/change/",
        f"/admin/vault/secret/{secret.pk}/change/",
        "/admin/vault/secret/",
        "/admin/events/event/",
    ):
        page = admin.get(url)
        assert page.status_code == 200, url
        seen.append(page.content.decode())
    assert "token=***" in seen[-5]  # the execution's output on its admin page
    assert str(execution.pk) in seen[-3]  # where the secret is used
    fan_out()
    seen += list(Delivery.objects.filter(subscription=hook).values_list("payload", flat=True))
    seen.append(json.dumps(list(Event.objects.values_list("data", flat=True))))
    assert len(seen) > 12
    for text in seen:
        assert value not in text


def test_a_value_split_across_two_chunks_is_masked(user, project, make_secret, inline_worker):
    _, value = make_secret(value="split-" + "x" * 20 + "-secret")
    half = len(value) // 2
    script = (
        "import os, sys, time\n"
        "v = {{ token }}\n"
        "print('before', flush=True); time.sleep(0.3)\n"
        f"sys.stdout.write('a' + v[:{half}]); sys.stdout.flush(); time.sleep(0.3)\n"
        f"sys.stdout.write(v[{half}:] + 'b\\n'); sys.stdout.flush(); time.sleep(0.3)\n"
        f"sys.stdout.write('end ' + v[:{half}])\n"  # a partial value at the very end is not one
    )
    template(user, project, script=script, script_type="python")
    template_services.template_trigger(
        template=project.templates.get(), actor=user, parameters={"token": {"secret": "DEPLOY_TOKEN"}}
    )
    assert inline_worker.run_pending() == 1
    execution = Execution.objects.get()
    assert execution.status == ExecutionStatus.SUCCEEDED, stdout(execution)
    chunks = list(
        OutputChunk.objects.filter(execution=execution).order_by("seq").values_list("data", flat=True)
    )
    assert len(chunks) >= 3, chunks  # the writes did land in separate chunks
    # The first half was held back until the second showed it was the value; the same half at
    # the very end is let out when the run ends (it is not the value).
    assert all(value[:half] not in chunk for chunk in chunks[:-1]), chunks
    assert "".join(chunks) == f"before\na***b\nend {value[:half]}"


def test_passed_secrets_are_masked_and_short_values_are_not(user, project, inline_worker):
    template(user, project, script='t={{ token }}; echo "$t and x${t}x"')
    for value, shown in (("hunter2-long", "*** and x***x"), ("abc", "abc and xabcx")):
        template_services.template_trigger(
            template=project.templates.get(), actor=user, parameters={"token": value}
        )
        queued = Execution.objects.get(status="queued")
        raw = Execution.objects.filter(pk=queued.pk).values_list(
            Cast("secret_parameters", TextField()), flat=True
        )
        assert value not in raw.get()  # encrypted while it waits
        assert inline_worker.run_pending() == 1
        assert stdout(Execution.objects.get(pk=queued.pk)) == shown + "\n"


def test_an_unknown_name_or_another_projects_secret_is_a_400_naming_both(
    api, other_user, user, project, make_secret
):
    make_secret(name="THEIRS", in_project=other_user.personal_project)
    template(user, project)
    for name in ("NOPE", "THEIRS"):
        problem = problem_of(trigger(api, token={"secret": name}), 400)
        assert error_fields(problem) == {"parameters.token": "secret_not_found"}
        assert name in problem["errors"][0]["message"] and "token" in problem["errors"][0]["message"]
    bad = problem_of(trigger(api, token={"secret": "X", "extra": 1}), 400)
    assert error_fields(bad) == {"parameters.token": "invalid_reference"}
    assert not Task.objects.filter(project=project).exists() and not Execution.objects.exists()


def test_a_reference_for_a_parameter_that_is_not_secret_is_refused(api, user, project, make_secret):
    make_secret()
    template_services.template_create(
        project=project,
        actor=user,
        slug="plain",
        name="Plain",
        name_pattern="Plain",
        script_type="bash",
        script="echo {{ who }}",
        parameters=[{"name": "who", "type": "string"}],
    )
    problem = problem_of(trigger(api, slug="plain", who={"secret": "DEPLOY_TOKEN"}), 400)
    assert error_fields(problem) == {"parameters.who": "invalid_type"}


def test_a_secret_deleted_after_the_trigger_fails_only_that_run(
    api, user, project, make_secret, inline_worker
):
    secret, _ = make_secret()
    template(user, project)
    doomed = trigger(api, token={"secret": "DEPLOY_TOKEN"}).json()["execution"]["id"]
    fine = trigger(api, token="passed-value").json()["execution"]["id"]
    services.secret_delete(secret=secret, actor=user)
    assert inline_worker.run_pending() == 1  # the other run still runs
    failed = Execution.objects.get(pk=doomed)
    assert failed.status == ExecutionStatus.FAILED and failed.error == ErrorCode.SECRET_MISSING
    assert "'token'" in failed.error_detail and "'DEPLOY_TOKEN'" in failed.error_detail
    assert failed.secret_parameters == {} and failed.task.status == "failed"
    assert not failed.retries.exists()  # a missing secret is not retried
    assert Execution.objects.get(pk=fine).status == ExecutionStatus.SUCCEEDED
    assert not Event.objects.filter(type="secret.used").exists()
    detail = api.get(f"/api/v1/tasks/{failed.task_id}/executions/{doomed}").json()
    assert detail["status"] == "failed" and detail["error"] == "secret_missing"


def test_the_admin_reruns_a_run_whose_secret_came_from_a_reference(user, project, make_secret, inline_worker):
    _, value = make_secret()
    template(user, project)
    _, execution = template_services.template_trigger(
        template=project.templates.get(), actor=user, parameters={"token": {"secret": "DEPLOY_TOKEN"}}
    )
    inline_worker.run_pending()
    user.is_staff = True
    user.save()
    admin = Client()
    admin.force_login(user)
    response = admin.post(f"/admin/executions/execution/{execution.pk}/rerun/")
    assert response.status_code == 302
    rerun = Execution.objects.exclude(pk=execution.pk).get()
    assert rerun.parameters == {"token": {"secret": "DEPLOY_TOKEN"}}
    assert inline_worker.run_pending() == 1
    rerun.refresh_from_db()
    assert rerun.status == ExecutionStatus.SUCCEEDED
    assert base64.b64decode(stdout(rerun).splitlines()[1]).decode() == value
    # Run now on the task (its stored reference) works too.
    assert admin.post(f"/admin/tasks/task/{execution.task_id}/run/").status_code == 302
    assert inline_worker.run_pending() == 1


def test_the_admin_run_form_offers_the_projects_secrets(user, project, make_secret, inline_worker):
    _, value = make_secret()
    make_secret(name="OTHER")
    template(user, project)
    user.is_staff = True
    user.save()
    admin = Client()
    admin.force_login(user)
    url = f"/admin/templates_app/template/{project.templates.get().pk}/trigger/"
    page = admin.get(url).content.decode()
    assert "DEPLOY_TOKEN" in page and "OTHER" in page and value not in page
    assert admin.post(url, {"token__secret": "DEPLOY_TOKEN"}).status_code == 302
    assert Execution.objects.get().parameters == {"token": {"secret": "DEPLOY_TOKEN"}}
    both = admin.post(url, {"token": "typed-value", "token__secret": "DEPLOY_TOKEN"})
    assert both.status_code == 200 and b"not both" in both.content
    assert admin.post(url, {"token__secret": "MISSING"}).status_code == 200  # not a choice
    assert Execution.objects.count() == 1


def test_a_member_triggers_with_a_reference_to_a_secret_only_admins_set(team, key_client):
    project, member = team(Role.MEMBER)
    owner = project.memberships.get(role=Role.ADMIN).user
    services.secret_create(project=project, actor=owner, name="DEPLOY_TOKEN", value="shared-value-123")
    template(owner, project)
    client = key_client(member)
    response = client.post(
        f"/api/v1/templates/deploy/trigger?project={project.pk}",
        {"parameters": {"token": {"secret": "DEPLOY_TOKEN"}}},
        format="json",
    )
    assert response.status_code in (201, 202), response.content
    assert Secret.objects.get().value == "shared-value-123"
    assert "shared-value-123" not in response.content.decode()
    viewer = UserFactory()
    MembershipFactory(project=project, user=viewer, role=Role.VIEWER)
    refused = key_client(viewer).post(
        f"/api/v1/templates/deploy/trigger?project={project.pk}",
        {"parameters": {"token": {"secret": "DEPLOY_TOKEN"}}},
        format="json",
    )
    assert refused.status_code == 403


def test_passed_secrets_no_key_opens_fail_only_that_run(api, user, project, inline_worker, settings):
    """A queued run's passed secret values are stored encrypted; if the key that encrypted them is
    dropped before `rotate_secrets_key` ran, that run fails `secret_missing` at its claim and the
    queue goes on (the claim loop is not stuck on it)."""
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    template(user, project)
    settings.TASKFORGE_SECRETS_KEYS = [old]
    doomed = trigger(api, token="passed-under-the-old-key").json()["execution"]["id"]
    settings.TASKFORGE_SECRETS_KEYS = [new]
    fine = trigger(api, token="passed-under-the-new-key").json()["execution"]["id"]
    assert inline_worker.run_pending() == 1  # the other run still runs
    failed = Execution.objects.get(pk=doomed)
    assert failed.status == ExecutionStatus.FAILED and failed.error == ErrorCode.SECRET_MISSING
    assert "rotate_secrets_key" in failed.error_detail
    assert failed.task.status == "failed" and not failed.retries.exists()
    assert Execution.objects.get(pk=fine).status == ExecutionStatus.SUCCEEDED
