"""The dashboard in a real headless Chromium against real api and worker processes.

Each test drives the page as a user would and saves screenshots under test-artifacts/.
"""

import io
import json
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import REPO, Service, api_client, upload_text, wait_until
from tests.e2e.corpus import JOKES, corpus_text
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
ARTIFACTS = REPO / "test-artifacts"
TERMINAL = {"succeeded", "failed", "cancelled"}
PROMPTS = ["Why did the", "A pair of"]


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
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
            permissions=["clipboard-read", "clipboard-write"],
            accept_downloads=True,
        )
        try:
            tab = context.new_page()
            tab.set_default_timeout(30_000)
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab
        finally:
            context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def http(service: Service) -> Iterator[httpx.Client]:
    with api_client(service) as client:
        client.timeout = httpx.Timeout(120)  # dry runs and completions wait for a worker
        yield client


def wait_for_job(http: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/fine_tuning/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return dict(job)
        time.sleep(1)
    raise AssertionError(f"{job_id} still {job['status']} after {timeout}s")


@pytest.fixture(scope="module")
def trained(http: httpx.Client) -> dict[str, Any]:
    """A finished job with evaluations, samples and checkpoints, made through the API."""
    body = {
        "model": "gpt2-tiny",
        "training_file": upload_text(http, "jokes.txt", corpus_text(12)),
        "hyperparameters": {"n_epochs": 2, "batch_size": 4},
        "block_size": 32,
        "eval_every_steps": 5,
        "sample_prompts": PROMPTS,
        "suffix": "jokes",
        "seed": 11,
        "metadata": {"team": "nlp"},
    }
    created = http.post("/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    job = wait_for_job(http, created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return job


def sign_in(page: Any, service: Service, view: str = "") -> None:
    """Save the key the way the key form does, then open a view."""
    page.goto(f"{service.url}/")
    page.evaluate("key => localStorage.setItem('gpt2ft.apiKey', key)", service.api_key)
    page.goto(f"{service.url}/{view}")
    page.reload()


def fill(page: Any, values: dict[str, str], prefix: str) -> None:
    """Type each value into the input #<prefix>-<name>, as a user would."""
    for name, value in values.items():
        page.fill(f"#{prefix}-{name}", value)


def posted_bodies(page: Any, path: str) -> list[dict[str, Any]]:
    """A list that collects the JSON body of every POST the page sends to path."""
    sent: list[dict[str, Any]] = []

    def collect(request: Any) -> None:
        if request.method == "POST" and request.url.endswith(path):
            sent.append(request.post_data_json)

    page.on("request", collect)
    return sent


def points_drawn(page: Any, selector: str) -> int:
    """How many vertices the polyline at selector has right now."""
    return int(
        page.evaluate(
            """sel => {
                const line = document.querySelector(sel);
                const points = line ? line.getAttribute('points').trim() : '';
                return points ? points.split(/\\s+/).length : 0;
            }""",
            selector,
        )
    )


def hover_chart(page: Any, chart: str, share: float) -> str:
    """Move the pointer to share of the chart's width; return the readout's text."""
    page.locator(f"{chart} svg").scroll_into_view_if_needed()
    box = page.locator(f"{chart} svg").bounding_box()
    page.mouse.move(box["x"] + box["width"] * share, box["y"] + box["height"] / 2)
    page.wait_for_selector(f"{chart} .chart-tooltip:not([hidden])")
    return str(page.inner_text(f"{chart} .chart-tooltip"))


def test_key_form_and_new_job_with_every_option_and_a_dry_run(
    page: Any, service: Service, http: httpx.Client, trained: dict[str, Any]
) -> None:
    page.goto(f"{service.url}/")
    page.wait_for_selector("#error:not([hidden])")
    assert "Enter your API key" in page.inner_text("#error-text")
    page.fill("#api-key", "sk-not-a-key")
    page.click("#save-key")
    page.wait_for_selector("#error-text:has-text('Incorrect API key')")
    page.fill("#api-key", service.api_key)
    page.click("#save-key")
    page.wait_for_selector("#error", state="hidden")
    page.wait_for_selector(f"#jobs-body tr[data-job='{trained['id']}']")

    page.goto(f"{service.url}/#/new")
    page.wait_for_selector("#job-model option[value='gpt2-tiny']", state="attached")
    # The trained job left a results CSV, the newest file: it is neither offered nor chosen.
    results = trained["result_files"][0]
    assert page.locator(f"#job-training-file option[value='{results}']").count() == 0
    assert page.input_value("#job-training-file") == ""

    # A refused upload says why in the banner and leaves no "Uploading" message behind.
    page.set_input_files(
        "#upload-file",
        files=[{"name": "empty.jsonl", "mimeType": "application/jsonl", "buffer": b""}],
    )
    page.click("#upload-button")
    page.wait_for_selector("#error-text:has-text('the file is empty')")
    assert page.inner_text("#upload-result") == ""
    assert page.input_value("#job-training-file") == ""

    records = [{"prompt": joke.split("?")[0] + "?", "completion": joke} for joke in JOKES * 6]
    page.set_input_files(
        "#upload-file",
        files=[
            {
                "name": "pairs.jsonl",
                "mimeType": "application/jsonl",
                "buffer": "".join(json.dumps(r) + "\n" for r in records).encode(),
            }
        ],
    )
    page.click("#upload-button")
    page.wait_for_selector("#upload-result:has-text('Uploaded pairs.jsonl')")
    # By the time it says so, the new file is the one chosen.
    file_id = page.input_value("#job-training-file")
    assert file_id.startswith("file-") and file_id in page.inner_text("#upload-result")
    # The preview shows the file's first records, parsed.
    page.wait_for_selector("#file-preview li.record")
    preview = page.locator("#file-preview li.record")
    assert preview.count() == 5
    assert records[0]["completion"] in preview.first.inner_text()
    assert "first 5 of 36 records" in page.inner_text("#file-preview")

    page.select_option("#job-model", "gpt2-tiny")
    page.select_option("#job-task", "completion")
    page.select_option("#job-method", "lora")
    assert page.is_visible("#job-lora-r") and not page.is_visible("#job-trainable-layers")
    page.check("input[name=lora-target][value=c_proj]")
    page.select_option("#job-scheduler", "cosine")
    fill(page, {
        "lora-r": "4", "lora-alpha": "8", "epochs": "2", "batch": "4", "lr": "0.002",
        "warmup": "0.1", "eval-every": "4", "checkpoint-every": "6", "patience": "3",
        "max-length": "48", "sample-prompts": "Why did the\n\nWhat do you call",
        "suffix": "ui", "seed": "7",
    }, prefix="job")  # fmt: skip
    expected = {
        "model": "gpt2-tiny",
        "training_file": file_id,
        "hyperparameters": {"n_epochs": 2, "batch_size": 4},
        "learning_rate": 0.002,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.1,
        "eval_every_steps": 4,
        "checkpoint_every_steps": 6,
        "early_stopping_patience": 3,
        "task": "completion",
        "max_length": 48,
        "training_method": "lora",
        "lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn", "c_proj"]},
        "sample_prompts": ["Why did the", "What do you call"],
        "suffix": "ui",
        "seed": 7,
    }
    sent = posted_bodies(page, "/v1/fine_tuning/jobs")
    page.click("#preview-job")
    page.wait_for_selector("#plan:not([hidden]) [data-plan=total_steps]", timeout=120_000)
    assert sent[-1] == {**expected, "dry_run": True}
    plan = http.post("/fine_tuning/jobs", json={**expected, "dry_run": True}).json()["plan"]
    tile = lambda name: page.inner_text(f"#plan [data-plan={name}] .stat-value")  # noqa: E731
    steps = f"{plan['total_steps']:,} = {plan['steps_per_epoch']:,} × 2 epochs"
    assert tile("total_steps") == steps
    # A completion task keeps one example per record (no packed blocks).
    examples = f"{plan['train_tokens']:,} in {plan['train_examples']:,} examples"
    assert tile("train_tokens") == examples
    assert (
        tile("valid_tokens") == f"{plan['valid_tokens']:,} in {plan['valid_examples']:,} examples"
    )
    assert tile("trained_tokens") == f"{plan['trained_tokens']:,}"
    assert tile("padding").startswith(f"{plan['padding_fraction'] * 100:.1f}% of token slots")
    assert f"{plan['truncated']:,} records truncated" in tile("padding")
    assert tile("memory").startswith(f"{plan['memory_estimate']['total_bytes'] / 1024**2:.0f} MiB")
    assert tile("parameters") == (
        f"{plan['trainable_parameters']:,} of {plan['total_parameters']:,}"
    )
    # The trained job above was full fine-tuning: no lora job to time yet, and it says so.
    assert tile("estimated_time") == "no estimate yet"
    assert "no succeeded lora job on gpt2-tiny" in page.inner_text("[data-plan=estimate_basis]")
    resolved = page.inner_text("#plan table.kv")
    assert "cosine" in resolved and "r 4, alpha 8" in resolved and "c_attn, c_proj" in resolved
    assert "null" not in resolved and "undefined" not in resolved
    shot(page, "new-job-plan")

    page.click("#create-job")
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    assert sent[-1] == expected
    job_id = page.url.rsplit("/", 1)[1]
    counts: list[int] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        counts.append(points_drawn(page, "#chart-loss polyline.series.train"))
        if page.inner_text("#job-status") in TERMINAL and counts[-1] > 0:
            break
        page.wait_for_timeout(250)
    status = page.inner_text("#job-status")
    assert status == "succeeded", page.inner_text("#job-error")
    assert counts == sorted(counts), f"the chart lost points: {counts}"
    assert len({c for c in counts if c > 0}) >= 2, f"the chart never grew while training: {counts}"
    job = http.get(f"/fine_tuning/jobs/{job_id}").json()
    assert job["training_method"] == "lora" and job["lora"]["r"] == 4


