"""The complete agent of docs/agents.md, copied out of the page and run against gunicorn: it
takes the tasks routed to it (never another agent's), completes them with progress reported,
and exits by itself once drained."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from events.models import Event, EventType
from tasks.models import Status, Task
from tasks.services import task_create
from tests.factories import UserFactory, make_key
from tests.live import ROOT, gunicorn, wait_for

DOC = ROOT / "docs" / "agents.md"


def agent_program() -> str:
    text = DOC.read_text()
    match = re.search(r"<!-- agent\.py -->\n```python\n(.*?)\n```", text, re.DOTALL)
    assert match, "docs/agents.md lost its <!-- agent.py --> block"
    return match.group(1)


@pytest.mark.django_db(transaction=True)
def test_the_documented_agent_runs_and_drains(tmp_path: Path):
    owner = UserFactory()
    project = owner.personal_project
    _key, raw = make_key(owner, ["agent:write", "task:write"])
    program = tmp_path / "agent.py"
    program.write_text(agent_program())
    with gunicorn(workers=2, extra_env={"TASKFORGE_AGENT_HEARTBEAT_SECONDS": "2"}) as base:
        api = httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"Api-Key {raw}"}, timeout=30)
        registered = api.post("/agents", json={"name": "doc-agent", "labels": {"os": "linux"}, "capacity": 2})
        assert registered.status_code == 201, registered.text
        agent = registered.json()
        other = api.post("/agents", json={"name": "someone-else"}).json()
        mine = [
            task_create(project=project, actor=owner, name=f"job-{i}", required_labels={"os": "linux"})
            for i in range(4)
        ]
        mine.append(task_create(project=project, actor=owner, name="pinned", agent="doc-agent"))
        theirs = task_create(project=project, actor=owner, name="not mine", agent=other["id"])
        env = {
            "PATH": "/usr/bin:/bin",
            "TASKFORGE_URL": base,
            "TASKFORGE_AGENT_ID": agent["id"],
            "TASKFORGE_AGENT_KEY": agent["key"],
        }
        proc = subprocess.Popen(
            [sys.executable, str(program)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(
                lambda: (
                    Task.objects.filter(pk__in=[t.pk for t in mine], status=Status.COMPLETED).count() == 5
                ),
                timeout=60,
            )
            assert api.get(f"/agents/{agent['id']}").json()["status"] == "online"
            assert api.post(f"/agents/{agent['id']}/drain").status_code == 200
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, out
    assert "drained: exiting" in out
    for task in Task.objects.filter(pk__in=[t.pk for t in mine]):
        assert task.result == {"echo": task.name, "by": agent["id"]}
        assert str(task.claimed_by_agent_id) == agent["id"]
        assert task.progress is None or 0 < task.progress <= 1
    # Beats come every 2/3 s and the five jobs take over 2 s: progress was reported.
    assert Task.objects.filter(pk__in=[t.pk for t in mine], progress__isnull=False).exists()
    theirs.refresh_from_db()
    assert theirs.status == Status.PENDING and theirs.claimed_by_agent is None
    types = [
        e.type
        for e in Event.objects.filter(type__startswith="agent.").order_by("id")
        if e.data["agent_id"] == agent["id"]
    ]
    assert types[:3] == [EventType.AGENT_REGISTERED, EventType.AGENT_ONLINE, EventType.AGENT_DRAINING]
