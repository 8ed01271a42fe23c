"""The operator's day in a real browser: headless Chromium (Debian's chromium +
chromium-driver, driven by selenium) against gunicorn and a real worker.

Skips with a clear message where no browser is installed (.ci/run installs one). Screenshots
land in var/screenshots/ (the ones in docs/img/ were taken from this suite).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from accounts.models import ApiKey, User
from executions.models import Execution
from executions.services import execution_enqueue
from tasks.models import Task
from tests.browser.chromium import needs_chromium, start_chromium
from tests.live import ROOT, gunicorn, wait_for, worker

SHOTS = ROOT / "var" / "screenshots"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    needs_chromium,
]


@pytest.fixture
def browser():
    driver = start_chromium()
    driver.implicitly_wait(2)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait_text(driver, css: str, text: str, timeout: float = 20) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(text in e.text for e in driver.find_elements(By.CSS_SELECTOR, css)):
                return
        except StaleElementReferenceException:
            pass  # the page changed between finding an element and reading it: look again
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not appear in {css} within {timeout}s")


def test_operator_day(browser, db):
    from selenium.webdriver.common.by import By

    from templates_app.services import template_create

    operator = User.objects.create_superuser("op", "op@example.com", "op-password-1")
    project = operator.personal_project
    template_create(
        project=project,
        actor=operator,
        slug="greet",
        name="Greet",
        name_pattern="greet {{ who }}",
        script_type="bash",
        script='who={{ who }}\nfor i in 1 2 3; do echo "hello $who $i"; sleep 0.5; done',
        parameters=[{"name": "who", "type": "string", "required": True, "description": "whom to greet"}],
    )
    long_task = Task.objects.create(
        project=project, name="long", script_type="bash", script_content="echo started; sleep 60"
    )
    with gunicorn(workers=1) as base, worker("--concurrency", "2"):
        # Log in.
        browser.get(f"{base}/admin/login/")
        browser.find_element(By.ID, "id_username").send_keys("op")
        browser.find_element(By.ID, "id_password").send_keys("op-password-1")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait_text(browser, "#dashboard", "Workers alive")
        shot(browser, "dashboard")

        # Trigger the template with a parameter; land on the execution, watch the output.
        browser.get(f"{base}/admin/templates_app/template/")
        browser.find_element(By.LINK_TEXT, "greet").click()
        trigger = browser.find_element(By.LINK_TEXT, "Trigger…")  # not the sidebar's "Triggers"
        trigger.click()
        browser.find_element(By.ID, "id_who").send_keys("operators")
        shot(browser, "trigger-form")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        # click() returns before the POST's redirect is followed: wait for the page to change.
        wait_for(lambda: "/admin/executions/execution/" in browser.current_url, timeout=20)
        wait_text(browser, "#output-stdout", "hello operators 3", timeout=30)
        shot(browser, "execution-live")

        # Cancel a long run from its page.
        long_run = execution_enqueue(task=long_task, actor=operator)
        wait_for(
            lambda: Execution.objects.filter(pk=long_run.pk, chunks__data="started\n").exists(), timeout=30
        )
        browser.get(f"{base}/admin/executions/execution/{long_run.pk}/change/")
        wait_text(browser, "#output-stdout", "started")
        browser.find_element(By.XPATH, "//button[text()='Cancel']").click()
        wait_for(lambda: Execution.objects.get(pk=long_run.pk).status == "cancelled", timeout=15)
        browser.get(f"{base}/admin/executions/execution/{long_run.pk}/change/")
        wait_text(browser, "body", "Cancelled")
        shot(browser, "execution-cancelled")

        # Create an API key (shown once, with a copy button), then revoke it.
        browser.get(f"{base}/admin/accounts/apikey/add/")
        browser.find_element(By.ID, "id_name").send_keys("ci-pipeline")
        browser.find_element(By.CSS_SELECTOR, "input[value='task:write']").click()
        browser.find_element(By.CSS_SELECTOR, "input[value='execution:write']").click()
        # The owner field is an autocomplete (select2): choose the operator as its AJAX would.
        browser.execute_script(
            "var s = document.getElementById('id_owner');"
            "s.add(new Option(arguments[1], arguments[0], true, true));"
            "s.dispatchEvent(new Event('change'));",
            str(operator.pk),
            operator.username,
        )
        browser.find_element(By.NAME, "_save").click()
        wait_text(browser, "#new-api-key", ".")  # the next page, however long the save takes
        key_text = browser.find_element(By.ID, "new-api-key").text
        assert browser.find_element(By.XPATH, "//button[text()='Copy']")
        shot(browser, "api-key-created")
        api_key = ApiKey.objects.get(name="ci-pipeline")
        assert key_text.startswith(api_key.prefix + ".")
        browser.find_element(By.CSS_SELECTOR, f"input[name='_selected_action'][value='{api_key.pk}']").click()
        from selenium.webdriver.support.ui import Select

        Select(browser.find_element(By.NAME, "action")).select_by_value("revoke")
        browser.find_element(By.NAME, "index").click()
        wait_text(browser, "ul.messagelist", "Revoked 1 key")
    api_key.refresh_from_db()
    assert api_key.revoked
    assert Path(SHOTS / "execution-live.png").exists()
