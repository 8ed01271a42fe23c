"""The Content-Security-Policy breaks nothing a person uses (issue 18, item 12): headless
Chromium against gunicorn loads Swagger UI, ReDoc, the browsable API and the admin (login,
dashboard, lists, an execution's live page, the API key form), checks each one rendered, and
that the browser reported no CSP violation on any of them.

Skips where no browser is installed (apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from accounts.models import User
from executions.services import execution_enqueue
from tasks.models import Task
from tests.browser.chromium import needs_chromium, start_chromium
from tests.live import gunicorn

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


@pytest.fixture
def browser() -> Any:
    driver = start_chromium(console_log=True)
    yield driver
    driver.quit()


def wait_css(driver: Any, css: str, text: str = "", timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in element.text for element in driver.find_elements(By.CSS_SELECTOR, css)):
            return
        time.sleep(0.2)
    raise AssertionError(f"{css} with {text!r} did not appear on {driver.current_url} within {timeout}s")


# ReDoc's sidebar shows Redocly's logo from their CDN: refused on purpose (no third-party
# request from the docs), and nothing else depends on it.
EXPECTED = ("cdn.redoc.ly/redoc/logo-mini.svg",)


def violations(driver: Any) -> list[str]:
    """The browser's console messages about the policy since the last call."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if ("Content Security Policy" in entry["message"] or "Refused to" in entry["message"])
        and not any(expected in entry["message"] for expected in EXPECTED)
    ]


def test_pages_work_under_the_policy(browser: Any, db: Any) -> None:
    from selenium.webdriver.common.by import By

    operator = User.objects.create_superuser("op", "op@example.com", "op-password-1")
    task = Task.objects.create(
        project=operator.personal_project, name="long", script_type="bash", script_content="sleep 1"
    )
    queued = execution_enqueue(task=task, actor=operator)  # not final: its page follows the log
    found: dict[str, list[str]] = {}
    with gunicorn(workers=1) as base:
        browser.get(f"{base}/api/docs/")
        wait_css(browser, ".opblock-tag", "tasks")  # Swagger UI rendered the schema's operations
        found["swagger"] = violations(browser)

        browser.get(f"{base}/api/redoc/")
        wait_css(browser, "h1", "Taskforge API")  # ReDoc rendered the schema
        wait_css(browser, "[data-section-id]", "")
        found["redoc"] = violations(browser)

        browser.get(f"{base}/admin/login/")
        browser.find_element(By.ID, "id_username").send_keys("op")
        browser.find_element(By.ID, "id_password").send_keys("op-password-1")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait_css(browser, "#dashboard", "Workers")
        found["admin login and dashboard"] = violations(browser)

        for path in (
            "tasks/task/",
            "executions/execution/",
            "webhooks/subscription/",
            "accounts/apikey/add/",
        ):
            browser.get(f"{base}/admin/{path}")
            wait_css(browser, "#content", "")
            found[path] = violations(browser)

        # The admin's own scripts ran: the changelist's select-all checkbox works.
        browser.get(f"{base}/admin/tasks/task/")
        browser.find_element(By.ID, "action-toggle").click()
        assert browser.find_element(By.CSS_SELECTOR, "input.action-select").is_selected()

        browser.get(f"{base}/admin/executions/execution/{queued.pk}/change/")
        wait_css(browser, "#content", "")
        time.sleep(2)  # the page's inline script polls the log after 0.5 s
        found["execution live page"] = violations(browser)

        browser.get(f"{base}/api/v1/status")  # the browsable API, logged in by session
        wait_css(browser, ".response-info", "version")
        found["browsable API"] = violations(browser)

    assert found == {page: [] for page in found}
