"""The README's flow with the official openai SDK, against a running gpt2ft (make run).

.venv/bin/python scripts/openai_flow.py            # key from var/dev-api-key
GPT2FT_URL=http://host:8000 OPENAI_API_KEY=sk-... .venv/bin/python scripts/openai_flow.py
"""

import os
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

TERMINAL = {"succeeded", "failed", "cancelled"}
CORPUS = (
    "A pair of jumper cables walks into a bar. The bartender says: don't start anything.\n"
    "A skeleton walks into a bar and orders a beer and a mop.\n"
    "A horse walks into a bar. The bartender asks: why the long face?\n"
) * 40


def api_key() -> str:
    """OPENAI_API_KEY, else the key `make run` saved."""
    home = Path(os.environ.get("GPT2FT_HOME", "var"))
    return os.environ.get("OPENAI_API_KEY") or (home / "dev-api-key").read_text().strip()


def main() -> int:
    base = os.environ.get("GPT2FT_URL", "http://127.0.0.1:8000")
    client = OpenAI(base_url=f"{base}/v1", api_key=api_key())
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(CORPUS)
        with corpus.open("rb") as handle:
            file = client.files.create(file=handle, purpose="fine-tune")
    print("file:", file.id, file.bytes, "bytes")
    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=file.id,
        hyperparameters={"n_epochs": 2},
        extra_body={"block_size": 128, "learning_rate": 1e-3, "validation_split": 0.1},
    )
    print("job:", job.id, job.status)
    deadline = time.monotonic() + float(os.environ.get("GPT2FT_FLOW_TIMEOUT", "600"))
    while job.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
        print("  status:", job.status)
    for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=10).data):
        print("  event:", event.level, event.message)
    if job.status != "succeeded":
        print("job did not succeed:", job.status, job.error, file=sys.stderr)
        return 1
    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id).data:
        print("checkpoint:", checkpoint.fine_tuned_model_checkpoint, checkpoint.step_number)
    print("fine-tuned model:", job.fine_tuned_model)
    assert job.fine_tuned_model is not None
    completion = client.completions.create(
        model=job.fine_tuned_model,
        prompt="A pair of jumper cables walks into a bar.",
        max_tokens=30,
    )
    print("completion:", repr(completion.choices[0].text))
    assert completion.model == job.fine_tuned_model, completion.model
    assert len(completion.choices) == 1 and isinstance(completion.choices[0].text, str)
    models = [model.id for model in client.models.list()]
    print("models:", models)
    assert job.fine_tuned_model in models and "gpt2-tiny" in models, models
    return 0


if __name__ == "__main__":
    sys.exit(main())
