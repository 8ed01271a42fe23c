"""POST /hooks/{id}: each auth mode, the filters, the mapping and each delivery once, as a
sender (and an attacker) would call it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from executions.models import Execution, ExecutionStatus
from executions.serializers import ExecutionDetailSerializer
from tasks.models import Task
from templates_app import services as template_services
from tests.triggers.conftest import PUSH, body_of, github_headers, standard_headers
from triggers import services
from triggers.models import Delivery, Outcome
from vault.services import secret_create

pytestmark = pytest.mark.django_db


def nothing_created() -> bool:
    return not Task.objects.exists() and not Execution.objects.exists()


# --- GitHub ---------------------------------------------------------------------------------------
def test_a_github_push_signed_like_github_starts_the_template(make_trigger, post_hook):
    trigger, secret = make_trigger("github", mapping={"branch": "$.ref", "env": "=production"})
    body = body_of(PUSH)
    response = post_hook(trigger, body, github_headers(secret, body, delivery="d-1"))
    assert response.status_code == 202, response.content
    answer = response.json()
    task = Task.objects.get(pk=answer["task"])
    execution = Execution.objects.get(pk=answer["execution"])
    assert execution.task_id == task.pk
    assert execution.trigger == "hook"
    assert task.parameters == {"branch": "refs/heads/main", "replicas": 1, "env": "production"}
    assert task.template_id == trigger.template_id
    delivery = Delivery.objects.get(pk=answer["delivery"])
    assert (delivery.outcome, delivery.event, delivery.dedupe_key) == (Outcome.ACCEPTED, "push", "d-1")
    assert delivery.task_id == task.pk and delivery.execution_id == execution.pk
    assert "x-hub-signature-256" not in delivery.headers
    assert delivery.headers["x-github-event"] == "push"
    assert json.loads(delivery.body) == PUSH


def test_a_wrong_signature_is_401_and_creates_nothing(make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    headers = github_headers("not-the-secret", body)
    response = post_hook(trigger, body, headers)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert secret not in response.content.decode()
    assert nothing_created() and not Delivery.objects.exists()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: ({k: v for k, v in h.items() if k != "X-Hub-Signature-256"}, b),  # missing
        lambda h, b: ({**h, "X-Hub-Signature-256": "sha1=" + "0" * 40}, b),  # another scheme
        lambda h, b: ({**h, "X-Hub-Signature-256": h["X-Hub-Signature-256"].upper()}, b),
        lambda h, b: (h, b + b" "),  # the body changed after signing
        lambda h, b: (h, b.replace(b"main", b"prod")),
    ],
)
def test_any_tampering_is_401(make_trigger, post_hook, tamper):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    headers, sent = tamper(github_headers(secret, body), body)
    assert post_hook(trigger, sent, headers).status_code == 401
    assert nothing_created() and not Delivery.objects.exists()


def test_the_same_delivery_twice_makes_one_run_and_answers_the_first_answer(make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    headers = github_headers(secret, body, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    first = post_hook(trigger, body, headers)
    second = post_hook(trigger, body, headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second["Taskforge-Duplicate-Delivery"] == "true"
    assert Task.objects.count() == Execution.objects.count() == 1
    assert Delivery.objects.get().duplicates == 1


def test_a_filtered_event_answers_200_ignored_and_runs_nothing(make_trigger, post_hook):
    trigger, secret = make_trigger("github", filters={"events": ["push"]})
    body = body_of({"action": "opened", "issue": {"number": 1}})
    response = post_hook(trigger, body, github_headers(secret, body, event="issues"))
    assert response.status_code == 200
    assert response.json()["ignored"] == "event 'issues' is not one of push"
    assert nothing_created()
    delivery = Delivery.objects.get()
    assert (delivery.outcome, delivery.event) == (Outcome.IGNORED, "issues")


@pytest.mark.parametrize(
    ("pattern", "ref", "runs"),
    [
        ("main", "refs/heads/main", True),
        ("main", "refs/heads/maintenance", False),
        ("release/*", "refs/heads/release/1.2", True),
        ("release/*", "refs/heads/feature/x", False),
        ("refs/tags/v*", "refs/tags/v1.0", True),
        ("v*", "refs/heads/v1", True),
    ],
)
def test_the_ref_filter_globs_the_ref_or_the_branch(make_trigger, post_hook, pattern, ref, runs):
    trigger, secret = make_trigger("github", filters={"ref": pattern})
    body = body_of({**PUSH, "ref": ref})
    response = post_hook(trigger, body, github_headers(secret, body))
    assert response.status_code == (202 if runs else 200), response.content
    assert Task.objects.exists() is runs


def test_match_filters_compare_json_values_exactly(make_trigger, post_hook):
    trigger, secret = make_trigger(
        "github", filters={"match": {"$.repository.full_name": "acme/api", "$.repository.private": True}}
    )
    other = body_of({**PUSH, "repository": {"full_name": "acme/web", "private": True}})
    response = post_hook(trigger, other, github_headers(secret, other))
    assert response.status_code == 200
    assert response.json()["ignored"] == '$.repository.full_name is "acme/web", not "acme/api"'
    stringly = body_of({**PUSH, "repository": {"full_name": "acme/api", "private": "true"}})
    assert post_hook(trigger, stringly, github_headers(secret, stringly)).status_code == 200
    body = body_of(PUSH)
    assert post_hook(trigger, body, github_headers(secret, body)).status_code == 202


def test_github_ping_is_answered_and_runs_nothing(make_trigger, post_hook):
    trigger, secret = make_trigger("github", filters={"events": ["push"]})
    body = body_of({"zen": "Design for failure.", "hook_id": 1})
    response = post_hook(trigger, body, github_headers(secret, body, event="ping"))
    assert response.status_code == 200
    assert response.json()["ignored"] == "ping"
    assert nothing_created()


# --- Standard Webhooks ----------------------------------------------------------------------------
def test_standard_webhooks_signed_by_the_library_is_accepted(make_trigger, post_hook):
    trigger, secret = make_trigger("standard", mapping={"branch": "$.data.branch"})
    assert secret.startswith("whsec_")
    body = body_of({"type": "build.finished", "data": {"branch": "main"}})
    response = post_hook(trigger, body, standard_headers(secret, body, message_id="msg_1"))
    assert response.status_code == 202, response.content
    assert Task.objects.get().parameters["branch"] == "main"
    assert Delivery.objects.get().dedupe_key == "msg_1"


def test_standard_webhooks_signed_with_another_secret_is_refused(make_trigger, post_hook):
    from triggers.models import generate_secret

    trigger, _secret = make_trigger("standard", mapping={"branch": "$.data.branch"})
    body = body_of({"data": {"branch": "main"}})
    response = post_hook(trigger, body, standard_headers(generate_secret("standard"), body))
    assert response.status_code == 401
    assert nothing_created() and not Delivery.objects.exists()


@pytest.mark.parametrize("shift", [timedelta(minutes=-6), timedelta(minutes=6), timedelta(days=-400)])
def test_a_signed_timestamp_outside_five_minutes_is_401(make_trigger, post_hook, shift):
    """A captured delivery replayed later (or one dated ahead) is refused even though its
    signature is genuine."""
    trigger, secret = make_trigger("standard", mapping={"branch": "$.b"})
    body = body_of({"b": "main"})
    headers = standard_headers(secret, body, at=datetime.now(tz=UTC) + shift)
    response = post_hook(trigger, body, headers)
    assert response.status_code == 401
    assert "timestamp" in response.json()["detail"]
    assert nothing_created()


def test_a_timestamp_within_tolerance_is_accepted(make_trigger, post_hook):
    trigger, secret = make_trigger("standard", mapping={"branch": "$.b"})
    body = body_of({"b": "main"})
    headers = standard_headers(secret, body, at=datetime.now(tz=UTC) - timedelta(minutes=4))
    assert post_hook(trigger, body, headers).status_code == 202


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_webhooks_missing_a_header_is_401(make_trigger, post_hook, drop):
    trigger, secret = make_trigger("standard", mapping={"branch": "$.b"})
    body = body_of({"b": "main"})
    headers = {k: v for k, v in standard_headers(secret, body).items() if k != drop}
    response = post_hook(trigger, body, headers)
    assert response.status_code == 401
    assert drop in response.json()["detail"]


def test_a_signature_for_another_message_id_is_refused(make_trigger, post_hook):
    """The id is signed: a sender's signature cannot be reused under a fresh id to dodge dedupe."""
    trigger, secret = make_trigger("standard", mapping={"branch": "$.b"})
    body = body_of({"b": "main"})
    headers = standard_headers(secret, body, message_id="msg_a")
    assert post_hook(trigger, body, headers).status_code == 202
    assert post_hook(trigger, body, {**headers, "webhook-id": "msg_b"}).status_code == 401
    assert Task.objects.count() == 1


