"""A generated OpenAPI client and the `gpt2ft` CLI against the real service; logs and metrics."""

import importlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import GPT2FT, Service, api_client, upload_text
from tests.e2e.corpus import corpus_text

pytestmark = pytest.mark.e2e
TERMINAL = {"succeeded", "failed", "cancelled"}
# The charts are images; the generator maps them to bytes (File) instead of warning.
GENERATOR_CONFIG = (
    "content_type_overrides:\n"
    "  image/png: application/octet-stream\n"
    "  image/svg+xml: application/octet-stream\n"
)


def cli(service: Service, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `gpt2ft ARGS` as a user would, configured only by environment variables."""
    env = {**service.env, "GPT2FT_API_URL": service.url, "GPT2FT_API_KEY": service.api_key}
    return subprocess.run([GPT2FT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_uploads_trains_watches_and_generates(service: Service, tmp_path: Path) -> None:
    corpus = tmp_path / "jokes.txt"
    corpus.write_text(corpus_text(12))
    uploaded = cli(service, "files", "upload", str(corpus))
    assert uploaded.returncode == 0, uploaded.stderr
    file_id = uploaded.stdout.strip()
    assert file_id.startswith("file-")
    assert file_id in cli(service, "files", "list").stdout

    created = cli(
        service, "jobs", "create", "--model", "gpt2-tiny", "--training-file", file_id,
        "--suffix", "cli", "--hp", "n_epochs=2", "--hp", "batch_size=4",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.strip()
    assert job_id in cli(service, "jobs", "list").stdout

    watched = cli(service, "jobs", "watch", job_id, timeout=300)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    out = watched.stdout
    assert "Job started" in out and f"{job_id} succeeded: ft:gpt2-tiny:" in out
    assert "tok/s" in out and "loss " in out and "ETA" in out
    last_line = [part for part in out.split("\r") if "] " in part][-1]
    assert "[########################]" in last_line  # the bar filled up

    job = json.loads(cli(service, "jobs", "show", job_id).stdout)
    assert job["status"] == "succeeded" and job["progress"] == 1.0
    assert job["steps_completed"] == job["total_steps"] > 0
    assert job["trained_tokens"] > 0 and len(job["result_files"]) == 1
    assert job["result_files"][0] in cli(service, "files", "list").stdout

    downloaded = cli(service, "jobs", "results", job_id, "--out", str(tmp_path))
    assert downloaded.returncode == 0, downloaded.stderr
    rows = (tmp_path / f"{job_id}_results.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,train_loss,valid_loss")
    assert len(rows) - 1 == job["total_steps"]
    header = rows[0].split(",")
    norms = [float(dict(zip(header, r.split(","), strict=True))["grad_norm"]) for r in rows[1:]]
    assert all(n > 0 for n in norms) and len(set(norms)) > 1, norms  # every step's own norm
    assert (tmp_path / f"{job_id}_loss.svg").read_text().count("<polyline") >= 1

    models = cli(service, "models", "list").stdout
    assert job["fine_tuned_model"] in models
    fetched = cli(service, "models", "download", job["fine_tuned_model"], "--out", str(tmp_path))
    assert fetched.returncode == 0, fetched.stderr
    model_dir = Path(fetched.stdout.strip().splitlines()[-1])
    assert (model_dir / "config.json").is_file() and model_dir.parent == tmp_path
    assert any(model_dir.glob("*.safetensors"))
    generated = cli(
        service, "generate", "--model", job["fine_tuned_model"], "--max-tokens", "8",
        "--seed", "1", "Why did the",
    )  # fmt: skip
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr

    missing = cli(service, "jobs", "watch", "ftjob-nope")
    assert missing.returncode == 1 and "404" in missing.stderr


def generate_client(service: Service, tmp_path: Path) -> Any:
    """openapi-python-client on the live /openapi.json, imported from tmp_path."""
    config = tmp_path / "generator.yaml"
    config.write_text(GENERATOR_CONFIG)
    bin_dir = str(Path(sys.executable).parent)
    result = subprocess.run(
        [
            str(Path(bin_dir) / "openapi-python-client"), "generate",
            "--url", f"{service.url}/openapi.json", "--config", str(config),
            "--meta", "none", "--output-path", str(tmp_path / "gpt2ft_client"),
        ],
        capture_output=True, text=True, timeout=120,
        env={**service.env, "PATH": bin_dir + ":" + service.env.get("PATH", "")},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module("gpt2ft_client")
    finally:
        sys.path.remove(str(tmp_path))


def test_generated_client_drives_the_whole_flow(service: Service, tmp_path: Path) -> None:
    gen = generate_client(service, tmp_path)
    from gpt2ft_client.api.completions import create_completion
    from gpt2ft_client.api.files import create_file
    from gpt2ft_client.api.fine_tuning import (
        create_job,
        list_job_checkpoints,
        list_job_events,
        list_job_metrics,
        read_job,
        read_job_loss_png,
    )
    from gpt2ft_client.models import (
        CompletionCreate,
        CreateFileBody,
        CreateFileBodyPurpose,
        ErrorResponse,
        Hyperparameters,
        JobCreate,
    )
    from gpt2ft_client.types import File

    client = gen.AuthenticatedClient(base_url=service.url, token=service.api_key, timeout=180)

    def upload(name: str, repeat: int) -> str:
        body = CreateFileBody(
            file=File(payload=io.BytesIO(corpus_text(repeat).encode()), file_name=name),
            purpose=CreateFileBodyPurpose.FINE_TUNE,
        )
        return create_file.sync(client=client, body=body).id

    training, validation = upload("train.txt", 10), upload("valid.txt", 2)
    hyperparameters = Hyperparameters(n_epochs=1)
    job = create_job.sync(
        client=client,
        body=JobCreate(
            model="gpt2-tiny", training_file=training, validation_file=validation,
            hyperparameters=hyperparameters,
        ),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while job.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
        job = read_job.sync(job.id, client=client)
    assert job.status == "succeeded", job

    events = list_job_events.sync(job.id, client=client, limit=1000)
    messages = [e.message for e in events.data]
    assert "The job has successfully completed" in messages and "Job started" in messages
    checkpoints = list_job_checkpoints.sync(job.id, client=client)
    assert checkpoints.data and checkpoints.data[0].fine_tuning_job_id == job.id
    metrics = list_job_metrics.sync(job.id, client=client)
    assert [p.step for p in metrics.data] == list(range(1, job.total_steps + 1))
    assert metrics.data[-1].valid_loss is not None
    png = read_job_loss_png.sync_detailed(job.id, client=client)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"

    completion = create_completion.sync(
        client=client,
        body=CompletionCreate(model=job.fine_tuned_model, prompt="Why", max_tokens=5, seed=3),
    )
    assert completion.choices[0].text and completion.model == job.fine_tuned_model
    missing = read_job.sync("ftjob-missing", client=client)
    assert isinstance(missing, ErrorResponse) and "ftjob-missing" in missing.error.message


def test_prometheus_and_json_logs_after_a_job(service: Service) -> None:
    api = api_client(service)
    training_file = upload_text(api, "corpus.txt", corpus_text(4))
    body = {"model": "gpt2-tiny", "training_file": training_file, "block_size": 32}
    job_id = api.post("/fine_tuning/jobs", json=body).json()["id"]
    deadline = time.monotonic() + 300
    while (status := api.get(f"/fine_tuning/jobs/{job_id}").json()["status"]) not in TERMINAL:
        assert time.monotonic() < deadline, f"{job_id} still {status}"
        time.sleep(0.5)
    assert status == "succeeded"

    text = httpx.get(f"{service.url}/metrics").text
    succeeded = [line for line in text.splitlines() if line.startswith('gpt2ft_jobs{status="succ')]
    assert succeeded and float(succeeded[0].split()[-1]) >= 1
    assert 'route="/v1/fine_tuning/jobs/{job_id}"' in text
    count = [
        line for line in text.splitlines() if line.startswith("gpt2ft_job_duration_seconds_count")
    ]
    assert count and float(count[0].split()[-1]) >= 1
    claimed: list[dict[str, Any]] = []
    for name in ("api.log", "worker.log"):
        log_text = (service.logs / name).read_text(errors="replace")
        assert service.api_key not in log_text, f"the API key leaked into {name}"
        records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
        assert records, f"{name} has no JSON log lines"
        assert all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)
        claimed += [r for r in records if f"{job_id}: claimed (attempt" in r["message"]]
    # The worker's line about this job carries the job's id as a field of its own.
    assert [r.get("job_id") for r in claimed] == [job_id]
