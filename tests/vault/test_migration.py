"""executions 0007: the secret values of waiting runs are encrypted in place (and back)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import TextField
from django.db.models.functions import Cast

from executions.models import Execution

BEFORE = [("executions", "0006_queue")]


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_waiting_secret_values_and_back():
    from tests.factories import TaskFactory

    task = TaskFactory(script_type="bash", script_content="echo hi")
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("executions", "Execution")
    common = {"project_id": task.project_id, "task_id": task.pk, "script_type": "bash", "script": "echo"}
    common |= {"timeout_seconds": 60, "priority": 5}
    old.objects.create(number=1, secret_parameters={"token": "clear-value-123"}, **common)
    old.objects.create(number=2, secret_parameters={}, **common)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    raw = dict(Execution.objects.values_list("number", Cast("secret_parameters", TextField())))
    assert "clear-value-123" not in raw[1] and raw[2] == ""
    by_number = {e.number: e.secret_parameters for e in Execution.objects.all()}
    assert by_number == {1: {"token": "clear-value-123"}, 2: {}}

    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    back = executor.loader.project_state(BEFORE).apps.get_model("executions", "Execution")
    assert {e.number: e.secret_parameters for e in back.objects.all()} == by_number
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