# --- GitLab and tokens ----------------------------------------------------------------------------
def test_gitlab_token_and_event_uuid(make_trigger, post_hook):
    trigger, secret = make_trigger("gitlab", filters={"events": ["Push Hook"]})
    body = body_of({**PUSH, "object_kind": "push"})
    headers = {"X-Gitlab-Token": secret, "X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "u-1"}
    assert post_hook(trigger, body, headers).status_code == 202
    assert post_hook(trigger, body, headers).status_code == 202  # GitLab's retry: the first answer
    assert Task.objects.count() == 1
    assert post_hook(trigger, body, {**headers, "X-Gitlab-Token": secret[:-1]}).status_code == 401
    assert post_hook(trigger, body, {**headers, "X-Gitlab-Token": ""}).status_code == 401
    tag = {**headers, "X-Gitlab-Event": "Tag Push Hook", "X-Gitlab-Event-UUID": "u-2"}
    assert post_hook(trigger, body, tag).json() == {
        "ignored": "event 'Tag Push Hook' is not one of Push Hook",
        "delivery": str(Delivery.objects.get(dedupe_key="u-2").pk),
    }


def test_bearer_token(make_trigger, post_hook):
    trigger, secret = make_trigger("token", mapping={"branch": "$.branch"}, dedupe_path="$.build.id")
    body = body_of({"branch": "main", "build": {"id": 42}})
    assert post_hook(trigger, body, {"Authorization": f"Bearer {secret}"}).status_code == 202
    assert post_hook(trigger, body, {"Authorization": f"Bearer {secret}"}).status_code == 202
    assert Task.objects.count() == 1  # the same build id: once
    assert Delivery.objects.get().dedupe_key == "42"
    assert post_hook(trigger, body, {"Authorization": f"Token {secret}"}).status_code == 401
    assert post_hook(trigger, body, {}).status_code == 401


def test_token_in_url(make_trigger, post_hook):
    trigger, secret = make_trigger("token_in_url", mapping={"branch": "$.branch"})
    body = body_of({"branch": "main"})
    assert post_hook(trigger, body, {}, query=f"?token={secret}").status_code == 202
    assert post_hook(trigger, body, {}, query=f"?token={secret}").status_code == 202
    assert post_hook(trigger, body, {}, query="?token=guess").status_code == 401
    assert post_hook(trigger, body, {}).status_code == 401
    assert Task.objects.count() == 2  # no delivery id: every call is a new delivery


def test_a_rotated_secret_keeps_working_through_its_grace_only(make_trigger, post_hook, user):
    trigger, old = make_trigger("github")
    trigger, new = services.trigger_rotate_secret(trigger=trigger, actor=user)
    pushes = iter(body_of({**PUSH, "after": f"{n:040x}"}) for n in range(10))

    def send(secret: str) -> int:
        body = next(pushes)
        return post_hook(trigger, body, github_headers(secret, body)).status_code

    assert send(old) == 202
    assert send(new) == 202
    trigger, newest = services.trigger_rotate_secret(trigger=trigger, actor=user)
    assert send(old) == 401  # dropped at once
    assert send(new) == 202
    trigger.previous_secret_expires_at = datetime.now(tz=UTC) - timedelta(seconds=1)
    trigger.save(update_fields=["previous_secret_expires_at"])
    assert send(new) == 401
    assert send(newest) == 202
    assert Task.objects.count() == 4


def test_secrets_are_encrypted_at_rest(make_trigger):
    from django.db import connection

    trigger, secret = make_trigger("github")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT secret FROM triggers_trigger WHERE id = %s",
            [trigger.pk.hex if connection.vendor == "sqlite" else trigger.pk],
        )
        stored = cursor.fetchone()[0]
    assert secret not in stored and stored.startswith("gAAAA")  # a Fernet token


