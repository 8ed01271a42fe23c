from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Role
from executions.models import Execution, Trigger
from templates_app.management.commands import trigger as trigger_command
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def run_inline(monkeypatch, inline_worker) -> None:
    """--wait pauses between polls: run the queued executions there instead. (Not by patching
    time.sleep, which every thread shares: the sandbox's own waits would run them too.)"""
    monkeypatch.setattr(trigger_command.Command, "pause", lambda self: inline_worker.run_pending())


def call(*args: Any) -> tuple[int | None, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("trigger", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return None, out.getvalue()


def test_trigger_a_template_by_slug_and_wait(make_template, run_inline):
    make_template(script="echo deploying {{ service }} x{{ replicas }}; {{ dry_run }}")
    code, out = call(
        "deploy", "--param", "service=api", "--param", "replicas=3", "--param", "dry_run=false", "--wait"
    )
    assert code == 1  # `test false` fails: the script's exit code is the command's
    assert "deploying api x3" in out
    execution = Execution.objects.get()
    assert execution.trigger == Trigger.CLI
    assert execution.parameters["replicas"] == 3 and execution.parameters["dry_run"] is False
    assert execution.task.template.slug == "deploy"


def test_wait_exit_code_zero(make_template, run_inline):
    make_template(script="echo ok {{ service }}")
    code, out = call("deploy", "--param", "service=web", "--wait")
    assert (code, out) == (0, "ok web\n")


def test_cli_strings_are_parsed_by_type_and_validated(make_template):
    make_template()
    with pytest.raises(CommandError) as excinfo:
        call("deploy", "--param", "service=api", "--param", "replicas=three", "--param", "dry_run=yes")
    assert "parameters.replicas" in str(excinfo.value) and "parameters.dry_run" in str(excinfo.value)
    with pytest.raises(CommandError) as excinfo:
        call("deploy", "--param", "replicas=99", "--param", "nope=1")
    message = str(excinfo.value)
    assert (
        "parameters.service" in message and "parameters.replicas" in message and "parameters.nope" in message
    )
    assert not Execution.objects.exists()


def test_ambiguous_slug_needs_project(user, make_template):
    make_template()
    team = MembershipFactory(user=user, role=Role.ADMIN).project
    make_template(in_project=team)
    with pytest.raises(CommandError, match="--project"):
        call("deploy", "--param", "service=api")
    _code, out = call("deploy", "--project", str(team.pk), "--param", "service=api")
    assert Execution.objects.get().task.project == team
    assert out.strip() == str(Execution.objects.get().pk)


def test_trigger_a_templated_task_by_id_with_params(make_template):
    from templates_app import services

    template = make_template()
    task, _ = services.template_trigger(
        template=template, actor=None, parameters={"service": "api"}, execute=False
    )
    call(str(task.pk), "--param", "replicas=7")
    assert Execution.objects.get().parameters["replicas"] == 7
    with pytest.raises(CommandError, match="No task or template"):
        call("missing")
