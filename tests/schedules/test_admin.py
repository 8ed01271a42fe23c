"""The schedules admin (next fire local and UTC, paused badge, actions, fires inline), the
dashboard's late schedules, and ``manage.py schedules``."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from executions.models import Execution, Worker
from schedules import services
from schedules.models import Schedule, ScheduleFire
from templates_app.services import template_create
from tests.factories import MembershipFactory, ProjectFactory, UserFactory
from tests.schedules.conftest import at

pytestmark = pytest.mark.django_db


@pytest.fixture
def root_client(user) -> Client:
    user.is_staff = user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


def test_list_and_change_page_show_next_fire_last_outcome_and_fires(root_client, make_schedule, user):
    schedule = make_schedule(cron="30 3 * * *", timezone="Europe/Riga", start_at=at("2025-01-01T00:00"))
    services.schedules_tick(now=schedule.due_at + timedelta(seconds=1))
    paused = make_schedule(name="stopped", interval_seconds=60)
    services.schedule_pause(schedule=paused, actor=user, reason="maintenance window")
    page = root_client.get("/admin/schedules/schedule/").content.decode()
    assert "30 3 * * * (Europe/Riga)" in page and "every 60 s" in page
    assert "03:30:00+02:00" in page or "03:30:00+03:00" in page  # local
    assert " UTC" in page and "fired" in page
    assert "paused" in page and "maintenance window" in page
    change = root_client.get(f"/admin/schedules/schedule/{schedule.pk}/change/").content.decode()
    assert "fires (newest first)" in change.lower() and "fired" in change


def test_actions_call_the_services(root_client, make_schedule):
    schedule = make_schedule(interval_seconds=3600)
    url = "/admin/schedules/schedule/"
    root_client.post(url, {"action": "pause", "_selected_action": [schedule.pk]})
    assert not Schedule.objects.get().enabled
    root_client.post(url, {"action": "resume", "_selected_action": [schedule.pk]})
    assert Schedule.objects.get().enabled
    root_client.post(url, {"action": "run_now", "_selected_action": [schedule.pk]})
    assert ScheduleFire.objects.get().kind == "manual" and Execution.objects.count() == 1


def test_add_form_validates_through_the_service_and_offers_only_own_templates(user, template, project):
    staff = UserFactory(is_staff=True)
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="schedules"))
    shared = ProjectFactory()
    MembershipFactory(project=shared, user=staff, role=Role.ADMIN)
    mine = template_create(
        project=shared,
        actor=staff,
        slug="mine",
        name="Mine",
        name_pattern="m",
        script_type="bash",
        script="echo",
    )
    client = Client()
    client.force_login(staff)
    form = client.get("/admin/schedules/schedule/add/").content.decode()
    assert str(mine.pk) in form and str(template.pk) not in form  # alice's template is not offered
    data = {
        "project": shared.pk,
        "name": "nightly",
        "template": mine.pk,
        "parameters": "{}",
        "overrides": "{}",
        "cron": "0 0 31 2 *",
        "timezone": "UTC",
        "jitter_seconds": 0,
        "overlap_policy": "skip",
        "misfire_policy": "run_once",
        "catchup_window_seconds": 3600,
        "enabled": "on",
        "fires-TOTAL_FORMS": 0,
        "fires-INITIAL_FORMS": 0,
    }
    refused = client.post("/admin/schedules/schedule/add/", data)
    assert refused.status_code == 200 and "day-of-month" in refused.content.decode()
    assert not Schedule.objects.exists()
    created = client.post("/admin/schedules/schedule/add/", {**data, "cron": "0 3 * * *"})
    assert created.status_code == 302, created.content.decode()[:2000]
    schedule = Schedule.objects.get()
    assert schedule.next_fire_at is not None and schedule.created_by == staff


def test_dashboard_lists_late_schedules_while_workers_are_up(root_client, make_schedule):
    schedule = make_schedule(name="stuck", interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(due_at=timezone.now() - timedelta(minutes=5))
    assert "Late schedules" not in root_client.get("/admin/").content.decode()  # no worker: not late
    Worker.objects.create(name="w", hostname="h", pid=1, concurrency=1)
    page = root_client.get("/admin/").content.decode()
    assert "Late schedules" in page and "stuck" in page


def test_manage_py_schedules_lists_next_fires_and_ticks(make_schedule):
    make_schedule(name="hourly", cron="0 * * * *", timezone="America/New_York")
    out = io.StringIO()
    call_command("schedules", "--next", "2", "--tick", stdout=out)
    text = out.getvalue()
    assert "Ticked: 0 due schedule(s)" in text
    assert "hourly" in text and "0 * * * * (America/New_York)" in text
    assert text.count("next: ") == 2 and ":00:00-0" in text
