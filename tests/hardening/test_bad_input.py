"""Bad input on every write, list and detail route (walked from the URL conf): always an RFC
9457 4xx, never a 500, and nothing changed in the database (row counts, events, the object).

Malformed JSON, invalid UTF-8, the wrong content type, a body over the limit, JSON nested
deeper than the parser can follow, nulls / huge strings / negative and huge numbers / wrong
types in every documented field, unknown fields, bad filters, sorts and pagination, bad ids;
and a Hypothesis property over arbitrary JSON bodies for the task endpoints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.test import override_settings
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from tests.factories import make_key
from tests.hardening.test_authz_matrix import Operation, World, operations

pytestmark = pytest.mark.django_db

WRITE_METHODS = ("post", "put", "patch")
MODELS = [
    "tasks.Task",
    "events.Event",
    "tasks.Note",
    "executions.Execution",
    "accounts.Project",
    "accounts.Membership",
    "accounts.ApiKey",
    "webhooks.Subscription",
    "webhooks.Delivery",
]


def snapshot() -> dict[str, Any]:
    """Row counts of every model the API writes, and the newest update of each."""
    state: dict[str, Any] = {}
    for label in MODELS:
        model = apps.get_model(label)
        state[label] = model.objects.count()
        if any(f.name == "updated_at" for f in model._meta.fields):
            state[label + ".updated"] = (
                model.objects.order_by("-updated_at").values_list("updated_at", flat=True)[:1].first()
            )
    return state


_SCHEMA: dict[str, Any] = {}


def openapi() -> dict[str, Any]:
    if not _SCHEMA:
        _SCHEMA.update(SchemaGenerator().get_schema(request=None, public=True))
    return _SCHEMA


def body_properties(op: Operation, url: str) -> dict[str, Any]:
    """The documented request-body properties of ``op`` at ``url``, from the live schema."""
    schema = openapi()
    matches = [
        documented
        for documented in schema["paths"]
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", documented), url)
    ]
    assert matches, f"{url} not in the schema"
    documented = min(matches, key=lambda path: path.count("{"))  # claim-next over {id}
    operation = schema["paths"][documented].get(op.method)
    if not operation or "requestBody" not in operation:
        return {}
    ref = operation["requestBody"]["content"]["application/json"]["schema"]
    component = schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    return dict(component.get("properties", {}))


def assert_problem(response: Any, context: str, allowed: tuple[int, ...] = ()) -> None:
    code = response.status_code
    assert code < 500, f"{context}: {code} {response.content[:300]!r}"
    if code in allowed:
        return
    assert 400 <= code < 500, f"{context}: {code} {response.content[:300]!r}"
    assert response["Content-Type"] == "application/problem+json", context
    body = response.json()
    for key in ("type", "title", "status", "detail", "instance", "request_id"):
        assert key in body, (context, body)
    assert body["status"] == code


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def alice(world: World) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {make_key(world.alice)[1]}")
    return client


def write_targets(world: World) -> Iterator[tuple[Operation, str]]:
    for op in operations():
        if op.method in WRITE_METHODS:
            url, _ = world.url(op)
            yield op, url


RAW_BODIES: list[tuple[str, bytes, str, int]] = [
    ("malformed JSON", b'{"name": ', "application/json", 400),
    ("trailing garbage", b'{"name": "x"} trailing', "application/json", 400),
    ("invalid UTF-8", b'{"name": "\xff\xfe"}', "application/json", 400),
    ("NaN", b'{"name": "x", "priority": NaN}', "application/json", 400),
    ("wrong content type", b"name=x", "application/x-www-form-urlencoded", 415),
    ("text/plain", b'{"name": "x"}', "text/plain", 415),
    ("deep JSON", b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
    ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json", 400),
    ("a JSON string, not an object", b'"just a string"', "application/json", 400),
    ("a JSON array", b"[1, 2, 3]", "application/json", 400),
]


@pytest.mark.parametrize(
    ("label", "raw", "content_type", "status"), RAW_BODIES, ids=[b[0] for b in RAW_BODIES]
)
def test_raw_bodies_are_refused_with_a_problem_and_change_nothing(
    world: World, alice: APIClient, label: str, raw: bytes, content_type: str, status: int
) -> None:
    before = snapshot()
    checked = 0
    for op, url in write_targets(world):
        before = snapshot()
        if not body_properties(op, url):
            continue  # bodiless actions (release, rotate-secret, test, replay) never parse one
        response = alice.generic(op.method.upper(), url, raw, content_type=content_type)
        assert_problem(response, f"{label}: {op.method.upper()} {url}")
        if label not in ("a JSON string, not an object", "a JSON array"):
            assert response.status_code == status, f"{label}: {op.method.upper()} {url}"
        assert snapshot() == before, f"{label}: {op.method.upper()} {url} changed the database"
        checked += 1
    assert checked >= 10


@override_settings(TASKFORGE_MAX_BODY_BYTES=64 * 1024)
def test_a_body_over_the_limit_is_413_everywhere(world: World, alice: APIClient) -> None:
    raw = json.dumps({"name": "x", "description": "y" * (65 * 1024)}).encode()
    for op, url in write_targets(world):
        if not body_properties(op, url):
            continue  # an action without a body never reads it
        before = snapshot()
        response = alice.generic(op.method.upper(), url, raw, content_type="application/json")
        assert_problem(response, f"{op.method.upper()} {url}")
        assert response.status_code == 413, f"{op.method.upper()} {url}: {response.status_code}"
        assert snapshot() == before


def bad_values(prop: dict[str, Any]) -> list[Any]:
    """Values outside what ``prop`` documents."""
    values: list[Any] = [None] if not prop.get("nullable") else []
    kind = prop.get("type")
    if kind == "string" or "enum" in prop or "allOf" in prop or "oneOf" in prop:
        values += [12345, ["x"], {"x": 1}, True, "\x00", "x" * 1_100_000, "\ud800"]
        if "enum" in prop or "allOf" in prop or "oneOf" in prop:
            values.append("not-a-choice")
        if prop.get("format") == "uuid":
            values += ["not-a-uuid", "00000000-0000-0000-0000-00000000000g"]
        if prop.get("format") == "date-time":
            values += ["yesterday", "2026-13-45T99:99:99Z"]
    if kind == "integer":
        values += [-1, -(2**63), 2**63, 10**30, 1.5, "7", True, [], {}]
    if kind == "number":
        values += [-1, 1e308, "7", True, []]
    if kind == "boolean":
        values += ["true", 1, 0, "yes", []]
    if kind == "array":
        values += ["a", {"x": 1}, 5, [None], [12345], ["x" * 100_000] * 40]
    if kind == "object":
        values += ["a", [1], 5, {"\x00": 1}, {"k": "\x00"}]
    return values


def test_every_documented_field_refuses_bad_values(world: World, alice: APIClient) -> None:
    checked = 0
    for op, url in write_targets(world):
        properties = body_properties(op, url)
        for field, prop in properties.items():
            prop = {**prop, **(prop.get("allOf", [{}])[0] if "allOf" in prop else {})}
            for value in bad_values(prop):
                before = snapshot()
                response = alice.generic(
                    op.method.upper(), url, json.dumps({field: value}), content_type="application/json"
                )
                context = f"{op.method.upper()} {url} {field}={str(value)[:40]!r}"
                # 404/409: the object's state refuses before the body is read; still a problem.
                assert_problem(response, context)
                assert snapshot() == before, f"{context} changed the database"
                checked += 1
    assert checked > 300


def test_unknown_fields_are_ignored_never_stored(world: World, alice: APIClient) -> None:
    from tasks.models import Task

    created = alice.post(
        "/api/v1/tasks", {"name": "plain", "zzz_unknown": 1, "__class__": "x"}, format="json"
    )
    assert created.status_code == 201
    assert "zzz_unknown" not in created.json() and "zzz_unknown" not in Task.objects.get().metadata


def test_bad_ids_are_404_problems(world: World, alice: APIClient) -> None:
    bad_ids = ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "1" * 500, "%00", "..", "' OR 1=1 --"]
    checked = 0
    for op in operations():
        if not op.kwarg_names:
            continue
        url, kwargs = world.url(op)
        for bad in bad_ids:
            for name in op.kwarg_names:
                wrong = url.replace(str(kwargs[name]), bad, 1)
                response = getattr(alice, op.method)(wrong)
                if op.method == "head":
                    assert response.status_code == 404
                    continue
                assert_problem(response, f"{op.method.upper()} {wrong}")
                assert response.status_code in (404, 405), (wrong, response.status_code)
                checked += 1
    assert checked > 100


LIST_QUERIES = [
    "status=bogus",
    "status=pending,bogus",
    "sort=bogus",
    "order=sideways",
    "created_after=yesterday",
    "created_before=2026-02-30",
    "priority=abc",
    "priority=99",
    "priority_min=-1",
    "tag=not%20a%20tag",
    "archived=maybe",
    "claimed=perhaps",
    "project=not-a-uuid",
    "limit=0",
    "limit=101",
    "limit=abc",
    "page=0",
    "page=-1",
    "page=abc",
    "page=99999999999999999999999",
    "offset=-1",
    "page=1&offset=0",
    "cursor=garbage",
    "cursor=e30",  # base64 of {}
    "pagination=sideways",
    "pagination=cursor&page=2",
    "wait=abc",
    "format=",
    "page=",
    "limit=",
    "pagination=",
    "created_after=0223-09-23T03%3A21%3A42-18%3A22",  # PostgreSQL refuses offsets past 15:59
    "finished_after=0001-01-01T00%3A00%3A00-18%3A48",
]


@pytest.mark.parametrize(
    "url", ["/api/v1/tasks", "/api/v1/executions", "/api/v1/projects", "/api/v1/webhooks", "/api/v1/api-keys"]
)
def test_bad_filters_sorts_and_pages_are_400_never_an_empty_list(
    world: World, alice: APIClient, url: str
) -> None:
    refused = 0
    for query in LIST_QUERIES:
        response = alice.get(f"{url}?{query}")
        if response.status_code == 200:
            # Only a parameter this list does not take may pass (ignored); never page params.
            name = query.split("=", 1)[0]
            assert name not in ("limit", "page", "offset", "format"), (url, query)
            continue
        assert_problem(response, f"GET {url}?{query}")
        assert response.status_code in (400, 404), (url, query, response.status_code)
        refused += 1
    assert refused >= 8


def test_page_and_offset_together_is_a_400(alice: APIClient) -> None:
    response = alice.get("/api/v1/tasks?page=1&offset=0")
    assert_problem(response, "page+offset")
    assert response.status_code == 400


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
TASK_FIELDS = [
    "name",
    "script_type",
    "script_content",
    "priority",
    "tags",
    "metadata",
    "timeout_seconds",
    "status",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(st.sampled_from(TASK_FIELDS), JSON, max_size=5),
    method=st.sampled_from(["post", "patch"]),
)
def test_arbitrary_json_never_500s_and_refusals_change_nothing(
    world: World, alice: APIClient, body: Any, method: str
) -> None:
    from tasks.models import Task

    task = Task.objects.filter(project=world.project).first() or Task.objects.create(
        project=world.project, created_by=world.alice, name="target"
    )
    url = "/api/v1/tasks" if method == "post" else f"/api/v1/tasks/{task.pk}"
    before = snapshot()
    response = getattr(alice, method)(url, body, format="json")
    assert response.status_code < 500, (body, response.content[:300])
    if response.status_code >= 400:
        assert_problem(response, f"{method} {body!r}")
        assert snapshot() == before, body


def test_a_chunked_body_without_length_is_cut_at_the_limit() -> None:
    """No Content-Length (chunked): the middleware cannot see the size; the parser stops."""
    import io

    from core.parsers import JSONParser, PayloadTooLarge

    with override_settings(TASKFORGE_MAX_BODY_BYTES=1024):
        stream = io.BytesIO(b'{"name": "' + b"x" * 10_000 + b'"}')
        with pytest.raises(PayloadTooLarge):
            JSONParser().parse(stream, "application/json", {})
        assert stream.tell() == 1025  # read no further than the limit


def test_json_nested_past_the_depth_limit_is_a_400(alice: APIClient) -> None:
    body = {"name": "deep", "metadata": {}}
    node = body["metadata"]
    for _ in range(100):
        node["n"] = {}
        node = node["n"]
    response = alice.post("/api/v1/tasks", body, format="json")
    assert_problem(response, "deep metadata")
    assert response.status_code == 400
