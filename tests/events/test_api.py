"""GET /api/v1/events: the list (filters, cursor, retention), the stream over the test client
(frames, resume, reset, caps), tenancy, scopes and stream tickets."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import Role
from core import holding
from events.models import Event, StreamTicket
from events.services import event_record
from tests.executions.test_streams import SSE, close, events, streamed
from tests.factories import TaskFactory
from tests.tasks.conftest import problem_of

pytestmark = pytest.mark.django_db
URL = "/api/v1/events"


def record(project: Any, type_: str = "task.updated", task: Any = None, **data: Any) -> Event:
    return event_record(type=type_, project=project, task=task, actor=None, data=data)


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [event["id"] for event in response.json()["results"]]


@pytest.fixture
def mine(user, project) -> list[Event]:
    task = TaskFactory(created_by=user)
    execution_id, agent_id, workflow_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    return [
        record(project, "task.created", task),
        record(project, "execution.queued", task, execution_id=str(execution_id)),
        record(project, "execution.finished", task, execution_id=str(execution_id)),
        record(project, "agent.paused", agent_id=str(agent_id)),
        record(project, "workflow.started", workflow_id=str(workflow_id)),
        record(project, "task.completed", task),
    ]


@pytest.fixture
def theirs(other_user) -> Event:
    return record(other_user.personal_project, "task.created", TaskFactory(created_by=other_user))


# --- The list ---------------------------------------------------------------------------------
def test_the_list_shows_the_callers_events_in_order_and_never_another_projects(api, mine, theirs):
    response = api.get(URL)
    assert ids(response) == [event.pk for event in mine]
    body = response.json()
    first = body["results"][0]
    assert set(first) == {"id", "type", "project", "task", "actor", "api_key", "data", "created_at"}
    assert first["project"] == str(mine[0].project_id)
    assert body["last_event_id"] == mine[-1].pk and body["has_more"] is False
    assert str(theirs.pk) not in [str(i) for i in ids(response)]


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        ("type=task.*", [0, 5]),
        ("type=execution.finished,agent.*", [2, 3]),
        ("type=*.started", [4]),
        ("type=nothing.matches", []),
    ],
)
def test_type_globs_filter(api, mine, query, wanted):
    assert ids(api.get(f"{URL}?{query}")) == [mine[i].pk for i in wanted]


def test_task_execution_agent_and_workflow_filters(api, mine):
    assert ids(api.get(f"{URL}?task={mine[0].task_id}")) == [mine[i].pk for i in (0, 1, 2, 5)]
    execution = mine[1].data["execution_id"]
    assert ids(api.get(f"{URL}?execution={execution}")) == [mine[1].pk, mine[2].pk]
    assert ids(api.get(f"{URL}?agent={mine[3].data['agent_id']}")) == [mine[3].pk]
    assert ids(api.get(f"{URL}?workflow={mine[4].data['workflow_id']}")) == [mine[4].pk]
    assert ids(api.get(f"{URL}?agent={uuid.uuid4()}")) == []
    both = f"{URL}?type=execution.*&execution={execution}&project={mine[0].project_id}"
    assert ids(api.get(both)) == [mine[1].pk, mine[2].pk]


def test_the_cursor_pages_through_and_stays_put_at_the_end(api, mine):
    page = api.get(f"{URL}?limit=4").json()
    assert [e["id"] for e in page["results"]] == [e.pk for e in mine[:4]]
    assert page["has_more"] is True and page["last_event_id"] == mine[3].pk
    rest = api.get(page["next"]).json()
    assert [e["id"] for e in rest["results"]] == [e.pk for e in mine[4:]]
    assert rest["has_more"] is False
    again = api.get(rest["next"]).json()
    assert again["results"] == [] and again["last_event_id"] == mine[-1].pk
    later = record(mine[0].project, "task.updated")
    assert [e["id"] for e in api.get(rest["next"]).json()["results"]] == [later.pk]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("type=Task.*", "type"),
        ("type=task.*,", "type"),
        ("type=task;drop", "type"),
        ("task=nope", "task"),
        ("agent=1", "agent"),
        ("after=-1", "after"),
        ("after=x", "after"),
        ("after=9223372036854775808", "after"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
    ],
)
def test_bad_filters_are_400_naming_the_field(api, query, field):
    body = problem_of(api.get(f"{URL}?{query}"), 400)
    assert field in {error["field"] for error in body["errors"]}


def test_a_cursor_past_the_newest_event_is_400_and_a_pruned_one_410(api, mine):
    body = problem_of(api.get(f"{URL}?after={mine[-1].pk + 1000}"), 400)
    assert body["errors"][0]["field"] == "after"
    pruned = mine[0].pk
    Event.objects.filter(pk=pruned).delete()  # what `manage.py prune` does to old events
    body = problem_of(api.get(f"{URL}?after={pruned}"), 410)
    assert body["code"] == "cursor_expired" and body["after"] == pruned


def test_last_event_id_is_the_pages_cursor_too(api, mine):
    assert ids(api.get(f"{URL}?after=0", HTTP_LAST_EVENT_ID=str(mine[3].pk))) == [e.pk for e in mine[4:]]
    body = problem_of(api.get(URL, HTTP_LAST_EVENT_ID="O"), 400)
    assert body["errors"][0]["field"] == "Last-Event-ID"


def test_another_projects_filter_is_400_and_reveals_nothing(api, other_user, theirs):
    body = problem_of(api.get(f"{URL}?project={other_user.personal_project.pk}"), 400)
    assert body["errors"][0]["field"] == "project"
    assert ids(api.get(f"{URL}?task={theirs.task_id}")) == []


# --- Tenancy and scopes -------------------------------------------------------------------------
def test_a_viewer_reads_the_projects_events(team, key_client, user):
    project, viewer = team(Role.VIEWER)
    event = record(project, "task.created")
    record(user.personal_project, "task.created")  # alice's own project: not the viewer's
    assert ids(key_client(viewer, ["event:read"]).get(URL)) == [event.pk]


def test_a_key_without_event_read_is_403(key_client, user, mine):
    client = key_client(user, ["task:read", "task:write", "execution:read"])
    body = problem_of(client.get(URL), 403)
    assert body["required_scope"] == "event:read"
    body = problem_of(client.post(f"{URL}/tickets", {}, format="json"), 403)
    assert body["required_scope"] == "event:read"
    assert problem_of(client.get(URL, HTTP_ACCEPT=SSE), 403)["required_scope"] == "event:read"


def test_event_write_is_no_scope(key_client, user):
    from accounts.scopes import SCOPES

    assert "event:read" in SCOPES and "event:write" not in SCOPES


def test_a_project_restricted_key_sees_only_its_project(team, key_client, user, mine):
    project, _ = team(Role.MEMBER)
    shared = record(project, "task.created")
    assert ids(key_client(user, ["event:read"], project=project).get(URL)) == [shared.pk]
    assert ids(key_client(user, ["event:read"]).get(URL)) == [*(e.pk for e in mine), shared.pk]


def test_no_credentials_is_401(client):
    assert client.get(URL).status_code == 401


# --- The stream over the test client ----------------------------------------------------------
def sse(client: Any, url: str = URL, **headers: Any) -> list[dict[str, Any]]:
    response = client.get(url, HTTP_ACCEPT=SSE, **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith(SSE)
    assert response["X-Accel-Buffering"] == "no" and response["Cache-Control"] == "no-cache"
    body = streamed(response)
    assert body.startswith("retry: 1000\n\n")
    return events(body)


@pytest.fixture
def short_streams(settings):
    settings.TASKFORGE_STREAM_MAX_SECONDS = 1


def test_the_stream_resumes_after_last_event_id_or_after(api, mine, theirs, short_streams):
    got = sse(api, f"{URL}?after={mine[1].pk}")
    assert [int(e["id"]) for e in got[:-1]] == [e.pk for e in mine[2:]]
    assert all("event" not in e for e in got[:-1])  # plain messages: an EventSource's onmessage
    assert got[-1]["event"] == "reconnect" and got[-1]["id"] == str(mine[-1].pk)
    assert got[0]["data"]["type"] == mine[2].type and got[0]["data"]["id"] == mine[2].pk
    resumed = sse(api, f"{URL}?after=0", HTTP_LAST_EVENT_ID=str(mine[3].pk))  # the header wins
    assert [int(e["id"]) for e in resumed[:-1]] == [e.pk for e in mine[4:]]
    filtered = sse(api, f"{URL}?after=0&type=task.*")
    assert [int(e["id"]) for e in filtered[:-1]] == [mine[0].pk, mine[5].pk]
    assert holding.slots_held_here() == 0


def test_a_stream_without_a_cursor_starts_with_what_happens_next(api, mine, short_streams):
    got = sse(api)
    assert [e["event"] for e in got] == ["reconnect"] and "id" not in got[0]


def test_a_pruned_resume_point_gets_reset_then_goes_on(api, mine, short_streams):
    pruned = mine[0].pk
    Event.objects.filter(pk=pruned).delete()
    got = sse(api, HTTP_LAST_EVENT_ID=str(pruned))
    assert got[0]["event"] == "reset"
    assert got[0]["data"] == {"reason": "cursor_expired", "last_event_id": pruned}
    assert got[0]["id"] == str(mine[-1].pk)  # where it goes on: what happens next
    assert [e["event"] for e in got[1:]] == ["reconnect"]
    for bad in ("x", "-1", "9223372036854775808"):
        body = problem_of(api.get(URL, HTTP_ACCEPT=SSE, HTTP_LAST_EVENT_ID=bad), 400)
        assert body["errors"][0]["field"] == "Last-Event-ID"
    body = problem_of(api.get(URL, HTTP_ACCEPT=SSE, HTTP_LAST_EVENT_ID=str(mine[-1].pk + 99)), 400)
    assert body["errors"][0]["field"] == "Last-Event-ID"


def test_the_stream_hides_another_projects_events(api, other_api, mine, theirs, short_streams):
    assert [int(e["id"]) for e in sse(api, f"{URL}?after=0")[:-1]] == [e.pk for e in mine]
    assert [int(e["id"]) for e in sse(other_api, f"{URL}?after=0")[:-1]] == [theirs.pk]


def test_streams_count_against_the_callers_cap(api, key_client, user, settings):
    settings.TASKFORGE_MAX_STREAMS_PER_PRINCIPAL = 1
    held = api.get(URL, HTTP_ACCEPT=SSE)
    assert held.status_code == 200
    refused = key_client(user).get(URL, HTTP_ACCEPT=SSE)
    assert problem_of(refused, 429)["concurrency_limit"] == "user"
    assert 1 <= int(refused["Retry-After"]) <= 10
    assert api.get(URL).status_code == 200  # a JSON page is not long-lived
    close(held)
    assert holding.slots_held_here() == 0


# --- Tickets ---------------------------------------------------------------------------------
def make_ticket(client: Any, **filters: Any) -> dict[str, Any]:
    response = client.post(f"{URL}/tickets", filters, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_a_ticket_opens_the_stream_once_with_its_filters(api, client, mine, short_streams):
    ticket = make_ticket(api, type="execution.*")
    assert ticket["ticket"].startswith("evt_") and ticket["filters"] == {"type": ["execution.*"]}
    assert ticket["stream_url"].endswith(f"/api/v1/events?ticket={ticket['ticket']}")
    # No Authorization header: the browser's EventSource.
    got = sse(client, f"{URL}?ticket={ticket['ticket']}&after=0")
    assert [int(e["id"]) for e in got[:-1]] == [mine[1].pk, mine[2].pk]
    again = client.get(f"{URL}?ticket={ticket['ticket']}", HTTP_ACCEPT=SSE)
    assert problem_of(again, 401)["code"] == "invalid_ticket"
    assert StreamTicket.objects.get().used_at is not None
    assert ticket["ticket"] not in str(list(StreamTicket.objects.values_list("digest", flat=True)))


def test_an_expired_or_unknown_ticket_is_401(api, client):
    ticket = make_ticket(api)
    StreamTicket.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    for raw in (ticket["ticket"], "evt_unknown", "nope"):
        assert problem_of(client.get(f"{URL}?ticket={raw}", HTTP_ACCEPT=SSE), 401)["code"] == "invalid_ticket"


def test_a_ticket_keeps_to_its_key_and_its_filters(team, key_client, user, client, mine, short_streams):
    project, _ = team(Role.MEMBER)
    shared = record(project, "task.created")
    narrow = key_client(user, ["event:read"], project=project)
    ticket = make_ticket(narrow)
    assert [int(e["id"]) for e in sse(client, f"{URL}?ticket={ticket['ticket']}&after=0")[:-1]] == [shared.pk]
    # Another project's data cannot be asked for, neither when making it nor when using it.
    body = problem_of(
        narrow.post(f"{URL}/tickets", {"project": str(user.personal_project.pk)}, format="json"), 400
    )
    assert body["errors"][0]["field"] == "project"
    ticket = make_ticket(narrow)
    widened = client.get(
        f"{URL}?ticket={ticket['ticket']}&project={user.personal_project.pk}", HTTP_ACCEPT=SSE
    )
    assert problem_of(widened, 400)["errors"][0]["field"] == "project"


def test_a_ticket_of_a_revoked_key_or_for_a_page_is_refused(key_client, user, client):
    from accounts.services import api_key_revoke

    owner = key_client(user, ["event:read"])
    ticket = make_ticket(owner)
    assert problem_of(client.get(f"{URL}?ticket={ticket['ticket']}"), 400)["errors"][0]["field"] == "ticket"
    ticket = make_ticket(owner)
    api_key_revoke(api_key=owner.api_key)
    assert (
        problem_of(client.get(f"{URL}?ticket={ticket['ticket']}", HTTP_ACCEPT=SSE), 401)["code"]
        == "invalid_ticket"
    )


def test_a_bad_ticket_filter_is_400(api):
    body = problem_of(api.post(f"{URL}/tickets", {"type": "BAD"}, format="json"), 400)
    assert body["errors"][0]["field"] == "type"
    assert not StreamTicket.objects.exists()


def test_an_idle_stream_sends_keep_alives_and_ends_when_its_key_is_revoked(
    key_client, user, mine, short_streams, monkeypatch
):
    from accounts.services import api_key_revoke
    from events import stream

    monkeypatch.setattr(stream, "KEEP_ALIVE_SECONDS", 0.2)
    client = key_client(user, ["event:read"])
    body = streamed(client.get(URL, HTTP_ACCEPT=SSE))
    assert ": keep-alive\n\n" in body and events(body)[-1]["event"] == "reconnect"
    response = client.get(f"{URL}?after=0", HTTP_ACCEPT=SSE)
    api_key_revoke(api_key=client.api_key)  # while the stream is open
    got = events(streamed(response))
    assert [int(e["id"]) for e in got] == [e.pk for e in mine]  # then it ended: no reconnect


def test_a_ticket_cannot_make_another_ticket(api, client):
    ticket = make_ticket(api)
    response = client.post(f"{URL}/tickets?ticket={ticket['ticket']}", {}, format="json")
    assert response.status_code == 401
    assert StreamTicket.objects.count() == 1 and StreamTicket.objects.get().used_at is None


def test_an_empty_filter_is_400_not_no_filter(api):
    for name in ("workflow", "type", "task"):
        assert problem_of(api.get(f"{URL}?{name}="), 400)["errors"][0]["field"] == name
