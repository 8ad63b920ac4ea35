"""A LoRA job through the openai SDK, a dry run, then the model downloaded and loaded."""

import io
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Service, download_model
from tests.e2e.corpus import corpus_text

pytestmark = pytest.mark.e2e
TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_done(client, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not finished after {timeout}s")


def test_dry_run_returns_the_plan_and_creates_no_job(client, service: Service) -> None:
    training = client.files.create(
        file=("corpus.txt", io.BytesIO(corpus_text(10).encode())), purpose="fine-tune"
    )
    response = httpx.post(
        f"{service.url}/v1/fine_tuning/jobs",
        headers={"Authorization": f"Bearer {service.api_key}"},
        json={
            "model": "gpt2-tiny",
            "training_file": training.id,
            "dry_run": True,
            "block_size": 32,
            "training_method": "lora",
        },  # fmt: skip
        timeout=120,
    )
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["object"] == "fine_tuning.job.plan" and plan["dry_run"] is True
    assert plan["plan"]["block_size"] == 32 and plan["plan"]["train_tokens"] > 0
    assert plan["plan"]["training_method"] == "lora"
    assert plan["plan"]["memory_estimate"]["total_bytes"] > 0
    assert plan["hyperparameters"]["n_epochs"] >= 1
    assert list(client.fine_tuning.jobs.list()) == []


def test_lora_job_then_download_and_load(
    client, service: Service, tmp_path: Path, models_dir: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    training = client.files.create(
        file=("corpus.txt", io.BytesIO(corpus_text(10).encode())), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=training.id,
        hyperparameters={"n_epochs": 2, "batch_size": 4},
        seed=3,
        extra_body={
            "block_size": 32,
            "training_method": "lora",
            "lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn", "c_proj"]},
            "sample_prompts": ["Why did the"],
            "lr_scheduler": "cosine",
        },
    )
    job = wait_done(client, job.id)
    assert job.status == "succeeded", job.error
    extra = job.model_extra or {}
    assert extra["training_method"] == "lora"
    assert 0 < extra["trainable_parameters"] < extra["total_parameters"]
    assert extra["final_metrics"]["kept"] == "best"
    assert 0.0 <= extra["final_metrics"]["memorization_fraction"] <= 1.0
    assert 0.0 <= extra["final_metrics"]["memorization_fraction_base"] <= 1.0
    assert job.hyperparameters.model_extra["lr_scheduler"] == "cosine"

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    samples = [e.data for e in events if e.type == "message" and e.data and "prompt" in e.data]
    assert len(samples) == 2 and samples[0]["prompt"] == "Why did the"
    assert any("memory estimate" in e.message for e in events)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    best = [c for c in checkpoints if (c.model_extra or {}).get("is_best")]
    assert len(best) == 1

    served = client.completions.create(
        model=job.fine_tuned_model, prompt="Why did the", max_tokens=8, temperature=0
    )

    folder = download_model(service, job.fine_tuned_model, tmp_path)
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert merged.config.n_layer == 2  # gpt2-tiny's, merged back into a plain GPT-2
    # The downloaded model is the one served: greedy decoding gives the same text.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("Why did the", return_tensors="pt")
    with torch.no_grad():
        local = merged.generate(
            **prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    new_ids = local[0, prompt.input_ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new_ids:
        new_ids = new_ids[: new_ids.index(tokenizer.eos_token_id)]
    assert served.choices[0].text == tokenizer.decode(new_ids)
    # The merged weights answer as the base model with the downloaded adapter does.
    base = AutoModelForCausalLM.from_pretrained(models_dir / "gpt2-tiny").eval()
    with torch.no_grad():
        base_logits = base(input_ids=prompt.input_ids).logits
        adapted = PeftModel.from_pretrained(base, folder / "adapter").eval()
        adapted_logits = adapted(input_ids=prompt.input_ids).logits
        merged_logits = merged(input_ids=prompt.input_ids).logits
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-5)
    assert (adapted_logits - base_logits).abs().max() > 1e-3
    missing = httpx.get(
        f"{service.url}/v1/models/ft:nope/content",
        headers={"Authorization": f"Bearer {service.api_key}"},
    )
    assert missing.status_code == 404


def test_transfer_per_record_job_through_the_sdk(client, service: Service) -> None:
    records = "".join(
        f'{{"text": "Recipe {i}: mix flour, water and salt; bake for {10 + i} minutes."}}\n'
        for i in range(40)
    )
    training = client.files.create(
        file=("recipes.jsonl", io.BytesIO(records.encode())), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=training.id,
        hyperparameters={"n_epochs": 3, "batch_size": 8},
        extra_body={
            "packing": False,
            "max_length": 24,
            "training_method": "transfer",
            "trainable_layers": 1,
            "learning_rate": 3e-3,
            "gradient_checkpointing": True,
        },
    )
    job = wait_done(client, job.id)
    assert job.status == "succeeded", job.error
    extra = job.model_extra or {}
    assert extra["training_method"] == "transfer"
    assert 0 < extra["trainable_parameters"] < extra["total_parameters"]
    shown = job.hyperparameters.model_extra
    assert shown["packing"] is False and shown["max_length"] == 24
    assert shown["gradient_checkpointing"] is True
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    validated = [e.message for e in events if e.message.startswith("Files validated")]
    assert validated and "padding" in validated[0], validated
    evals = sorted((e.data["step"], e.data["valid_loss"]) for e in events
                   if e.type == "metrics" and e.data and "valid_loss" in e.data)  # fmt: skip
    assert len(evals) == 3 and evals[-1][1] < evals[0][1], evals
    completion = client.completions.create(
        model=job.fine_tuned_model, prompt="Recipe", max_tokens=8
    )
    assert completion.choices[0].text.strip()
