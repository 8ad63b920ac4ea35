"""`make gpu-smoke`: every task x method through the real worker code, on one GPU or the CPU.

GPU_SMOKE_DEVICE=cuda (the default): random-init gpt2- and gpt2-medium-shaped models; about
5 minutes on one H100/H200. GPU_SMOKE_DEVICE=cpu: gpt2-tiny, the same runs, a few minutes.
Jobs are rows in a temporary home, run by run_job as a worker runs them, batch_size "auto".
Per run: status, the probe's micro-batch, the memory estimate against max_memory_allocated,
tokens/s and MFU; then completions and classifications served by a second process while a
job trains, a pause and resume, and ours against the Hugging Face Trainer on one job.
GPU_SMOKE_OUT=<folder> also writes the figures there as gpu_smoke.json. Exits 1 on a failure.
"""

import json
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import smoke_service as service
from bench.smoke_figures import Row, figures_for, print_row, trainer_tokens_per_second

# Model roles -> (folder name, GPT-2 shape) per device; the CPU run uses gpt2-tiny for both.
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 256}
MODELS = {
    "cuda": {
        "small": ("gpt2-random", {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}),
        "medium": (
            "gpt2-medium-random",
            {"n_layer": 24, "n_head": 16, "n_embd": 1024, "n_positions": 1024},
        ),
    },
    "cpu": {"small": ("gpt2-tiny", TINY), "medium": ("gpt2-tiny", TINY)},
}


@dataclass(frozen=True)
class Data:
    """How much text each run trains on, per device."""

    chars: int  # of this repository's prose and code, repeated up to examples
    # Training examples (packed blocks, or records) per file: batch_size "auto" picks 8 from
    # 3501 on, so the CUDA probe has a real batch to fit; 0 leaves the text as it is.
    examples: int
    block_size: int
    max_length: int


DATA = {
    "cuda": Data(chars=160_000, examples=3_700, block_size=1024, max_length=512),
    "cpu": Data(chars=3_000, examples=0, block_size=32, max_length=48),
}


@dataclass(frozen=True)
class Case:
    """One job of the matrix."""

    model: str
    task: str
    method: str
    packing: bool = True

    @property
    def name(self) -> str:
        mode = "packed" if self.packing else "per-record"
        layout = f" {mode}" if self.task == "causal_lm" else ""
        return f"{self.model} {self.task}{layout} {self.method}"


CASES = [
    Case("small", "causal_lm", "full"),
    Case("small", "causal_lm", "transfer"),
    Case("small", "causal_lm", "lora"),
    Case("small", "causal_lm", "full", packing=False),
    Case("small", "completion", "full"),
    Case("small", "completion", "lora"),
    Case("small", "classification", "full"),
    Case("small", "classification", "transfer"),
    Case("small", "classification", "lora"),
    Case("medium", "completion", "lora"),
    Case("medium", "classification", "full"),
]
# Trained while a second process serves completions and classifications on the same device.
BESIDE_INFERENCE = Case("medium", "causal_lm", "full")


def create_job(case: Case, device: str, files: dict[str, str], n_epochs: int = 1) -> str:
    """The case's job row: batch_size auto, the method's defaults."""
    model, _shape = MODELS[device][case.model]
    data = DATA[device]
    hp: dict[str, Any] = {"n_epochs": n_epochs, "batch_size": "auto", "learning_rate": 5e-4}
    options: dict[str, Any] = {"task": case.task, "training_method": case.method}
    if case.task == "causal_lm" and case.packing:
        hp["block_size"] = data.block_size
        return service.add_job(model, files["packed"], hp, options)
    options.update(packing=False, max_length=data.max_length)
    return service.add_job(model, files[case.task], hp, options)


def run_case(case: Case, device: str, files: dict[str, str]) -> tuple[Row, str]:
    """Run the case's job to its end through run_job; its figures and the job id."""
    from worker.run_job import run_job

    job_id = create_job(case, device, files)
    started = time.perf_counter()
    outcome = run_job(job_id, service.WORKER_ID)
    row = figures_for(case.name, job_id, device, time.perf_counter() - started)
    row.outcome = str(outcome)
    print_row(row)
    return row, job_id


def serve(stop: Any, answers: Any, completion_model: str, classifier: str) -> None:
    """The inference process: completions and classifications until stop is set."""
    from worker.inference import handle_classify, handle_generate

    prompts = ["The worker claims the job", "def train(spec):"]
    requests: list[tuple[Any, dict[str, Any]]] = [
        (
            handle_generate,
            {
                "model": "lm",
                "location": completion_model,
                "prompts": prompts,
                "max_tokens": 32,
                "temperature": 0.8,
                "seed": 1,
            },
        ),
        (
            handle_classify,
            {
                "model": "classifier",
                "location": classifier,
                "input": ["A paragraph of prose.", "import torch"],
            },
        ),
    ]
    while not stop.is_set():
        for handle, request in requests:
            started = time.time()
            answer = handle(request)
            answers.put((handle.__name__, started, time.time(), answer.get("error")))
    answers.put(("peak_memory_bytes", 0.0, 0.0, inference_peak()))


