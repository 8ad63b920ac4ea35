"""The client commands beside a running `gpt2ft run`, and `jobs watch` on a job mid-run."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    GPT2FT,
    REPO,
    Service,
    api_client,
    free_port,
    upload_text,
    wait_until,
)
from tests.e2e.corpus import corpus_text
from tests.services import missing_service

pytestmark = pytest.mark.e2e


def shell_env(home: Path) -> dict[str, str]:
    """A second terminal: the same home folder, none of the service's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPT2FT_", "REDIS"))}
    env.pop("PORT", None)
    return {**env, "GPT2FT_HOME": str(home)}


def test_client_commands_find_the_port_and_key_of_a_running_make_run(
    tmp_path: Path, models_dir: Path, tokenizer_dir: Path
) -> None:
    if not any((Path(p) / "redis-server").is_file() for p in os.environ["PATH"].split(":")):
        missing_service("redis-server is not installed (apt-get install redis-server)")
    home, port = tmp_path / "var", free_port()
    key = "sk-only-in-the-run-environment-" + os.urandom(6).hex()
    run_env = {
        **shell_env(home),
        "PORT": str(port),
        "GPT2FT_DEV_API_KEY": key,
        "GPT2FT_MODELS_DIR": str(models_dir),
        "GPT2FT_TOKENIZER_DIR": str(tokenizer_dir),
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [GPT2FT, "run"], env=run_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    state = home / "run.json"
    try:
        wait_until(state.is_file, 120, f"{state} (see {tmp_path / 'run.log'})")
        assert state.stat().st_mode & 0o777 == 0o600
        # Users' data is private: the database and Redis's AOF (files 0600, folders 0700).
        private = [home / "gpt2ft.db", *(home / "redis").rglob("appendonly*")]
        assert len(private) > 1 and not [p for p in private if p.stat().st_mode & 0o077]

        shell = shell_env(home)
        listed = subprocess.run(
            [GPT2FT, "models", "list"], env=shell, capture_output=True, text=True, cwd=tmp_path
        )
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["ID", "OWNED", "BY", "AVAILABLE"]
        assert ["gpt2-tiny", "gpt2ft", "yes"] in [row.split() for row in rows]

        target = subprocess.run([GPT2FT, "target"], env=shell, capture_output=True, text=True)
        assert f"http://127.0.0.1:{port}" in target.stdout and "ready" in target.stdout
        assert str(state) in target.stdout and key not in target.stdout
    finally:
        run.send_signal(signal.SIGINT)  # Ctrl-C
        code = run.wait(timeout=60)
    assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert not state.exists(), "the state file outlived `gpt2ft run`"
    after = subprocess.run([GPT2FT, "target"], env=shell_env(home), capture_output=True, text=True)
    assert "http://127.0.0.1:8000  (from the default)" in after.stdout


def test_watch_attached_to_a_running_job_starts_from_its_current_step(
    service: Service, tmp_path: Path
) -> None:
    api = api_client(service)
    body = {
        "model": "gpt2-tiny",
        "training_file": upload_text(api, "jokes.txt", corpus_text(12)),
        "hyperparameters": {"n_epochs": 60, "batch_size": 1},
        "block_size": 32,
    }
    job = api.post("/fine_tuning/jobs", json=body).json()
    job_id = job["id"]
    try:
        wait_until(
            lambda: api.get(f"/fine_tuning/jobs/{job_id}").json()["steps_completed"] >= 40,
            120,
            "40 steps",
        )
        attached_at = api.get(f"/fine_tuning/jobs/{job_id}").json()["steps_completed"]
        env = {**service.env, "GPT2FT_API_URL": service.url, "GPT2FT_API_KEY": service.api_key}
        watch = subprocess.Popen(
            [GPT2FT, "jobs", "watch", job_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        time.sleep(6)
        # The event stream ends when the job pauses: watch waits, then follows it again.
        api.post(f"/fine_tuning/jobs/{job_id}/pause")
        status = lambda: api.get(f"/fine_tuning/jobs/{job_id}").json()  # noqa: E731
        wait_until(lambda: status()["status"] == "paused", 120, "the pause")
        paused_at = status()["steps_completed"]
        time.sleep(3)
        api.post(f"/fine_tuning/jobs/{job_id}/resume")
        wait_until(lambda: status()["steps_completed"] >= paused_at + 3, 120, "3 steps more")
        time.sleep(3)
        api.post(f"/fine_tuning/jobs/{job_id}/cancel")
        out, err = watch.communicate(timeout=120)
    finally:
        api.post(f"/fine_tuning/jobs/{job_id}/cancel")
    assert watch.returncode == 1, out + err
    assert out.rstrip().endswith(f"{job_id} cancelled")
    steps = [int(m) for m in re.findall(r"\] (\d+)/\d+", out)]
    assert steps, out
    assert steps[0] >= attached_at, f"replayed old steps: {steps[:5]} (attached at {attached_at})"
    assert steps == sorted(steps) and steps[-1] > steps[0], steps
    assert "ETA" in out
    assert f"{job_id} paused: waiting for" in out
    assert steps[-1] > paused_at, f"nothing followed after the resume: {steps[-5:]}"
