"""``manage.py benchmark`` in its quick mode, against the test database (no timing asserted:
figures are the benchmark's business, not the suite's)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import Resolver404, resolve

from bench.scenarios import check_no_double_claims
from bench.stack import BenchmarkError
from tests.factories import TaskFactory, UserFactory


def run_benchmark(tmp_path: Path, *args: str) -> dict[str, Any]:
    output = tmp_path / "benchmark.json"
    call_command("benchmark", *args, "--quick", "--in-place", "--no-celery", "--output", str(output))
    return json.loads(output.read_text())


@pytest.mark.django_db(transaction=True)
def test_quick_benchmark_runs_every_scenario_through_the_real_stack(tmp_path: Path) -> None:
    report = run_benchmark(tmp_path)
    assert report["quick"] is True
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["database"]
    scenarios = {figure["scenario"] for figure in report["figures"]}
    assert scenarios == {"list", "throughput", "latency", "executions", "claims", "memory"}
    for figure in report["figures"]:
        assert figure["value"] is not None, figure
    assert report["details"]["claims"]["doubles"] == 0
    assert any("Celery baseline" in message for message in report["skipped"])


@pytest.mark.django_db(transaction=True)
def test_agents_racing_on_claim_next_through_gunicorn_never_claim_a_task_twice(tmp_path: Path) -> None:
    report = run_benchmark(tmp_path, "claims", "--agents", "12", "--claim-tasks", "150")
    claims = report["details"]["claims"]
    assert claims == {**claims, "tasks": 150, "claims": 150, "doubles": 0}


@pytest.mark.django_db
def test_the_claim_check_fails_loudly_on_a_double_claim() -> None:
    task = TaskFactory(created_by=UserFactory())
    with pytest.raises(BenchmarkError, match="claimed twice"):
        check_no_double_claims([(str(task.pk), 0), (str(task.pk), 1)], [task.pk])
    with pytest.raises(BenchmarkError, match="lost"):
        check_no_double_claims([], [task.pk])


@pytest.mark.django_db
def test_unknown_scenarios_are_refused() -> None:
    with pytest.raises(CommandError, match="unknown scenario"):
        call_command("benchmark", "nope", "--quick")


@pytest.mark.django_db
def test_the_bare_baseline_view_is_not_in_the_production_urls() -> None:
    with pytest.raises(Resolver404):
        resolve("/bench/bare-tasks")
    assert resolve("/bench/bare-tasks", urlconf="bench.urls").url_name == "bench-bare-tasks"


@pytest.mark.django_db(transaction=True)
def test_the_benchmark_database_is_created_and_dropped_beside_the_configured_one() -> None:
    from bench.stack import BenchDatabase

    original = connection.settings_dict["NAME"]
    name = f"{original}_b{uuid.uuid4().hex[:6]}" if connection.vendor == "postgresql" else None
    database = BenchDatabase(name=name)
    assert database.name != original
    with database:
        assert connection.settings_dict["NAME"] == database.name
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM tasks_task")  # migrated
    assert connection.settings_dict["NAME"] == original
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database.name])
            assert cursor.fetchone() is None
    else:
        assert not Path(database.name).exists()