# --- what is refused before anything else ----------------------------------------------------------
def test_unknown_malformed_and_disabled_answer_the_same_404(make_trigger, post_hook, user):
    trigger, secret = make_trigger("github")
    services.trigger_update(trigger=trigger, actor=user, fields={"enabled": False})
    body = body_of(PUSH)
    answers = []
    for target in (trigger, str(uuid.uuid4()), "not-a-uuid", "%00"):
        response = post_hook(target, body, github_headers(secret, body))
        assert response.status_code == 404
        data = response.json()
        answers.append((data["detail"], data["type"], sorted(data)))
    assert len(set(map(str, answers))) == 1
    assert nothing_created() and not Delivery.objects.exists()


def test_an_oversize_body_is_413(make_trigger, post_hook):
    trigger, secret = make_trigger("github", max_body_bytes=2048)
    body = body_of({**PUSH, "padding": "x" * 4096})
    response = post_hook(trigger, body, github_headers(secret, body))
    assert response.status_code == 413
    assert response.json()["max_bytes"] == 2048
    assert nothing_created() and not Delivery.objects.exists()


def test_only_post(make_trigger, client):
    trigger, _ = make_trigger("github")
    response = client.get(f"/hooks/{trigger.pk}")
    assert response.status_code == 405 and response["Allow"] == "POST"


