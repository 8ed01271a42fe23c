"""An agent that stops heartbeating goes offline and its work returns, with nobody calling the
API: a real worker's housekeeping job does it (runworker, against the test database)."""

from __future__ import annotations

import httpx
import pytest

from agents.models import Agent
from events.models import Event, EventType
from tasks.models import Status, Task
from tasks.services import task_create
from tests.factories import UserFactory, make_key
from tests.live import gunicorn, wait_for, worker

FAST = {"TASKFORGE_AGENT_HEARTBEAT_SECONDS": "1", "TASKFORGE_AGENT_MISSED_HEARTBEATS": "2"}


@pytest.mark.django_db(transaction=True)
def test_a_silent_agent_goes_offline_and_its_work_returns_to_another():
    owner = UserFactory()
    project = owner.personal_project
    _key, raw = make_key(owner, ["agent:write", "task:write"])
    with gunicorn(workers=1, extra_env=FAST) as base:
        api = httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"Api-Key {raw}"}, timeout=30)
        silent = api.post("/agents", json={"name": "silent", "labels": {"os": "linux"}}).json()
        backup = api.post("/agents", json={"name": "backup", "labels": {"os": "linux"}}).json()
        task = task_create(project=project, actor=owner, name="job", required_labels={"os": "linux"})

        def as_agent(agent: dict) -> httpx.Client:
            return httpx.Client(
                base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {agent['key']}"}, timeout=30
            )

        claimed = as_agent(silent).post("/tasks/claim-next", json={"lease_seconds": 3600})
        assert claimed.status_code == 200 and claimed.json()["id"] == str(task.pk)
        # The lease is an hour: only the agent going silent can bring the task back.
        with worker(extra_env=FAST):
            wait_for(lambda: Task.objects.get(pk=task.pk).status == Status.PENDING, timeout=30)
        assert api.get(f"/agents/{silent['id']}").json()["status"] == "offline"
        assert Agent.objects.get(pk=silent["id"]).offline_since is not None
        offline = Event.objects.filter(type=EventType.AGENT_OFFLINE).get()
        assert offline.data["agent_id"] == silent["id"]
        assert Event.objects.filter(type=EventType.TASK_LEASE_EXPIRED, task_id=task.pk).exists()
        retaken = as_agent(backup).post("/tasks/claim-next")
        assert retaken.status_code == 200 and retaken.json()["claimed_by_agent"] == backup["id"]
        # The silent agent comes back: its next heartbeat says the task is no longer its.
        answer = as_agent(silent).post(
            f"/agents/{silent['id']}/heartbeat", json={"tasks": [{"id": str(task.pk)}]}
        )
        assert answer.json()["cancelled_tasks"] == [str(task.pk)] and answer.json()["status"] == "online"
