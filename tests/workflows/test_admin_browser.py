"""The run page in a real browser (headless Chromium against gunicorn): the graph and the steps
follow the run live without a reload, under the Content-Security-Policy, and the page reloads
once when the run ends (then nothing polls any more).

Skips where no browser is installed (apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from accounts.models import User
from tests.browser.chromium import needs_chromium, start_chromium
from tests.hardening.test_csp_browser import violations
from tests.live import ROOT, gunicorn
from tests.workflows.conftest import end_node
from workflows import services

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def wait_until(check: Any, timeout: float = 20) -> None:
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except WebDriverException:
            pass  # the page is being replaced (the reload at the end): look again
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s")


def node_status(driver: Any, key: str) -> str | None:
    return driver.execute_script(
        "var g = document.querySelector('#wf-graph g[data-key=\"' + arguments[0] + '\"]');"
        "return g ? g.getAttribute('data-status') : null;",
        key,
    )


def test_the_run_page_is_live_until_the_run_ends(make_workflow: Any, user: User) -> None:
    from selenium.webdriver.common.by import By

    user.is_staff = user.is_superuser = True
    user.set_password("op-password-1")
    user.save()
    run = services.workflow_run_create(workflow=make_workflow(), actor=user)
    driver = start_chromium(console_log=True)
    try:
        with gunicorn(workers=1) as base:
            driver.get(f"{base}/admin/login/")
            driver.find_element(By.ID, "id_username").send_keys(user.username)
            driver.find_element(By.ID, "id_password").send_keys("op-password-1")
            driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
            wait_until(lambda: driver.find_elements(By.ID, "dashboard"))  # logged in
            driver.get(f"{base}/admin/workflows/workflowrun/{run.pk}/change/")
            wait_until(lambda: node_status(driver, "a") == "queued")
            driver.execute_script("window.sameDocument = true;")  # gone if the page reloads

            end_node(run, "a")
            wait_until(lambda: node_status(driver, "a") == "succeeded")
            assert node_status(driver, "b") == "queued"
            assert driver.execute_script("return window.sameDocument === true;")  # no reload
            steps = driver.find_element(By.ID, "wf-steps").text
            assert "succeeded" in steps
            (ROOT / "var" / "screenshots").mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ROOT / "var" / "screenshots" / "workflow-run.png"))

            for key in ("b", "c", "d"):
                end_node(run, key)
            # Final: the page reloads once (the buttons go) and stops polling.
            wait_until(lambda: not driver.execute_script("return window.sameDocument === true;"))
            wait_until(lambda: "succeeded" in driver.find_element(By.ID, "wf-status").text)
            assert node_status(driver, "d") == "succeeded"
            assert not driver.find_elements(By.CSS_SELECTOR, "form[action*='/do/']")
            assert violations(driver) == []
    finally:
        driver.quit()