def test_no_csrf_no_session_needed(make_trigger, user):
    from django.test import Client

    trigger, secret = make_trigger("github")
    client = Client(enforce_csrf_checks=True)
    body = body_of(PUSH)
    from tests.triggers.conftest import as_meta

    response = client.post(
        f"/hooks/{trigger.pk}",
        data=body,
        content_type="application/json",
        **{k: v for k, v in as_meta(github_headers(secret, body)).items() if k != "CONTENT_TYPE"},
    )
    assert response.status_code == 202


def test_a_body_that_is_not_json_is_400_recorded_and_runs_nothing(make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    for body in (b"payload=%7B%7D", b"\xff\xfe not utf-8", b'"a string"', b"[" * 100_000):
        response = post_hook(trigger, body, github_headers(secret, body))
        assert response.status_code == 400, body[:20]
        assert response["Content-Type"] == "application/problem+json"
    assert nothing_created()
    assert set(Delivery.objects.values_list("outcome", flat=True)) == {Outcome.REJECTED}


def test_the_trigger_rate_limit_is_429(make_trigger, post_hook):
    trigger, secret = make_trigger("github", rate_limit="2/1m")
    bodies = [body_of({**PUSH, "after": str(n) * 40}) for n in range(4)]
    codes = [post_hook(trigger, body, github_headers(secret, body)).status_code for body in bodies[:3]]
    assert codes == [202, 202, 429]
    limited = post_hook(trigger, bodies[3], github_headers(secret, bodies[3]))
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1
    assert Task.objects.count() == 2


def test_refused_attempts_are_throttled_per_address(make_trigger, post_hook, settings):
    settings.TASKFORGE_RATE_LIMIT_ANONYMOUS = "3/1m"
    trigger, _secret = make_trigger("github")
    body = body_of(PUSH)
    codes = [post_hook(trigger, body, github_headers("guess", body)).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]


# --- the mapping -------------------------------------------------------------------------------------
def test_bad_mapped_values_are_one_422_naming_each_parameter_and_its_source(make_trigger, post_hook):
    trigger, secret = make_trigger(
        "github",
        mapping={"branch": "$.commits", "replicas": "header:X-Replicas", "env": "$.repository.full_name"},
    )
    body = body_of(PUSH)
    response = post_hook(trigger, body, {**github_headers(secret, body), "X-Replicas": "many"})
    assert response.status_code == 422, response.content
    errors = {e["field"]: e for e in response.json()["errors"]}
    assert errors["parameters.replicas"]["source"] == "header:X-Replicas"
    assert errors["parameters.replicas"]["code"] == "invalid_type"
    assert errors["parameters.branch"]["source"] == "$.commits"
    assert errors["parameters.env"]["source"] == "$.repository.full_name"
    assert errors["parameters.env"]["code"] == "invalid_choice"
    assert nothing_created()
    assert Delivery.objects.get().outcome == Outcome.REJECTED


def test_a_required_parameter_the_payload_lacks_is_422(make_trigger, post_hook):
    trigger, secret = make_trigger("github", mapping={"branch": "$.nowhere"})
    body = body_of(PUSH)
    response = post_hook(trigger, body, github_headers(secret, body))
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["field"], error["code"], error["source"]) == ("parameters.branch", "required", "$.nowhere")


