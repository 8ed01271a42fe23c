"""Schemathesis against the live schema: gunicorn + a real worker on the test database.

Phases: examples, coverage (boundary values of every parameter), fuzzing (generated and
schema-violating bodies) and stateful (the response links: create -> get -> update ->
execute -> cancel -> delete). Checks: all of schemathesis' (no 5xx, responses match their
schema, documented status codes and content types, schema-violating requests refused,
missing auth refused, ...), with ``positive_data_acceptance`` replaced by a stricter-where-it-
matters version explained in tests/hardening/schemathesis_hooks.py.

Budget: ``TASKFORGE_SCHEMATHESIS_EXAMPLES`` cases per operation and phase (default 8, about
a minute and a half here); a long run by hand:

    TASKFORGE_SCHEMATHESIS_EXAMPLES=500 pytest tests/hardening/test_schemathesis.py -s

(the counts of the last long run are in docs/security.md). The rate limit is switched off
for the run: 429s would stop it from reaching anything (rate limits have their own tests).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.models import User
from tasks.models import Task
from tests import live
from tests.factories import UserFactory, make_key
from tests.live import ROOT, gunicorn, worker

ST = Path(sys.executable).parent / "st"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not ST.exists(), reason="schemathesis (st) is not installed (pip install -e .[dev])"),
]

LIVE_ENV = {
    "TASKFORGE_RATE_LIMIT_ENABLED": "0",
    # Webhook URLs in generated bodies may be private: allowed so creation paths are reached;
    # the worker does not deliver (--no-webhooks).
    "TASKFORGE_WEBHOOK_ALLOW_PRIVATE": "1",
    "TASKFORGE_WEBHOOK_ALLOW_HTTP": "1",
    # Threads: GET .../log with Accept: text/event-stream holds a request until the execution
    # ends; with two sync workers two streams would stall every other request (read timeouts).
    "GUNICORN_CMD_ARGS": "--worker-class gthread --threads 8",
    # ?wait=N holds a request thread up to N s; the schema's maximum follows this setting, so
    # every generated wait (boundary values included) stays short.
    "TASKFORGE_MAX_WAIT_SECONDS": "2",
    # The event stream (GET /events with Accept: text/event-stream) runs until its lifetime
    # ends: keep generated streams short too.
    "TASKFORGE_STREAM_MAX_SECONDS": "2",
}


def seed() -> tuple[User, str]:
    """A user with a personal project, a few tasks of each kind and an all-scopes key."""
    user = UserFactory(username="schemathesis", email="st@example.com")
    project = user.personal_project
    for index in range(3):
        Task.objects.create(
            project=project,
            created_by=user,
            name=f"scripted {index}",
            script_type="bash",
            script_content="echo hello",
            tags=["seed"],
        )
        Task.objects.create(project=project, created_by=user, name=f"work item {index}", agent="bot")
    # The workflow examples of the schema (workflows/api/views.py) name these: a step template
    # and the workflow template "release", so POST /workflows creates a run and the stateful
    # phase follows its links (start, pause, resume, cancel, retry).
    from templates_app.services import template_create
    from workflows.services import workflow_template_create

    extra = {
        "deploy": [{"name": "artifact", "type": "string", "default": "none"}],
        "notify": [{"name": "message", "type": "string", "default": "done"}],
    }
    for slug in ("build", "test", "lint", "deploy", "notify"):
        template_create(
            project=project,
            actor=user,
            slug=slug,
            name=slug.title(),
            name_pattern=f"{slug} {{{{ ref }}}}",
            script_type="bash",
            script=f"echo {slug} {{{{ ref }}}}",
            parameters=[{"name": "ref", "type": "string", "default": "main"}, *extra.get(slug, [])],
        )
    workflow_template_create(
        project=project,
        actor=user,
        slug="release",
        name="Release",
        parameters=[{"name": "ref", "type": "string", "required": True}],
        nodes=[
            {"key": "build", "template": "build", "parameters": {"ref": "{{ params.ref }}"}},
            {"key": "test", "template": "test", "parameters": {"ref": "{{ params.ref }}"}},
        ],
        edges=[{"from": "build", "to": "test"}],
    )
    _, raw = make_key(user, ["*"])
    return user, raw


def summary(output: str) -> str:
    lines = [
        line
        for line in output.splitlines()
        if re.search(r"\d+ generated|passed|failed|Scenarios|Links", line)
    ]
    return "\n".join(lines[-12:])


def test_the_live_api_conforms_to_its_schema(tmp_path: Path) -> None:
    _, raw = seed()
    examples = int(os.environ.get("TASKFORGE_SCHEMATHESIS_EXAMPLES", "8"))
    with (
        gunicorn(workers=2, extra_env=LIVE_ENV) as base,
        worker("--no-webhooks", "--grace", "1", extra_env=LIVE_ENV),
    ):
        env = {
            **live.test_database_env(),
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.hardening.schemathesis_hooks",
            "TASKFORGE_ST_KEY_PREFIX": raw.split(".")[0],
            "NO_COLOR": "1",
        }
        result = subprocess.run(
            [
                str(ST),
                "--no-color",
                "--config-file",
                str(Path(__file__).with_name("schemathesis.toml")),
                "run",
                f"{base}/api/schema/",
                "-H",
                f"Authorization: Api-Key {raw}",
                "--checks",
                "all",
                # Replaced by positive_data_accepted_unless_referential (schemathesis_hooks.py).
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                str(examples),
                "--continue-on-failure",
                "--request-timeout",
                "30",
                "--seed",
                os.environ.get("TASKFORGE_SCHEMATHESIS_SEED", "20261123"),
                *(["--max-time", "150"] if examples <= 10 else []),  # the CI budget, a hard stop
            ],
            cwd=tmp_path,  # schemathesis writes a .schemathesis/ cache directory in its cwd
            env=env,
            capture_output=True,
            text=True,
            # A long run by hand may need more than half an hour: TASKFORGE_SCHEMATHESIS_TIMEOUT.
            timeout=int(os.environ.get("TASKFORGE_SCHEMATHESIS_TIMEOUT", "1800")),
            check=False,
        )
    output = result.stdout + result.stderr
    if os.environ.get("TASKFORGE_SCHEMATHESIS_OUTPUT"):
        Path(os.environ["TASKFORGE_SCHEMATHESIS_OUTPUT"]).write_text(output)
    print(summary(output))  # counts, for the record (pytest -s)
    assert result.returncode == 0, output[-20000:]
    assert re.search(r"(\d+) generated", output), output[-5000:]
    assert "Stateful" in output, "the stateful phase did not run (no links?)"
