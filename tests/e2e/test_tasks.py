"""Classification and completion-format jobs through the SDK, then /v1/classifications."""

import io
import json
import tarfile

import httpx
import pytest

from tests.e2e.conftest import Service
from tests.e2e.test_sdk_flow import TERMINAL, all_events, watch

pytestmark = pytest.mark.e2e

# No word is in both labels' texts: separable, so a trained classifier gets every one right.
POSITIVE = ["great, loved it", "wonderful and fun", "loved every minute", "great fun"]
NEGATIVE = ["awful, hated that", "boring, so bad", "hated each scene", "awful mess"]


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def upload(client, name: str, content: bytes):
    return client.files.create(file=(name, io.BytesIO(content)), purpose="fine-tune")


def test_classification_job_and_classifications(client, service: Service) -> None:
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    csv = "text,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows) * 3
    training = upload(client, "reviews.csv", csv.encode())
    assert training.format == "csv" and training.records == 24
    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=training.id,
        hyperparameters={"n_epochs": 6, "batch_size": 8},
        seed=3,
        extra_body={"learning_rate": 3e-3, "max_length": 32, "warmup_ratio": 0.0},
    )
    assert job.hyperparameters.model_extra["task"] == "classification"  # inferred from the file
    assert watch(client, job.id, TERMINAL)[-1] == "succeeded", client.fine_tuning.jobs.retrieve(
        job.id
    ).error
    job = client.fine_tuning.jobs.retrieve(job.id)
    shown = job.hyperparameters.model_extra
    assert shown["task"] == "classification" and shown["labels"] == ["neg", "pos"]
    assert shown["max_length"] == 32 and shown["packing"] is False
    events = all_events(client, job.id)
    assert any("records truncated" in e.message for e in events)
    evals = [e.data for e in events if e.type == "metrics" and "valid_accuracy" in (e.data or {})]
    assert evals and {"valid_macro_f1", "valid_loss"} <= set(evals[-1])

    headers = {"Authorization": f"Bearer {service.api_key}"}

    def classify(texts: list[str]) -> list[dict]:
        body = {"model": job.fine_tuned_model, "input": texts}
        answer = httpx.post(
            f"{service.url}/v1/classifications", json=body, headers=headers, timeout=120
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["object"] == "list" and result["model"] == job.fine_tuned_model
        assert [d["index"] for d in result["data"]] == list(range(len(texts)))
        return list(result["data"])

    # Every text it was trained on, labelled right (accuracy 1.0 on a separable set).
    texts, labels = [t for t, _ in rows], [label for _, label in rows]
    batched = classify(texts)
    assert [d["label"] for d in batched] == labels
    assert all(sum(d["probabilities"].values()) == pytest.approx(1.0) for d in batched)
    # One request pads its texts to the longest; alone, each is unpadded: the same answer.
    for text, together in zip(texts[:2] + texts[-2:], batched[:2] + batched[-2:], strict=True):
        (alone,) = classify([text])
        assert alone["probabilities"] == pytest.approx(together["probabilities"], abs=1e-5)

    completion = httpx.post(
        f"{service.url}/v1/completions",
        json={"model": job.fine_tuned_model, "prompt": "hi", "max_tokens": 2},
        headers=headers,
        timeout=120,
    )
    assert completion.status_code == 400 and "/v1/classifications" in completion.text


def test_lora_classification_job_serves_and_downloads(client, service: Service) -> None:
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    records = [{"text": text, "label": label} for text, label in rows] * 3
    training = upload(client, "reviews.jsonl", jsonl(records))
    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=training.id,
        hyperparameters={"n_epochs": 6, "batch_size": 8},
        seed=3,
        extra_body={
            "training_method": "lora",
            "lora": {"r": 4, "alpha": 8},
            "learning_rate": 1e-2,
            "max_length": 32,
            "warmup_ratio": 0.0,
        },
    )
    assert watch(client, job.id, TERMINAL)[-1] == "succeeded", client.fine_tuning.jobs.retrieve(
        job.id
    ).error
    job = client.fine_tuning.jobs.retrieve(job.id)
    extra = job.model_extra or {}
    assert extra["training_method"] == "lora" and job.hyperparameters.model_extra["task"] == (
        "classification"
    )
    assert 0 < extra["trainable_parameters"] < extra["total_parameters"]

    headers = {"Authorization": f"Bearer {service.api_key}"}
    texts, labels = [t for t, _ in rows], [label for _, label in rows]
    answer = httpx.post(
        f"{service.url}/v1/classifications",
        json={"model": job.fine_tuned_model, "input": texts},
        headers=headers,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert [d["label"] for d in answer.json()["data"]] == labels

    # The download holds the merged classifier and the adapter (with its trained head).
    archive = httpx.get(
        f"{service.url}/v1/models/{job.fine_tuned_model}/content", headers=headers, timeout=120
    )
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames()}
    assert {"config.json", "model.safetensors", "adapter/adapter_config.json",
            "adapter/adapter_model.safetensors"} <= names  # fmt: skip


def test_completion_format_job(client, service: Service) -> None:
    # One answer for every question: what the model must learn is the format's completion.
    records = [
        {"prompt": f"Q: {a} plus {b}? A:", "completion": " yes."}
        for a in range(1, 5)
        for b in range(1, 5)
    ]
    training = upload(client, "qa.jsonl", jsonl(records))
    assert training.format == "jsonl" and training.records == 16
    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=training.id,
        hyperparameters={"n_epochs": 8, "batch_size": 4},
        extra_body={"task": "completion", "max_length": 32, "learning_rate": 3e-3},
    )
    assert watch(client, job.id, TERMINAL)[-1] == "succeeded"
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.hyperparameters.model_extra["task"] == "completion"
    answer = client.completions.create(
        model=job.fine_tuned_model, prompt="Q: 7 plus 9? A:", max_tokens=2, temperature=0
    )
    assert answer.choices[0].text == " yes."

    wrong = httpx.post(
        f"{service.url}/v1/fine_tuning/jobs",
        json={"model": "gpt2-tiny", "training_file": training.id, "task": "classification"},
        headers={"Authorization": f"Bearer {service.api_key}"},
    )
    assert wrong.status_code == 400 and '"text", "label"' in wrong.json()["error"]["message"]