def test_headers_and_literals_are_typed_like_the_command_line(make_trigger, post_hook):
    trigger, secret = make_trigger(
        "github", mapping={"branch": "$.ref", "replicas": "header:X-Replicas", "env": "=production"}
    )
    body = body_of(PUSH)
    response = post_hook(trigger, body, {**github_headers(secret, body), "X-Replicas": "3"})
    assert response.status_code == 202
    assert Task.objects.get().parameters == {"branch": "refs/heads/main", "replicas": 3, "env": "production"}


def test_a_secret_reference_reaches_the_run_and_never_its_output(
    make_trigger, post_hook, inline_worker, user, project
):
    """The mapping names a project secret: the run receives its value at claim (masked in what
    it prints), the task and the delivery keep only the reference."""
    secret_create(project=project, actor=user, name="DEPLOY_TOKEN", value="tok-7f3a9c")
    template = template_services.template_create(
        project=project,
        actor=user,
        slug="show-token",
        name="Show token",
        name_pattern="show",
        script_type="bash",
        # The value itself (masked when stored) and reversed (proves the script had it).
        script='printf "%s|%s" "$PARAM_TOKEN" "$(printf %s "$PARAM_TOKEN" | rev)"',
        parameters=[{"name": "token", "type": "string", "secret": True}],
    )
    trigger, secret = make_trigger("github", template=template, mapping={"token": {"secret": "DEPLOY_TOKEN"}})
    body = body_of(PUSH)
    response = post_hook(trigger, body, github_headers(secret, body))
    assert response.status_code == 202, response.content
    assert "tok-7f3a9c" not in str(Delivery.objects.values().get())
    assert inline_worker.run_pending() == 1
    execution = Execution.objects.get()
    assert execution.status == ExecutionStatus.SUCCEEDED, ExecutionDetailSerializer(execution).data
    assert execution.parameters["token"] == {"secret": "DEPLOY_TOKEN"}
    assert ExecutionDetailSerializer(execution).data["stdout"] == "***|c9a3f7-kot"


@pytest.fixture
def marker() -> Path:
    path = Path(f"/tmp/pwned-{uuid.uuid4().hex}")  # noqa: S108 - the point is to prove it never appears
    yield path
    path.unlink(missing_ok=True)


def test_hostile_payload_values_reach_the_script_only_quoted(make_trigger, post_hook, inline_worker, marker):
    trigger, secret = make_trigger("github")
    ref = f"refs/heads/x;touch {marker};$(touch {marker})`touch {marker}`'\""
    body = body_of({**PUSH, "ref": ref})
    response = post_hook(trigger, body, github_headers(secret, body))
    assert response.status_code == 202, response.content
    assert inline_worker.run_pending() == 1
    execution = Execution.objects.get()
    assert execution.status == ExecutionStatus.SUCCEEDED, ExecutionDetailSerializer(execution).data
    assert ExecutionDetailSerializer(execution).data["stdout"] == f"{ref}|1|staging"
    assert not marker.exists()


