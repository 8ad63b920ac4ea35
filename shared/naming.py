"""Names that cross processes: task names, queues, model ids."""

import re

TRAIN_TASK = "gpt2ft.run_job"
GENERATE_TASK = "gpt2ft.generate"
# A dry run's plan: tokenization needs a worker, so it rides the inference queue.
DRY_RUN_TASK = "gpt2ft.plan"
# Labels from a fine-tuned classifier (/v1/classifications); also the inference queue.
CLASSIFY_TASK = "gpt2ft.classify"
# File purposes: uploads train; a finished job's metrics CSV is a results file.
FINE_TUNE_PURPOSE = "fine-tune"
RESULTS_PURPOSE = "fine-tune-results"
TRAINING_QUEUE = "training"
INFERENCE_QUEUE = "inference"
# Each training worker also serves its own queue, "training.<name>": a job that only some
# workers can run (memory) is sent to one of those (shared/workers.py: place).
WORKER_QUEUE_PREFIX = f"{TRAINING_QUEUE}."

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def worker_queue(name: str) -> str:
    """The training queue only the worker called name serves."""
    return f"{WORKER_QUEUE_PREFIX}{_SAFE.sub('-', name)}"


def fine_tuned_model_id(base_model: str, owner: str, suffix: str | None, job_id: str) -> str:
    """ft:<base>:<owner>:<suffix>:<job-id>, OpenAI's shape; the suffix may be empty."""
    return f"ft:{base_model}:{_SAFE.sub('-', owner)}:{_SAFE.sub('-', suffix or '')}:{job_id}"


def checkpoint_model_id(fine_tuned_id: str, step: int) -> str:
    """The model id of a checkpoint: <fine-tuned id>:ckpt-step-<N>."""
    return f"{fine_tuned_id}:ckpt-step-{step}"
