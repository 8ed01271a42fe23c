"""TaskSerializer writes its representation out by hand (it is on every task answer and list
page): it must stay exactly what DRF's generic field loop makes of the declared fields."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from rest_framework import serializers

from accounts.models import Project, User
from executions import services as executions
from executions.engine import queue
from tasks import services as tasks
from tasks.models import Task
from tasks.serializers import TaskSerializer
from templates_app import services as templates
from tests.factories import make_key

pytestmark = pytest.mark.django_db


def drf(task: Task) -> dict[str, Any]:
    return serializers.ModelSerializer.to_representation(TaskSerializer(), task)


def test_the_written_out_representation_is_drfs(user: User, project: Project, make_template: Any) -> None:
    now = timezone.now()
    plain = tasks.task_create(project=project, actor=user, name="plain")
    full = tasks.task_create(
        project=project,
        actor=user,
        name="full",
        description="déjà vu",
        tags=["ci", "nightly"],
        metadata={"owner": {"team": "infra"}, "n": [1, 2.5, None]},
        agent="builder-1",
        due_date=now + timedelta(days=3, microseconds=7),
        estimated_hours=Decimal("2.5"),
        priority=9,
        max_retries=2,
        depends_on=[plain.pk],
    )
    key, _raw = make_key(user)
    claimed = tasks.task_create(project=project, actor=user, name="claimed")
    tasks.task_claim(task=claimed, actor=user, api_key=key)
    run = tasks.task_create(
        project=project, actor=user, name="run", script_type="bash", script_content="true"
    )
    execution = executions.execution_enqueue(task=run, actor=user)
    finished = tasks.task_create(
        project=project, actor=user, name="done", script_type="bash", script_content="x"
    )
    queued = executions.execution_enqueue(task=finished, actor=user)
    worker = queue.worker_register(concurrency=1, sandbox="test")
    started = queue.execution_claim_next(worker=worker)
    assert started is not None and started.pk == execution.pk
    queue.execution_finish(
        execution=started, claim_token=started.claim_token, status="failed", exit_code=3, error="nonzero_exit"
    )
    templated, _ = templates.template_trigger(
        template=make_template(), actor=user, parameters={"service": "api", "token": "s3cret"}, execute=False
    )
    assert queued.pk

    rows = Task.objects.for_api().filter(
        pk__in=[t.pk for t in (plain, full, claimed, run, finished, templated)]
    )
    assert len(rows) == 6
    for task in rows:
        mine = TaskSerializer(task).data
        assert list(mine.items()) == list(drf(task).items()), task.name
    # The cases are the ones meant: every optional part is set somewhere.
    shown = {task.name: TaskSerializer(task).data for task in rows}
    assert shown["full"]["depends_on"] == [str(plain.pk)] and shown["full"]["estimated_hours"] == Decimal(
        "2.50"
    )
    assert shown["claimed"]["claimed_by"]["api_key"] == key.prefix
    assert shown["run"]["last_execution"]["exit_code"] == 3
    assert shown["done"]["last_execution"]["finished_at"] is None
    assert shown["Deploy api to staging"]["template"] is not None
    assert shown["Deploy api to staging"]["parameters"]["token"] == "***"