def test_huge_and_many_headers_are_stored_bounded(make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    extra = {f"X-Junk-{i}": "v" * 5000 for i in range(300)}
    response = post_hook(trigger, body, {**github_headers(secret, body), **extra})
    assert response.status_code == 202
    stored = Delivery.objects.get().headers
    assert len(json.dumps(stored)) < 70_000


def test_a_big_body_is_kept_cut_and_cannot_be_replayed(make_trigger, post_hook, settings, user):
    settings.TASKFORGE_TRIGGER_STORED_BODY_MAX = 1000
    trigger, secret = make_trigger("github")
    body = body_of({**PUSH, "padding": "x" * 5000})
    assert post_hook(trigger, body, github_headers(secret, body)).status_code == 202
    delivery = Delivery.objects.get()
    assert delivery.body_truncated and len(delivery.body) == 1000
    from core.errors import Conflict

    with pytest.raises(Conflict):
        services.delivery_replay(delivery=delivery, actor=user)


def test_a_captured_github_delivery_sent_again_under_a_new_id_runs_nothing(make_trigger, post_hook):
    """GitHub signs only the body: an attacker who captured a delivery can re-send it with a
    fresh X-GitHub-Delivery. The same signed body is the same delivery."""
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    first = post_hook(trigger, body, github_headers(secret, body, delivery="original"))
    copy = post_hook(trigger, body, github_headers(secret, body, delivery="attacker-fresh-id"))
    assert copy.status_code == 202 and copy.json() == first.json()
    assert copy["Taskforge-Duplicate-Delivery"] == "true"
    assert Task.objects.count() == 1
    other = body_of({**PUSH, "after": "b" * 40})
    assert post_hook(trigger, other, github_headers(secret, other)).status_code == 202
    assert Task.objects.count() == 2


def test_nul_characters_in_values_are_stored_safely(make_trigger, post_hook):
    trigger, secret = make_trigger(
        "token", filters={"event_path": "$.kind", "events": ["build"]}, dedupe_path="$.id"
    )
    body = body_of({"kind": "bu\x00ild", "id": "a\x00b", "branch": "main"})
    response = post_hook(trigger, body, {"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200 and "ignored" in response.json()
    delivery = Delivery.objects.get()
    assert "\x00" not in delivery.event and "\x00" not in delivery.dedupe_key


def test_the_token_in_the_url_is_not_echoed(make_trigger, post_hook):
    trigger, secret = make_trigger("token_in_url", mapping={"branch": "$.branch"}, max_body_bytes=1024)
    body = body_of({"branch": "main", "pad": "x" * 2000})
    response = post_hook(trigger, body, {}, query=f"?token={secret}")
    assert response.status_code == 413
    assert secret not in response.content.decode()
    response = post_hook(trigger, body_of({"branch": "main"}), {}, query=f"?token={secret}")
    assert response.status_code == 202
    assert secret not in json.dumps(Delivery.objects.get().response_body)


def test_a_parameter_made_secret_after_the_mapping_was_saved_gets_no_payload_value(
    make_trigger, post_hook, deploy_template, user
):
    from templates_app.services import template_update
    from tests.triggers.conftest import DEPLOY_PARAMETERS

    trigger, secret = make_trigger("github")
    spec = [{**p, "secret": True} if p["name"] == "branch" else p for p in DEPLOY_PARAMETERS]
    template_update(template=deploy_template, actor=user, fields={"name_pattern": "Deploy"}, parameters=spec)
    body = body_of(PUSH)
    response = post_hook(trigger, body, github_headers(secret, body))
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["field"], error["code"], error["source"]) == ("mapping.branch", "secret_parameter", "$.ref")
    assert nothing_created()