def inference_peak() -> int | None:
    """This process's max_memory_allocated on CUDA, else None."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def train_beside_inference(
    device: str, files: dict[str, str], classifier: str
) -> tuple[Row, dict[str, Any]]:
    """A job trained while another process serves: both must work, neither may fail."""
    context = multiprocessing.get_context("spawn")
    stop, answers = context.Event(), context.Queue()
    base = str(service.models_dir() / MODELS[device]["small"][0])
    server = context.Process(target=serve, args=(stop, answers, base, classifier))
    server.start()
    first = answers.get(timeout=600)  # serving (models loaded) before training starts
    row, _job_id = run_case(BESIDE_INFERENCE, device, files)
    started, ended = time.time() - row.seconds, time.time()
    stop.set()
    served = [first]
    while (item := answers.get(timeout=600))[0] != "peak_memory_bytes":
        served.append(item)
    server.join(timeout=60)
    during = [s for s in served if s[1] >= started and s[2] <= ended]
    summary = {
        "completions_during_training": sum(s[0] == "handle_generate" for s in during),
        "classifications_during_training": sum(s[0] == "handle_classify" for s in during),
        "errors": [s[3] for s in served if s[3]],
        "inference_peak_memory_bytes": item[3],
    }
    print(f"inference beside training: {json.dumps(summary)}", flush=True)
    return row, summary


def pause_and_resume(device: str, files: dict[str, str]) -> dict[str, Any]:
    """A user pauses a job at step 3; resumed, it finishes from its checkpoint."""
    from worker.run_job import run_job
    from worker.training import engine

    job_id = create_job(Case("small", "causal_lm", "full", False), device, files, n_epochs=2)
    real_step, steps = engine.optimizer_step, [0]

    def step(run: Any, batch: Any, spec: Any) -> Any:
        steps[0] += 1
        if steps[0] == 3:
            service.set_job(job_id, pause_requested=True)  # as POST .../pause does
            # The run reads the flag at its next poll (every 0.5 s): wait for it here, or a
            # fast device finishes the whole job first.
            time.sleep(1.5)
        return real_step(run, batch, spec)

    engine.optimizer_step = step  # type: ignore[assignment]
    try:
        paused = run_job(job_id, service.WORKER_ID)
    finally:
        engine.optimizer_step = real_step  # type: ignore[assignment]
    service.set_job(job_id, status="queued", pause_requested=False)  # as POST .../resume does
    finished = run_job(job_id, service.WORKER_ID)
    view = service.read_job(job_id)
    resumed = [m for m, _ in view.events if m.startswith("Resumed from step")]
    result = {"paused": str(paused), "finished": str(finished), "resumed": resumed}
    print(f"pause and resume: {json.dumps(result)}", flush=True)
    return result


def compare_with_trainer(row: Row, job_id: str, device: str) -> dict[str, Any]:
    """Ours (the job's steady tokens/s) against transformers.Trainer on the same plan."""
    theirs = trainer_tokens_per_second(job_id, device, row.micro_batch, row.accumulation)
    ratio = row.tokens_per_second / theirs if row.tokens_per_second and theirs else None
    result = {
        "ours_tokens_per_second": row.tokens_per_second,
        "trainer_tokens_per_second": theirs,
        "ours_over_trainer": ratio,
    }
    print(f"ours vs Trainer ({row.name}): {json.dumps(result)}", flush=True)
    return result


def problems(rows: list[Row], beside: dict[str, Any], resume: dict[str, Any]) -> list[str]:
    """What went wrong, one line each; empty when the smoke passed."""
    found = [f"{r.name}: {r.status} {r.error or ''}" for r in rows if r.status != "succeeded"]
    if beside["errors"]:
        found.append(f"inference errors while training: {beside['errors'][:3]}")
    if not beside["completions_during_training"] or not beside["classifications_during_training"]:
        found.append("no completion or no classification was served while the job trained")
    if (resume["paused"], resume["finished"]) != ("paused", "succeeded") or not resume["resumed"]:
        found.append(f"pause and resume: {resume}")
    return found


def main() -> int:
    """Build the models and files, run every case, print and check the figures."""
    device = os.environ.get("GPU_SMOKE_DEVICE", "cuda")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("GPU_SMOKE_DEVICE=cuda but torch sees no GPU; GPU_SMOKE_DEVICE=cpu runs on the CPU")
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpt2ft-gpu-smoke-") as tmp:
        root = Path(tmp)
        service.build_models(root / "models", dict(MODELS[device].values()))
        service.start_home(root / "home", root / "models", device)
        data = DATA[device]
        files = service.add_files(data.chars, data.examples, data.block_size)
        results = [run_case(case, device, files) for case in CASES]
        rows = [row for row, _ in results]
        classifier_job = results[CASES.index(Case("small", "classification", "full"))][1]
        classifier = service.read_job(classifier_job).model_location
        assert classifier is not None, "the classification job left no model"
        row, beside = train_beside_inference(device, files, classifier)
        rows.append(row)
        resume = pause_and_resume(device, files)
        trainer = compare_with_trainer(rows[0], results[0][1], device)
    seconds = time.perf_counter() - started
    found = problems(rows, beside, resume)
    report = {
        "device": device,
        "seconds": round(seconds, 1),
        "runs": [asdict(r) for r in rows],
        "beside_inference": beside,
        "resume": resume,
        "trainer": trainer,
        "problems": found,
    }
    if out := os.environ.get("GPU_SMOKE_OUT"):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_smoke.json").write_text(json.dumps(report, indent=2, default=str))
    print(
        f"gpu-smoke on {device}: {len(rows)} runs in {seconds:.0f}s; "
        + ("passed" if not found else "FAILED:\n  " + "\n  ".join(found))
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
