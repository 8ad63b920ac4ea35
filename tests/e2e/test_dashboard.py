"""The dashboard in a real headless Chromium against real api and worker processes."""

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Service
from tests.e2e.corpus import corpus_text
from tests.services import missing_service

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")
# Quiet, sandbox-free Chromium: CI runs as root in a container with no network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "test-artifacts" / "dashboard.png"


@pytest.fixture
def page(tmp_path: Path) -> Iterator:
    """A page in a fresh Chromium profile; JavaScript errors fail the test."""
    if not CHROMIUM.exists():
        missing_service(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("playwright is not installed: pip install -r requirements/dev.txt")
    errors: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            tab = context.new_page()
            tab.set_default_timeout(30_000)
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab
        finally:
            context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def train_points(page) -> int:
    """How many points the train-loss polyline has right now."""
    return page.evaluate(
        """() => {
            const line = document.querySelector('#chart polyline.train-loss');
            const points = line ? line.getAttribute('points').trim() : '';
            return points ? points.split(/\\s+/).length : 0;
        }"""
    )


def watch_job(page, timeout: float = 75) -> tuple[str, list[int]]:
    """Poll the job page until a final status; return it and the point counts seen."""
    counts: list[int] = []
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = page.inner_text("#job-status")
        count = train_points(page)
        if not counts or counts[-1] != count:
            counts.append(count)
        if status in {"succeeded", "failed", "cancelled"} and count == counts[-1] and count > 0:
            return status, counts
        page.wait_for_timeout(100)
    raise AssertionError(f"job still {status!r} after {timeout}s; point counts {counts}")


def test_dashboard_trains_and_generates(page, service: Service) -> None:
    from playwright.sync_api import expect  # importable: the page fixture checked

    page.goto(f"{service.url}/")
    page.wait_for_selector("#error:not([hidden])")
    assert "Enter your API key" in page.inner_text("#error-text")
    page.fill("#api-key", "sk-not-a-key")
    page.click("#save-key")
    page.wait_for_selector("#error-text:has-text('Incorrect API key')")
    page.fill("#api-key", service.api_key)
    page.click("#save-key")
    page.wait_for_selector("#error", state="hidden")
    page.wait_for_selector("#jobs-empty:not([hidden])")

    page.goto(f"{service.url}/#/new")
    page.wait_for_selector("#job-model option[value='gpt2-tiny']", state="attached")
    page.set_input_files(
        "#upload-file",
        files=[
            {
                "name": "jokes.txt",
                "mimeType": "text/plain",
                "buffer": corpus_text(repeat=12).encode(),
            }
        ],
    )
    page.click("#upload-button")
    page.wait_for_selector("#upload-result:has-text('Uploaded jokes.txt')")
    expect(page.locator("#job-training-file")).to_have_value(re.compile(r"^file-"))

    page.select_option("#job-model", "gpt2-tiny")
    page.fill("#job-epochs", "2")
    page.fill("#job-batch", "8")
    page.fill("#job-block", "32")
    page.fill("#job-lrm", "1000")
    page.click("#create-job")  # above the API's maximum of 100: its error message shows
    page.wait_for_selector("#error:not([hidden])")
    assert "learning_rate_multiplier" in page.inner_text("#error-text")

    page.fill("#job-lrm", "")
    page.click("#create-job")
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    status, counts = watch_job(page)
    assert status == "succeeded", page.inner_text("#job-error")
    assert counts == sorted(counts), f"the chart lost points: {counts}"
    assert len([c for c in counts if c > 0]) >= 2, f"the chart never grew while training: {counts}"
    assert page.locator("#chart polyline.valid-loss").get_attribute("points")
    assert "step" in page.inner_text("#chart") and "loss" in page.inner_text("#chart")

    page.wait_for_selector("#checkpoints-body code:has-text(':ckpt-step-')")
    assert "The job has successfully completed" in page.inner_text("#events")
    progress = page.locator("#job-progress [role=progressbar]")
    assert progress.get_attribute("aria-valuenow") == progress.get_attribute("aria-valuemax")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    fine_tuned = page.inner_text("#job-facts dd:nth-of-type(2)")
    assert fine_tuned.startswith("ft:gpt2-tiny:")
    page.click("#job-playground")
    page.wait_for_selector(f"#play-model option[value='{fine_tuned}']", state="attached")
    assert page.input_value("#play-model") == fine_tuned
    page.fill("#play-max-tokens", "16")
    page.click("#play-generate")
    page.wait_for_selector("#play-output[data-done=true]", timeout=60_000)
    generated = page.inner_text("#play-output").removeprefix("Why did the")
    assert generated.strip(), "the playground showed no generated text"
    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-playground.png")), full_page=True)

    page.goto(f"{service.url}/#/")
    row = page.locator("#jobs-body tr").first
    row.locator(".status-succeeded").wait_for()
