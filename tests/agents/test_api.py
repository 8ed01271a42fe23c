"""Registered agents over HTTP: the registry, agent-bound keys, routing, heartbeats, states and
their events, tenancy, roles and scopes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey, Role
from agents.models import Agent
from agents.services import agents_sweep
from events.models import Event, EventType
from tasks.models import Status, Task
from tasks.routing import agents_housekeeping
from tests.factories import TaskFactory
from tests.tasks.conftest import error_fields, problem_of

pytestmark = pytest.mark.django_db


def register(api: APIClient, name: str = "builder", **fields: Any) -> tuple[dict[str, Any], APIClient]:
    """Register an agent; returns its body and a client sending its agent-bound key."""
    response = api.post("/api/v1/agents", {"name": name, **fields}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['key']}")
    return body, client


def beat(agent_client: APIClient, agent_id: str, **body: Any) -> dict[str, Any]:
    response = agent_client.post(f"/api/v1/agents/{agent_id}/heartbeat", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def new_task(api: APIClient, **fields: Any) -> dict[str, Any]:
    response = api.post("/api/v1/tasks", {"name": "work", **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def agent_events(agent_id: str) -> list[str]:
    events = Event.objects.filter(type__startswith="agent.").order_by("id")
    return [event.type for event in events if event.data["agent_id"] == agent_id]


# --- the registry ----------------------------------------------------------------------------------
def test_register_answers_the_agent_and_its_key_once(api, project):
    body, _client = register(
        api,
        labels={"os": "linux", "gpu": "a100"},
        capacity=3,
        type="codegen",
        version="1.2",
        platform="linux/amd64",
    )
    assert body["status"] == "offline"  # until it is first heard from
    assert body["labels"] == {"os": "linux", "gpu": "a100"}
    assert body["capabilities"] == ["gpu=a100", "os=linux"]
    assert (body["capacity"], body["max_concurrent_tasks"], body["current_tasks"], body["load"]) == (
        3,
        3,
        0,
        0,
    )
    key = ApiKey.objects.get(prefix=body["api_key"])
    assert key.agent_bound and key.project_id == project.pk and key.parent_id == api.api_key.pk
    assert body["key"].startswith(f"{key.prefix}.")
    shown = api.get(f"/api/v1/agents/{body['id']}").json()
    assert "key" not in shown and shown["name"] == "builder"
    assert agent_events(body["id"]) == [EventType.AGENT_REGISTERED]


def test_labels_as_key_value_list_and_bad_input_names_the_field(api):
    body, _ = register(api, labels=["os=linux", "arch=arm64"])
    assert body["labels"] == {"os": "linux", "arch": "arm64"}
    for labels in (["nokey"], {"bad key": "x"}, {"os": 3}, "linux"):
        response = api.post("/api/v1/agents", {"name": "x", "labels": labels}, format="json")
        assert error_fields(problem_of(response, 400)) == {"labels": response.json()["errors"][0]["code"]}
    assert "capacity" in error_fields(
        problem_of(api.post("/api/v1/agents", {"name": "y", "capacity": 0}), 400)
    )
    assert Agent.objects.count() == 1


def test_names_are_unique_per_project(api):
    register(api, "same")
    assert error_fields(problem_of(api.post("/api/v1/agents", {"name": "same"}), 400)) == {"name": "unique"}


def test_heartbeat_brings_it_online_and_answers_continue(api):
    body, agent = register(api)
    answer = beat(agent, body["id"])
    assert answer["action"] == "continue" and answer["status"] == "online"
    assert answer["cancelled_tasks"] == [] and answer["heartbeat_seconds"] == 15
    assert api.get(f"/api/v1/agents/{body['id']}").json()["status"] == "online"
    assert agent_events(body["id"]) == [EventType.AGENT_REGISTERED, EventType.AGENT_ONLINE]
    beat(agent, body["id"])  # a second beat is no change of state: no event
    assert len(agent_events(body["id"])) == 2


def test_pause_drain_resume_each_an_event_and_the_heartbeat_answer(api):
    body, agent = register(api)
    beat(agent, body["id"])
    until = timezone.now() + timedelta(hours=1)
    paused = api.post(
        f"/api/v1/agents/{body['id']}/pause", {"note": "disk full", "until": until.isoformat()}, format="json"
    ).json()
    assert paused["status"] == "paused" and paused["pause_note"] == "disk full"
    assert beat(agent, body["id"])["action"] == "pause"
    assert api.post(f"/api/v1/agents/{body['id']}/drain").json()["status"] == "draining"
    assert beat(agent, body["id"])["action"] == "drain"
    assert api.post(f"/api/v1/agents/{body['id']}/resume").json()["status"] == "online"
    assert problem_of(api.post(f"/api/v1/agents/{body['id']}/resume"), 409)["code"] == "not_paused"
    assert agent_events(body["id"])[2:] == [
        EventType.AGENT_PAUSED,
        EventType.AGENT_DRAINING,
        EventType.AGENT_RESUMED,
    ]
    event = Event.objects.filter(type=EventType.AGENT_PAUSED).get()
    assert (
        event.data["from"] == "online" and event.data["to"] == "paused" and event.data["note"] == "disk full"
    )


def test_a_pause_with_until_ends_by_itself(api):
    body, agent = register(api)
    beat(agent, body["id"])
    until = timezone.now() + timedelta(seconds=30)
    api.post(f"/api/v1/agents/{body['id']}/pause", {"until": until.isoformat()}, format="json")
    assert agents_sweep(now=until + timedelta(seconds=1)) == 1
    row = Agent.objects.get(pk=body["id"])
    assert row.mode == "active" and row.paused_until is None
    assert Event.objects.filter(type=EventType.AGENT_RESUMED).get().data["reason"] == "pause_expired"


def test_pause_until_in_the_past_is_a_400(api):
    body, _ = register(api)
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    response = api.post(f"/api/v1/agents/{body['id']}/pause", {"until": past}, format="json")
    assert error_fields(problem_of(response, 400)) == {"until": "in_the_past"}


def test_list_filters_by_status(api):
    online, client = register(api, "a")
    beat(client, online["id"])
    register(api, "b")
    assert [a["name"] for a in api.get("/api/v1/agents?status=online").json()["results"]] == ["a"]
    assert [a["name"] for a in api.get("/api/v1/agents?status=offline").json()["results"]] == ["b"]
    assert [a["name"] for a in api.get("/api/v1/agents?status=online,offline").json()["results"]] == [
        "a",
        "b",
    ]
    assert "status" in error_fields(problem_of(api.get("/api/v1/agents?status=asleep"), 400))


def test_delete_revokes_the_key_and_returns_its_claims(api):
    body, agent = register(api)
    task = new_task(api)
    assert agent.post(f"/api/v1/tasks/{task['id']}/claim").status_code == 200
    assert api.delete(f"/api/v1/agents/{body['id']}").status_code == 204
    assert api.get(f"/api/v1/agents/{body['id']}").status_code == 404
    assert agent.get(f"/api/v1/agents/{body['id']}").status_code == 401  # revoked
    row = Task.objects.get(pk=task["id"])
    assert row.status == Status.PENDING and row.claimed_by_agent is None
    assert EventType.AGENT_DELETED in agent_events(body["id"])
    register(api, body["name"])  # the name is free again


# --- the agent-bound key can act only as its agent ---------------------------------------------
def test_agent_key_can_do_nothing_else(api):
    body, agent = register(api)
    other, _ = register(api, "other")
    denied = [
        agent.post("/api/v1/tasks", {"name": "x"}),
        agent.get("/api/v1/agents"),
        agent.post("/api/v1/agents", {"name": "spawn"}),
        agent.post(f"/api/v1/agents/{body['id']}/resume"),
        agent.post(f"/api/v1/agents/{body['id']}/tasks", {"name": "x"}),
        agent.delete(f"/api/v1/agents/{body['id']}"),
        agent.get("/api/v1/api-keys"),
        agent.post("/api/v1/api-keys", {"name": "k", "scopes": ["task:read"]}, format="json"),
        agent.get("/api/v1/projects"),
        agent.get("/api/v1/templates"),
    ]
    for response in denied:
        assert problem_of(response, 403)["code"] == "agent_key_forbidden", response.wsgi_request.path
    assert agent.get(f"/api/v1/agents/{other['id']}").status_code == 404
    assert agent.get(f"/api/v1/agents/{body['id']}").status_code == 200
    assert agent.get(f"/api/v1/agents/{body['id']}/status").status_code == 200


def test_agent_reads_only_its_tasks(api, user):
    body, agent = register(api)
    other, _ = register(api, "other")
    free = new_task(api, name="free")
    mine = new_task(api, name="mine", agent=body["name"])
    theirs = new_task(api, name="theirs", agent=other["id"])
    done = TaskFactory(created_by=user, project=user.personal_project, status=Status.COMPLETED)
    names = {t["name"] for t in agent.get("/api/v1/tasks").json()["results"]}
    assert names == {"free", "mine"}
    assert agent.get(f"/api/v1/tasks/{theirs['id']}").status_code == 404
    assert agent.get(f"/api/v1/tasks/{done.pk}").status_code == 404
    assert free and mine


def test_only_the_agent_itself_may_heartbeat(api):
    body, _agent = register(api)
    _other, other_agent = register(api, "other")
    assert problem_of(api.post(f"/api/v1/agents/{body['id']}/heartbeat"), 403)["code"] == "not_the_agent"
    assert other_agent.post(f"/api/v1/agents/{body['id']}/heartbeat").status_code == 404


# --- routing -------------------------------------------------------------------------------------
def test_agent_field_naming_a_registered_agent_pins_the_task(api):
    body, _ = register(api, "reviewer")
    by_name = new_task(api, agent="reviewer")
    by_id = new_task(api, agent=body["id"])
    label_only = new_task(api, agent="nobody-registered")
    alias = new_task(api, assignedAgentId=body["id"])
    assert by_name["assigned_agent"] == by_id["assigned_agent"] == alias["assigned_agent"] == body["id"]
    assert label_only["assigned_agent"] is None and label_only["agent"] == "nobody-registered"
    response = api.post("/api/v1/tasks", {"name": "x", "assigned_agent": "ghost"}, format="json")
    assert error_fields(problem_of(response, 400)) == {"assigned_agent": "does_not_exist"}
    filtered = api.get(f"/api/v1/tasks?assigned_agent={body['id']}").json()["results"]
    assert {t["id"] for t in filtered} == {by_name["id"], by_id["id"], alias["id"]}


def test_submit_a_task_to_an_agent(api):
    body, agent = register(api)
    response = api.post(
        f"/api/v1/agents/{body['id']}/tasks",
        {"name": "for you", "priority": 9, "agent": "", "assigned_agent": None},
        format="json",
    )
    assert response.status_code == 201
    task = response.json()
    assert task["assigned_agent"] == body["id"] and response["Location"].endswith(f"/tasks/{task['id']}")
    beat(agent, body["id"])
    assert agent.post("/api/v1/tasks/claim-next").json()["id"] == task["id"]


def test_claim_next_honours_labels_and_pins(api):
    linux, linux_agent = register(api, "linux", labels={"os": "linux"}, capacity=10)
    mac, mac_agent = register(api, "mac", labels={"os": "mac"}, capacity=10)
    needs_linux = new_task(api, name="l", required_labels={"os": "linux"})
    needs_mac = new_task(api, name="m", required_labels=["os=mac"])
    pinned_mac = new_task(api, name="p", agent="mac")
    anyone = new_task(api, name="a")
    got = linux_agent.post("/api/v1/tasks/claim-next", {"count": 10}, format="json").json()
    assert {t["name"] for t in got["tasks"]} == {"l", "a"} and got["reason"] is None
    assert all(t["claimed_by_agent"] == linux["id"] for t in got["tasks"])
    got = mac_agent.post("/api/v1/tasks/claim-next", {"count": 10}, format="json").json()
    assert {t["name"] for t in got["tasks"]} == {"m", "p"}
    assert needs_linux and needs_mac and pinned_mac and anyone and mac


def test_claim_by_id_honours_routing(api):
    _linux, linux_agent = register(api, "linux", labels={"os": "linux"})
    needs_mac = new_task(api, required_labels={"os": "mac"})
    assert (
        problem_of(linux_agent.post(f"/api/v1/tasks/{needs_mac['id']}/claim"), 409)["code"] == "not_routable"
    )
    # A caller that is not a registered agent cannot take a routed task either.
    assert problem_of(api.post(f"/api/v1/tasks/{needs_mac['id']}/claim"), 409)["code"] == "not_routable"
    assert api.post("/api/v1/tasks/claim-next").status_code == 204


def test_claim_next_within_capacity_and_the_reason_for_nothing(api):
    body, agent = register(api, capacity=2)
    for i in range(5):
        new_task(api, name=f"t{i}")
    got = agent.post("/api/v1/tasks/claim-next", {"count": 5}, format="json").json()
    assert len(got["tasks"]) == 2 and got["reason"] is None
    response = agent.post("/api/v1/tasks/claim-next")
    assert response.status_code == 204 and response["Taskforge-No-Claim"] == "at_capacity"
    full = agent.post("/api/v1/tasks/claim-next", {"count": 1}, format="json").json()
    assert full == {"tasks": [], "reason": {"code": "at_capacity", "detail": full["reason"]["detail"]}}
    status = agent.get(f"/api/v1/agents/{body['id']}/status").json()
    assert {t["id"] for t in status["current_tasks"]} == {t["id"] for t in got["tasks"]}
    assert status["load"] == 1.0 and status["status"] == "online"
    listed = api.get(f"/api/v1/agents/{body['id']}").json()
    assert (listed["current_tasks"], listed["load"]) == (2, 1.0)


@pytest.mark.parametrize(("verb", "code"), [("drain", "draining"), ("pause", "paused")])
def test_a_draining_or_paused_agent_gets_nothing_new_but_finishes_its_work(api, verb, code):
    body, agent = register(api, capacity=3)
    first = new_task(api, name="first")
    assert agent.post("/api/v1/tasks/claim-next").json()["id"] == first["id"]
    new_task(api, name="second")
    api.post(f"/api/v1/agents/{body['id']}/{verb}")
    response = agent.post("/api/v1/tasks/claim-next")
    assert response.status_code == 204 and response["Taskforge-No-Claim"] == code
    answer = beat(agent, body["id"], tasks=[{"id": first["id"], "progress": 0.5}])
    assert answer["action"] == {"drain": "drain", "pause": "pause"}[verb]
    assert answer["held_tasks"] == [first["id"]]
    assert (
        agent.post(f"/api/v1/tasks/{first['id']}/complete", {"result": "ok"}, format="json").status_code
        == 200
    )
    assert Task.objects.filter(status=Status.RUNNING).count() == 0


def test_heartbeat_renews_leases_stores_progress_and_lists_cancelled_tasks(api):
    body, agent = register(api, capacity=2)
    keep, cancel = new_task(api, name="keep"), new_task(api, name="cancel")
    agent.post("/api/v1/tasks/claim-next", {"count": 2, "lease_seconds": 30}, format="json")
    api.post(f"/api/v1/tasks/{cancel['id']}/move", {"status": "cancelled"}, format="json")
    answer = beat(
        agent,
        body["id"],
        tasks=[{"id": keep["id"], "progress": 0.25}, {"id": cancel["id"]}],
        lease_seconds=600,
    )
    assert answer["cancelled_tasks"] == [cancel["id"]] and answer["held_tasks"] == [keep["id"]]
    row = Task.objects.get(pk=keep["id"])
    assert row.progress == 0.25 and row.lease_expires_at > timezone.now() + timedelta(seconds=500)
    status = agent.get(f"/api/v1/agents/{body['id']}/status").json()
    assert status["current_tasks"][0]["progress"] == 0.25 and status["current_tasks"][0]["started_at"]
    bad = agent.post(
        f"/api/v1/agents/{body['id']}/heartbeat",
        {"tasks": [{"id": keep["id"], "progress": 2}]},
        format="json",
    )
    assert problem_of(bad, 400)["errors"][0]["field"].startswith("tasks")


def test_one_agent_cannot_finish_another_agents_task(api, key_client, user):
    _a, agent_a = register(api, "a")
    _b, agent_b = register(api, "b")
    task = new_task(api)
    assert agent_a.post("/api/v1/tasks/claim-next").json()["id"] == task["id"]
    for verb in ("heartbeat", "complete", "fail", "release"):
        # Another agent's claim is not among agent b's tasks: it is not even found.
        response = agent_b.post(
            f"/api/v1/tasks/{task['id']}/{verb}", {"error": "x"} if verb == "fail" else {}
        )
        assert problem_of(response, 404)["code"] == "not_found", verb
    # The user who owns both keys, with another key, is not the agent either.
    plain = key_client(user)
    assert problem_of(plain.post(f"/api/v1/tasks/{task['id']}/complete"), 409)["code"] == "not_claimer"
    assert agent_a.post(f"/api/v1/tasks/{task['id']}/complete").status_code == 200


def test_two_copies_of_one_agent_key_share_its_capacity(api):
    body, agent = register(api, capacity=1)
    twin = APIClient()
    twin.credentials(HTTP_AUTHORIZATION=agent._credentials["HTTP_AUTHORIZATION"])
    new_task(api, name="one")
    new_task(api, name="two")
    assert agent.post("/api/v1/tasks/claim-next").status_code == 200
    assert twin.post("/api/v1/tasks/claim-next")["Taskforge-No-Claim"] == "at_capacity"
    assert body


def test_a_project_admin_may_release_an_agents_claim_a_member_may_not(api, team, key_client):
    project, member = team(Role.MEMBER)
    body, agent = register(api, project=str(project.pk))
    task = new_task(api, project=str(project.pk))
    agent.post(f"/api/v1/tasks/{task['id']}/claim")
    assert (
        problem_of(key_client(member).post(f"/api/v1/tasks/{task['id']}/release"), 409)["code"]
        == "not_claimer"
    )
    released = api.post(f"/api/v1/tasks/{task['id']}/release")
    assert released.status_code == 200 and released.json()["status"] == "pending"
    assert Event.objects.filter(type=EventType.TASK_RELEASED).get().data == {"by_admin": True}
    assert beat(agent, body["id"], tasks=[{"id": task["id"]}])["cancelled_tasks"] == [task["id"]]


def test_user_and_key_claims_keep_working(api, key_client, user):
    task = new_task(api)
    assert api.post(f"/api/v1/tasks/{task['id']}/claim").status_code == 200
    assert key_client(user).post(f"/api/v1/tasks/{task['id']}/complete").status_code == 200


# --- offline ---------------------------------------------------------------------------------------
def test_a_silent_agent_goes_offline_and_its_work_returns(api):
    body, agent = register(api, capacity=2)
    task = new_task(api)
    agent.post("/api/v1/tasks/claim-next")
    later = timezone.now() + timedelta(seconds=46)  # 3 missed beats of 15 s
    Agent.objects.filter(pk=body["id"]).update(last_heartbeat_at=timezone.now() - timedelta(seconds=46))
    assert api.get(f"/api/v1/agents/{body['id']}").json()["status"] == "offline"  # computed on read
    agents_housekeeping()
    row = Task.objects.get(pk=task["id"])
    assert row.status == Status.PENDING and row.claimed_by_agent is None
    types = list(Event.objects.filter(task_id=task["id"]).values_list("type", flat=True))
    assert types[-2:] == [EventType.TASK_LEASE_EXPIRED, EventType.TASK_STATUS_CHANGED]
    assert agent_events(body["id"])[-1] == EventType.AGENT_OFFLINE
    answer = beat(agent, body["id"], tasks=[{"id": task["id"]}])
    assert answer["cancelled_tasks"] == [task["id"]] and answer["status"] == "online"
    assert agent_events(body["id"])[-1] == EventType.AGENT_ONLINE
    assert later


def test_unroutable_tasks_are_marked_listed_and_recorded(api):
    task = new_task(api, required_labels={"gpu": "a100"})
    assert task["unroutable_since"] is not None
    event = Event.objects.filter(type=EventType.TASK_UNROUTABLE).get()
    assert "gpu=a100" in event.data["reason"]
    assert [t["id"] for t in api.get("/api/v1/tasks?unroutable=true").json()["results"]] == [task["id"]]
    body, agent = register(api, labels={"gpu": "a100"})
    beat(agent, body["id"])  # online: it can take the task now
    assert api.get(f"/api/v1/tasks/{task['id']}").json()["unroutable_since"] is None
    assert Event.objects.filter(type=EventType.TASK_ROUTABLE, task_id=task["id"]).exists()
    api.post(f"/api/v1/agents/{body['id']}/pause")
    assert api.get(f"/api/v1/tasks/{task['id']}").json()["unroutable_since"] is not None
    assert api.get("/api/v1/tasks?unroutable=false").json()["results"] == []


# --- tenancy, roles, scopes --------------------------------------------------------------------
def test_another_projects_agent_is_404_on_every_verb(api, other_api):
    body, _ = register(other_api)
    for method, path in [
        ("get", ""),
        ("delete", ""),
        ("get", "/status"),
        ("post", "/pause"),
        ("post", "/resume"),
        ("post", "/drain"),
        ("post", "/heartbeat"),
        ("post", "/tasks"),
    ]:
        response = getattr(api, method)(f"/api/v1/agents/{body['id']}{path}", {"name": "x"}, format="json")
        assert response.status_code == 404, (method, path)
    assert api.get("/api/v1/agents").json()["results"] == []
    response = api.post("/api/v1/tasks", {"name": "x", "assigned_agent": body["id"]}, format="json")
    assert error_fields(problem_of(response, 400)) == {"assigned_agent": "does_not_exist"}


def test_a_viewer_reads_but_cannot_write(api, team, key_client):
    project, viewer = team(Role.VIEWER)
    body, _ = register(api, project=str(project.pk))
    client = key_client(viewer)
    assert client.get(f"/api/v1/agents/{body['id']}").status_code == 200
    for verb in ("pause", "resume", "drain", "tasks"):
        response = client.post(f"/api/v1/agents/{body['id']}/{verb}", {"name": "x"}, format="json")
        assert problem_of(response, 403)["code"] == "insufficient_role", verb
    assert problem_of(client.delete(f"/api/v1/agents/{body['id']}"), 403)["code"] == "insufficient_role"
    response = client.post("/api/v1/agents", {"name": "v", "project": str(project.pk)}, format="json")
    assert problem_of(response, 403)["code"] == "insufficient_role"


def test_narrow_keys_stay_narrow(api, user, key_client):
    body, _ = register(api)
    reader = key_client(user, ["agent:read"])
    assert reader.get("/api/v1/agents").status_code == 200
    assert (
        problem_of(reader.post(f"/api/v1/agents/{body['id']}/pause"), 403)["required_scope"] == "agent:write"
    )
    # Registering mints a key that claims tasks: agent:write alone is not enough.
    writer = key_client(user, ["agent:write"])
    assert problem_of(writer.post("/api/v1/agents", {"name": "n"}), 403)["required_scope"] == "task:write"
    tasks_only = key_client(user, ["task:write"])
    assert problem_of(tasks_only.get("/api/v1/agents"), 403)["required_scope"] == "agent:read"
    # A project-restricted key registers agents in its project only.
    other = user.memberships.exclude(project=user.personal_project).first()
    assert other is None
    restricted = key_client(user, ["agent:write", "task:write"], project=user.personal_project)
    created = restricted.post("/api/v1/agents", {"name": "r"}, format="json").json()
    assert ApiKey.objects.get(prefix=created["api_key"]).parent_id == restricted.api_key.pk


def test_the_agent_key_is_refused_on_every_other_route(api, user):
    """Every route x verb of the URL conf: an agent's key reaches only its views' agent_actions."""
    from django.urls import reverse

    from tests.test_api_coverage import FOREIGN_OBJECTS, api_routes

    _body, agent = register(api)
    kwargs_by_model: dict[Any, dict[str, Any]] = {}
    checked = 0
    for _route, pattern in api_routes():
        view = pattern.callback.cls
        actions = dict(
            getattr(pattern.callback, "actions", None)
            or {m: None for m in ("get", "post") if hasattr(view, m)}
        )
        names = list(pattern.pattern.regex.groupindex)
        kwargs: dict[str, Any] = {}
        if names:
            model = view.queryset.model
            if model not in kwargs_by_model:
                kwargs_by_model[model] = FOREIGN_OBJECTS[model](user)
            kwargs = {name: kwargs_by_model[model][name] for name in names}
        url = reverse(pattern.name, kwargs=kwargs)
        for method, action in actions.items():
            if action in getattr(view, "agent_actions", ()) or method == "head":
                continue
            response = getattr(agent, method)(url, {}, format="json")
            assert response.status_code == 403, (method, url, response.status_code)
            assert b'"code":"agent_key_forbidden"' in response.content, (method, url, response.content[:300])
            checked += 1
    assert checked > 40