def test_job_page_shows_resolved_values_files_charts_samples_and_events(
    page: Any, service: Service, http: httpx.Client, trained: dict[str, Any]
) -> None:
    job_id, model = trained["id"], trained["fine_tuned_model"]
    metrics = http.get(f"/fine_tuning/jobs/{job_id}/metrics").json()["data"]
    sign_in(page, service, f"#/jobs/{job_id}")
    page.wait_for_selector("#job-status:has-text('succeeded')")
    page.wait_for_selector("#job-hyperparameters tr[data-name=learning_rate]")

    # Hyperparameters: resolved values in words, never a null dump.
    table = page.locator("#job-hyperparameters")
    value = lambda name: table.locator(f"tr[data-name={name}] td").inner_text()  # noqa: E731
    assert value("n_epochs") == "2" and value("batch_size") == "4"
    assert value("learning_rate") == "1e-3" and value("block_size") == "32"
    assert value("checkpoint_every_steps") == "epoch end (and every evaluation)"
    assert value("early_stopping_patience") == "off"
    assert value("eval_every_steps") == "5 steps and at epoch ends"
    assert "null" not in table.inner_text() and "=" not in table.inner_text()
    # File names, not ids.
    facts = page.locator("#job-facts")
    assert facts.locator("tr[data-fact=training-file] td").inner_text().startswith("jokes.txt")
    assert "split from the training file (10%)" in facts.inner_text()
    assert facts.locator("tr[data-fact=metadata] td").inner_text() == "team: nlp"
    # Memorization: the fine-tuned figure beside the base model's, and the increase.
    final = http.get(f"/fine_tuning/jobs/{job_id}").json()["final_metrics"]
    memorized = facts.locator("tr[data-fact=memorization] td").inner_text()
    assert f"base model {final['memorization_fraction_base'] * 100:.1f}%" in memorized
    assert "increase" in memorized

    # Charts: every logged step, the learning rate and the accuracy.
    assert points_drawn(page, "#chart-loss polyline.series.train") == len(metrics)
    assert points_drawn(page, "#chart-lr polyline.series.lr") == len(metrics)
    with_accuracy = [p for p in metrics if p["train_mean_token_accuracy"] is not None]
    assert points_drawn(page, "#chart-accuracy polyline.series.train") == len(with_accuracy) > 0
    evaluated = [p for p in metrics if p["valid_loss"] is not None]
    assert page.locator("#chart-loss circle.dot.valid").count() == len(evaluated)
    # Hover: the step and the values under the pointer, as the API has them.
    readout = hover_chart(page, "#chart-loss", 0.999)
    last = metrics[-1]
    assert readout.startswith(f"step {last['step']}")
    assert f"train loss {last['train_loss']:.4f}" in readout
    assert f"valid loss {last['valid_loss']:.4f}" in readout
    lr_readout = hover_chart(page, "#chart-lr", 0.999)
    assert lr_readout.startswith(f"step {last['step']}") and "learning rate" in lr_readout
    # Smoothing redraws the train curve and keeps the raw one faint behind it.
    raw = page.get_attribute("#chart-loss polyline.series.train:not(.raw)", "points")
    page.check("#chart-smoothing")
    smoothed = page.get_attribute("#chart-loss polyline.series.train:not(.raw)", "points")
    assert smoothed != raw and page.get_attribute("#chart-loss polyline.raw", "points") == raw
    assert "(smoothed " in hover_chart(page, "#chart-loss", 0.5)
    shot(page, "job")

    # Samples: one group per evaluation, each with every prompt.
    events = http.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 500}).json()["data"]
    sample_steps = sorted({e["data"]["step"] for e in events if (e["data"] or {}).get("text")})
    groups = page.locator("#samples details.sample-group")
    assert groups.count() == len(sample_steps) >= 2
    assert groups.first.get_attribute("data-step") == str(sample_steps[-1])
    assert groups.first.locator("pre").count() == len(PROMPTS)
    # Events: per-step metrics hidden until asked for; the text filter narrows the list.
    step_events = [e for e in events if e["type"] == "metrics"]
    assert page.locator("#events li.type-metrics").count() == 0
    assert page.locator("#events li").count() == len(events) - len(step_events)
    page.check("#events-metrics")
    assert page.locator("#events li.type-metrics").count() == len(step_events)
    page.fill("#events-search", "checkpoint saved")
    saved = [e for e in events if "checkpoint saved" in e["message"].lower()]
    assert page.locator("#events li").count() == len(saved) > 0

    # Copy the model id; download the model.
    page.click("#job-copy-model")
    page.wait_for_selector("#job-copy-model:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == model
    with page.expect_download(timeout=60_000) as download:
        page.click("#job-download-model")
    with tarfile.open(fileobj=io.BytesIO(Path(download.value.path()).read_bytes())) as tar:
        names = tar.getnames()
    assert any(name.endswith("/config.json") for name in names), names
    assert download.value.suggested_filename.endswith(".tar.gz")
    with page.expect_download() as results:
        page.click("#job-results")
    assert results.value.suggested_filename == f"{job_id}_results.csv"
    rows = Path(results.value.path()).read_text().splitlines()
    assert rows[0].startswith("step,epoch,train_loss") and len(rows) == len(metrics) + 1


def test_playground_compares_a_checkpoint_with_its_base_model(
    page: Any, service: Service, http: httpx.Client, trained: dict[str, Any]
) -> None:
    job_id, model = trained["id"], trained["fine_tuned_model"]
    checkpoints = http.get(f"/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    checkpoint = checkpoints[-1]["fine_tuned_model_checkpoint"]  # the oldest
    sign_in(page, service, f"#/jobs/{job_id}")
    page.click("#job-playground")
    page.wait_for_selector(f"#play-checkpoint-a option[value='{checkpoint}']", state="attached")
    assert page.input_value("#play-model-a") == model
    assert page.input_value("#play-model-b") == "gpt2-tiny"
    # A base model this host cannot load (offline, not cached) is shown greyed out, not pickable.
    offline = page.locator("#play-model-b option[value='gpt2-xl']")
    available = http.get("/models/gpt2-xl").json()["available"]
    assert offline.is_disabled() is (not available)
    assert ("(not available here)" in offline.inner_text()) is (not available)
    steps = page.locator("#play-checkpoint-a option").all_inner_texts()
    assert steps[0] == "final model" and len(steps) == len(checkpoints) + 1
    page.select_option("#play-checkpoint-a", checkpoint)
    fill(page, {
        "prompt": "Why did the", "max-tokens": "12", "temperature": "1", "top-p": "0.9",
        "seed": "5", "stop": "xyz|\\n",
    }, prefix="play")  # fmt: skip
    sent = posted_bodies(page, "/v1/completions")
    page.click("#play-generate")
    for pane in ("a", "b"):
        page.wait_for_selector(f"#play-output-{pane}[data-done=true]", timeout=120_000)
    assert sorted(body["model"] for body in sent) == sorted([checkpoint, "gpt2-tiny"])
    for body in sent:
        assert body.pop("stream") is True and body.pop("stream_options") == {"include_usage": True}
        expected = http.post("/completions", json=body).json()["choices"][0]["text"]
        pane = "a" if body["model"] == checkpoint else "b"
        assert page.inner_text(f"#play-output-{pane}") == "Why did the" + expected
        assert body["seed"] == 5 and body["top_p"] == 0.9 and body["stop"] == ["xyz", "\n"]
    assert checkpoint in page.inner_text("#play-meta-a")
    shot(page, "playground")


def test_playground_chat_mode_keeps_the_conversation(
    page: Any, service: Service, http: httpx.Client
) -> None:
    sign_in(page, service, "#/playground?model=gpt2-tiny")
    page.wait_for_selector("#play-model-a option[value='gpt2-tiny']", state="attached")
    page.uncheck("#play-compare")
    page.check("#play-chat")
    assert page.inner_text("#play-generate") == "Send" and page.is_visible("#play-system")
    fill(page, {"system": "Be brief.", "max-tokens": "6", "temperature": "0"}, prefix="play")
    sent = posted_bodies(page, "/v1/chat/completions")
    replies = []
    for message in ("Hi there", "And again?"):
        page.fill("#play-prompt", message)
        page.click("#play-generate")
        page.wait_for_selector("#play-output-a[data-done=true]", timeout=120_000)
        body = dict(sent[-1])
        assert body.pop("stream") is True
        body.pop("stream_options")
        answer = http.post("/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        replies.append(answer.json()["choices"][0]["message"]["content"])
    system = {"role": "system", "content": "Be brief."}
    assert sent[0]["messages"] == [system, {"role": "user", "content": "Hi there"}]
    # The second turn sends the first one back, with the reply the page showed.
    assert sent[1]["messages"] == [
        system,
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": "And again?"},
    ]
    assert sent[1]["max_completion_tokens"] == 6 and sent[1]["temperature"] == 0
    shown = page.inner_text("#play-output-a")
    assert "User: Hi there" in shown and "User: And again?" in shown
    assert shown.count("Assistant:") == 2 and page.input_value("#play-prompt") == ""
    shot(page, "playground-chat")
    page.click("#play-clear")
    assert page.inner_text("#play-output-a") == ""


def test_running_job_shows_eta_and_tokens_per_second(
    page: Any, service: Service, http: httpx.Client
) -> None:
    body = {
        "model": "gpt2-tiny",
        "training_file": upload_text(http, "long.txt", corpus_text(12)),
        "hyperparameters": {"n_epochs": 50, "batch_size": 1},
        "block_size": 32,
    }
    job_id = http.post("/fine_tuning/jobs", json=body).json()["id"]
    try:
        sign_in(page, service)
        wait_until(
            lambda: http.get(f"/fine_tuning/jobs/{job_id}").json()["tokens_per_second"],
            120,
            "a measured throughput",
        )
        row = page.locator(f"#jobs-body tr[data-job='{job_id}']")
        row.locator(".progress-figures:has-text('tok/s')").wait_for()
        figures = row.locator(".progress-figures").inner_text()
        assert re.search(r"\d+/\d+ steps · ETA \d+:\d\d(:\d\d)? · [\d,]+ tok/s", figures), figures

        page.goto(f"{service.url}/#/jobs/{job_id}")
        page.wait_for_function(
            "() => /^\\d+:\\d\\d/.test(document.querySelector('[data-stat=eta] .stat-value')"
            "?.textContent || '')"
        )
        job = http.get(f"/fine_tuning/jobs/{job_id}").json()
        eta = page.inner_text("[data-stat=eta] .stat-value")
        shown = sum(int(part) * 60**i for i, part in enumerate(reversed(eta.split(":"))))
        assert abs(shown - (job["estimated_finish"] - time.time())) < 30, (eta, job)
        rate = page.inner_text("[data-stat=tokens-per-second] .stat-value")
        assert int(rate.replace(",", "")) > 0
        shot(page, "running-job")
    finally:
        http.post(f"/fine_tuning/jobs/{job_id}/cancel")
    wait_for_job(http, job_id)


def test_small_screen_keeps_every_column_and_control_in_view(
    page: Any, service: Service, trained: dict[str, Any]
) -> None:
    page.set_viewport_size({"width": 375, "height": 812})
    sign_in(page, service)
    row = page.locator(f"#jobs-body tr[data-job='{trained['id']}']")
    status = row.locator(".status")
    status.wait_for()
    box = status.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    shot(page, "375-jobs")
    for view, ready in (
        (f"#/jobs/{trained['id']}", "#job-hyperparameters tr"),
        ("#/new", "#job-model option"),
        (f"#/playground?model={trained['fine_tuned_model']}", "#play-model-a option"),
    ):
        page.goto(f"{service.url}/{view}")
        page.wait_for_selector(ready, state="attached")
        page.wait_for_timeout(500)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{view} scrolls sideways: {width}px wide"
        shot(page, "375-" + ("job" if view.startswith("#/jobs/") else view[2:].split("?")[0]))
    assert tap_chart(page, service, trained["id"]).startswith("step ")


def tap_chart(page: Any, service: Service, job_id: str) -> str:
    """On a phone a tap shows the readout: tap the loss chart, return the readout."""
    page.goto(f"{service.url}/#/jobs/{job_id}")
    page.wait_for_selector("#chart-loss polyline.series.train")
    page.locator("#chart-loss svg").scroll_into_view_if_needed()
    box = page.locator("#chart-loss svg").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    page.wait_for_selector("#chart-loss .chart-tooltip:not([hidden])")
    return str(page.inner_text("#chart-loss .chart-tooltip"))


def test_page_helpers_parse_csv_smooth_and_split_stop_sequences(
    page: Any, service: Service
) -> None:
    page.goto(f"{service.url}/")
    result = page.evaluate(
        """async () => {
            const form = await import('/static/job-form.js');
            const chart = await import('/static/chart.js');
            const play = await import('/static/playground.js');
            const lib = await import('/static/lib.js');
            return {
                csv: form.parseCsv('text,label\\r\\n"a, ""quoted""\\nline",pos\\nplain,neg\\n'),
                smooth: chart.smooth([[1, 10], [2, 0], [3, 0]], 0.5),
                stop: play.stopSequences('###|\\\\n|a|b|c'),
                clock: [lib.clock(41), lib.clock(3725)],
                lr: [lib.scientific(0.001), lib.scientific(0.00025), lib.scientific(0.1)],
            };
        }"""
    )
    assert result["csv"] == [["text", "label"], ['a, "quoted"\nline', "pos"], ["plain", "neg"]]
    # Debiased: the first value is the first point, then 0.5-weighted averages of what came.
    assert result["smooth"] == [[1, 10], [2, pytest.approx(10 / 3)], [3, pytest.approx(10 / 7)]]
    assert result["stop"] == ["###", "\n", "a", "b"]  # at most four, \n is a newline
    assert result["clock"] == ["0:41", "1:02:05"]
    assert result["lr"] == ["1e-3", "2.5e-4", "0.1"]
