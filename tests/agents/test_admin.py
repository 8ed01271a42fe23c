"""The agents' admin page (state badges, load, last heartbeat, current tasks; pause, drain,
resume through the services) and the unroutable tasks on the dashboard."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from accounts.models import Role, User
from agents.models import Agent, Mode
from agents.services import agent_register, agent_touch
from events.models import Event, EventType
from tasks.routing import agent_claim_next
from tasks.services import task_create
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def staff(role: str, project) -> Client:
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.all())
    MembershipFactory(project=project, user=user, role=role)
    client = Client()
    client.force_login(User.objects.get(pk=user.pk))
    return client


@pytest.fixture
def working_agent(user) -> Agent:
    project = user.personal_project
    agent, _ = agent_register(project=project, actor=user, name="gpu-box", labels={"gpu": "a100"}, capacity=2)
    task_create(project=project, actor=user, name="render frames", required_labels={"gpu": "a100"})
    agent_claim_next(agent=agent, actor=user)
    return agent


def test_list_and_page_show_state_load_heartbeat_and_tasks(user, working_agent):
    client = staff(Role.VIEWER, user.personal_project)
    page = client.get("/admin/agents/agent/").content.decode()
    assert "gpu-box" in page and "online</span>" in page and "1 / 2" in page and "s ago" in page
    assert "gpu=a100" in page
    detail = client.get(f"/admin/agents/agent/{working_agent.pk}/change/").content.decode()
    assert "render frames" in detail
    assert client.get("/admin/agents/agent/?state=online").status_code == 200
    assert "gpu-box" not in client.get("/admin/agents/agent/?state=offline").content.decode()


@pytest.mark.parametrize(("action", "mode"), [("pause", Mode.PAUSED), ("drain", Mode.DRAINING)])
def test_member_pauses_drains_and_resumes(user, working_agent, action, mode):
    client = staff(Role.MEMBER, user.personal_project)
    data = {"action": action, "_selected_action": [str(working_agent.pk)], "index": 0}
    assert client.post("/admin/agents/agent/", data).status_code == 302
    working_agent.refresh_from_db()
    assert working_agent.mode == mode
    client.post("/admin/agents/agent/", {**data, "action": "resume"})
    working_agent.refresh_from_db()
    assert working_agent.mode == Mode.ACTIVE
    types = list(Event.objects.filter(type__startswith="agent.").values_list("type", flat=True))
    assert types[-2:] == [f"agent.{'paused' if action == 'pause' else 'draining'}", EventType.AGENT_RESUMED]


def test_a_viewer_cannot_pause(user, working_agent):
    client = staff(Role.VIEWER, user.personal_project)
    data = {"action": "pause", "_selected_action": [str(working_agent.pk)], "index": 0}
    client.post("/admin/agents/agent/", data)
    working_agent.refresh_from_db()
    assert working_agent.mode == Mode.ACTIVE


def test_another_projects_agents_are_not_listed(user, working_agent):
    stranger = UserFactory(is_staff=True)
    stranger.user_permissions.add(*Permission.objects.all())
    client = Client()
    client.force_login(User.objects.get(pk=stranger.pk))
    assert "gpu-box" not in client.get("/admin/agents/agent/").content.decode()
    assert client.get(f"/admin/agents/agent/{working_agent.pk}/change/").status_code == 302


def test_dashboard_lists_unroutable_tasks(user):
    project = user.personal_project
    task_create(project=project, actor=user, name="needs a tpu", required_labels={"tpu": "v5"})
    client = staff(Role.VIEWER, project)
    page = client.get("/admin/").content.decode()
    assert "Unroutable tasks" in page and "needs a tpu" in page and "tpu=v5" in page
    agent, _ = agent_register(project=project, actor=user, name="tpu", labels={"tpu": "v5"})
    agent_touch(agent=Agent.objects.get(pk=agent.pk), now=timezone.now())
    assert "needs a tpu" not in client.get("/admin/").content.decode()
