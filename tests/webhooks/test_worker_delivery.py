"""End to end: a real worker process runs a script and delivers the signed webhooks."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook

from executions import services as execution_services
from tests.executions.conftest import make_task  # noqa: F401 - fixture
from tests.live import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_delivers_execution_webhooks(receiver, local_targets, subscribe, make_task):  # noqa: F811
    _, secret = subscribe(receiver.url, event_types=["execution.finished", "task.completed"])
    task = make_task("echo done")
    execution = execution_services.execution_enqueue(task=task, actor=None)
    env = {"TASKFORGE_WEBHOOK_ALLOW_PRIVATE": "1", "TASKFORGE_WEBHOOK_ALLOW_HTTP": "1"}
    with worker(extra_env=env):
        wait_for(lambda: len(receiver.hook_requests()) >= 2, timeout=30)
    types = set()
    for request in receiver.hook_requests():
        payload = Webhook(secret).verify(request.body, request.headers)
        types.add(payload["type"])
        assert json.loads(request.body)["type"] == payload["type"]
    assert types == {"execution.finished", "task.completed"}
    finished = next(
        json.loads(r.body)
        for r in receiver.hook_requests()
        if json.loads(r.body)["type"] == "execution.finished"
    )
    assert finished["data"]["execution_id"] == str(execution.pk)
