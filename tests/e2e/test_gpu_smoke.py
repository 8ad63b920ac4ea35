"""`GPU_SMOKE_DEVICE=cpu make gpu-smoke` stays green, so the GPU proof script cannot rot."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
LM_METHODS = {f"causal_lm packed {method}" for method in ("full", "transfer", "lora")}
TASK_METHODS = LM_METHODS | {
    "causal_lm per-record full",
    "completion full",
    "completion lora",
    "classification full",
    "classification transfer",
    "classification lora",
}


def test_the_gpu_smoke_passes_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "GPU_SMOKE_DEVICE": "cpu", "GPU_SMOKE_OUT": str(tmp_path)}
    finished = subprocess.run(
        [sys.executable, "-m", "bench.gpu_smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-4000:]
    assert "gpu-smoke on cpu: 12 runs" in finished.stdout and "passed" in finished.stdout
    report = json.loads((tmp_path / "gpu_smoke.json").read_text())
    runs = report["runs"]
    assert all(run["status"] == "succeeded" for run in runs), runs
    assert {run["name"].split(" ", 1)[1] for run in runs} == TASK_METHODS
    beside = report["beside_inference"]
    assert beside["completions_during_training"] >= 1 and beside["errors"] == []
    assert beside["classifications_during_training"] >= 1
    # The pause lands at the reporter's next poll (every 0.5 s), so a step at or after 3.
    (resumed,) = report["resume"]["resumed"]
    matched = re.fullmatch(r"Resumed from step (\d+) \(attempt 1\)", resumed)
    assert matched and int(matched.group(1)) >= 3, resumed
    assert report["trainer"]["trainer_tokens_per_second"] > 0
    assert report["problems"] == []
