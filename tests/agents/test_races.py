"""Two registered agents with different labels and capacities, three copies of each running at
once, race over labelled, pinned and plain tasks through a real gunicorn on real connections:
every task is claimed once, by an agent allowed to take it, and no agent ever holds more than
its capacity."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx
import pytest

from accounts.models import ApiKey
from agents.services import agent_register
from events.models import Event, EventType
from tasks.models import Status, Task
from tasks.services import task_create
from tests.factories import UserFactory
from tests.live import gunicorn

COPIES = 3


def _claim_round(base: str, key: str, out: list[dict[str, Any]], errors: list[str]) -> None:
    """One copy of an agent: claim-next (count 2) until it gets nothing."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        while True:
            response = client.post("/api/v1/tasks/claim-next", json={"count": 2})
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text}")
                return
            body = response.json()
            out.extend(body["tasks"])
            if not body["tasks"]:
                return


@pytest.mark.django_db(transaction=True)
def test_two_agents_race_over_labelled_and_pinned_tasks_over_http():
    owner = UserFactory()
    project = owner.personal_project
    # Both run linux (the shared pool); only "amd" has arch=amd64, only "gpu" has gpu=yes.
    amd, amd_key = agent_register(
        project=project, actor=owner, name="amd", labels={"os": "linux", "arch": "amd64"}, capacity=3
    )
    gpu, gpu_key = agent_register(
        project=project, actor=owner, name="gpu", labels={"os": "linux", "gpu": "yes"}, capacity=2
    )
    for i in range(30):
        task_create(
            project=project, actor=owner, name=f"shared-{i}", required_labels={"os": "linux"}, priority=i % 3
        )
    for i in range(8):
        task_create(project=project, actor=owner, name=f"amd-{i}", required_labels={"arch": "amd64"})
        task_create(
            project=project, actor=owner, name=f"gpu-{i}", required_labels={"gpu": "yes", "os": "linux"}
        )
    for i in range(5):
        task_create(project=project, actor=owner, name=f"pinned-amd-{i}", agent="amd")
        task_create(project=project, actor=owner, name=f"pinned-gpu-{i}", agent=str(gpu.pk))
        task_create(project=project, actor=owner, name=f"anyone-{i}", priority=i)
    nobody = task_create(project=project, actor=owner, name="mac", required_labels={"os": "mac"})
    keys = {amd.pk: amd_key, gpu.pk: gpu_key}
    capacity = {amd.pk: 3, gpu.pk: 2}
    seen: list[tuple[Any, dict[str, Any]]] = []
    errors: list[str] = []
    with gunicorn(workers=2) as base:
        for _round in range(60):
            claimed: dict[Any, list[dict[str, Any]]] = {pk: [] for pk in keys}
            threads = [
                threading.Thread(target=_claim_round, args=(base, keys[pk], claimed[pk], errors))
                for pk in keys
                for _copy in range(COPIES)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not errors, errors
            if not any(claimed.values()):
                break
            for pk, tasks in claimed.items():
                # The copies of one agent together never hold more than its capacity.
                assert len(tasks) <= capacity[pk], (pk, len(tasks))
                assert Task.objects.held_by(pk).count() == len(tasks)
                for task in tasks:
                    seen.append((pk, task))
                    done = httpx.post(
                        f"{base}/api/v1/tasks/{task['id']}/complete",
                        headers={"Authorization": f"Bearer {keys[pk]}"},
                        json={"result": "ok"},
                        timeout=30,
                    )
                    assert done.status_code == 200, done.text
    ids = [task["id"] for _pk, task in seen]
    assert len(ids) == len(set(ids)) == 30 + 8 * 2 + 5 * 3  # each claimed once; all but the mac task
    for pk, task in seen:
        name = task["name"]
        if name.startswith(("amd", "pinned-amd")):
            assert pk == amd.pk, name
        elif name.startswith(("gpu", "pinned-gpu")):
            assert pk == gpu.pk, name
        assert task["claimed_by_agent"] == str(pk)
    # Both took part in the shared pool.
    assert {pk for pk, task in seen if task["name"].startswith("shared")} == set(keys)
    assert (
        Counter(
            Event.objects.filter(type=EventType.TASK_CLAIMED).values_list("task_id", flat=True)
        ).most_common(1)[0][1]
        == 1
    )
    assert Task.objects.filter(status=Status.COMPLETED).count() == len(ids)
    nobody.refresh_from_db()
    assert nobody.status == Status.PENDING and nobody.unroutable_since is not None
    assert ApiKey.objects.filter(agent_bound=True).count() == 2
