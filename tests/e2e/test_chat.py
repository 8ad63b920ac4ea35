"""Chat fine-tuning and chat completions through the official openai SDK, unmodified (#11 A)."""

import io
import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Service, download_model
from tests.e2e.test_sdk_flow import TERMINAL, watch

pytestmark = pytest.mark.e2e


def conversation(question: str, reply: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Answer yes."},
            {"role": "user", "content": question},
            # weight 0: this reply is context, never a target (its text differs on purpose).
            {"role": "assistant", "content": " maybe.", "weight": 0},
            {"role": "user", "content": "Sure?"},
            {"role": "assistant", "content": reply},
        ]
    }


def test_chat_fine_tune_then_chat_completions(client, service: Service, tmp_path: Path) -> None:
    records = [conversation(f"Is {a} less than {b}?", " yes.") for a in range(4) for b in range(4)]
    content = "".join(json.dumps(r) + "\n" for r in records).encode()
    training = client.files.create(file=("chat.jsonl", io.BytesIO(content)), purpose="fine-tune")
    assert training.format == "jsonl" and training.records == 16
    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=training.id,
        hyperparameters={"n_epochs": 5, "batch_size": 2},
        seed=42,
        extra_body={"task": "chat", "max_length": 64, "learning_rate": 1e-2},
    )
    assert watch(client, job.id, TERMINAL)[-1] == "succeeded", client.fine_tuning.jobs.retrieve(
        job.id
    ).error
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.hyperparameters.model_extra["task"] == "chat"

    messages = [
        {"role": "system", "content": "Answer yes."},
        {"role": "user", "content": "Is 7 less than 9?"},
        {"role": "assistant", "content": " maybe."},
        {"role": "user", "content": "Sure?"},
    ]
    chat = client.chat.completions.create(
        model=job.fine_tuned_model, messages=messages, temperature=0, max_completion_tokens=8
    )
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    (choice,) = chat.choices
    assert choice.message.role == "assistant"
    # The trained reply, ended by the turn's <|endoftext|> before max_completion_tokens.
    assert choice.message.content == " yes." and choice.finish_reason == "stop"
    assert chat.usage and chat.usage.completion_tokens < 8 and chat.usage.prompt_tokens > 10

    # Streamed: the same reply in chat.completion.chunk deltas, then the usage chunk.
    stream = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=messages,
        temperature=0,
        max_completion_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert deltas[0].delta.role == "assistant"
    assert "".join(d.delta.content or "" for d in deltas) == " yes."
    assert deltas[-1].finish_reason == "stop"
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    # Log probabilities of the reply's tokens, with two alternatives each.
    scored = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=messages,
        temperature=0,
        max_completion_tokens=8,
        logprobs=True,
        top_logprobs=2,
    )
    tokens = scored.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == " yes."
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob for t in tokens)

    # The downloaded model carries the template: apply_chat_template renders what was served.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = download_model(service, job.fine_tuned_model, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert tokenizer.decode(ids).endswith("Sure?<|endoftext|>Assistant:\n")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    out = model.generate(
        input_ids=torch.tensor([ids]),
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
    )
    assert tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True) == " yes."
    # The served first-token logprob is the downloaded model's log-softmax.
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    first = torch.log_softmax(logits, -1)[int(out[0, len(ids)])].item()
    assert tokens[0].logprob == pytest.approx(first, abs=1e-4)


def test_chat_on_the_base_model_and_refusals(client, service: Service) -> None:
    chat = client.chat.completions.create(
        model="gpt2-tiny",
        messages=[{"role": "developer", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        max_tokens=5,
        n=2,
        seed=1,
        stop=["zzz"],
    )
    assert [c.index for c in chat.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in chat.choices)
    assert chat.usage and chat.usage.completion_tokens <= 10

    headers = {"Authorization": f"Bearer {service.api_key}"}

    def refused(body: dict) -> dict:
        answer = httpx.post(f"{service.url}/v1/chat/completions", json=body, headers=headers)
        assert answer.status_code in (400, 404, 422), answer.text
        return answer.json()["error"]

    hi = [{"role": "user", "content": "Hi"}]
    error = refused({"model": "gpt2-tiny", "messages": hi, "n": 16, "max_tokens": 2048})
    assert "per-request limit" in error["message"]
    error = refused(
        {"model": "gpt2-tiny", "messages": [{"role": "user", "content": "a<|endoftext|>"}]}
    )
    assert error["param"] == "messages[0].content"
    assert refused({"model": "nope", "messages": hi})["param"] == "model"

    # A dry run plans a chat job: examples and tokens, nothing stored.
    content = json.dumps(conversation("Is 1 less than 2?", " yes.")).encode() + b"\n"
    training = client.files.create(file=("one.jsonl", io.BytesIO(content)), purpose="fine-tune")
    body = {"model": "gpt2-tiny", "training_file": training.id, "dry_run": True}
    answer = httpx.post(
        f"{service.url}/v1/fine_tuning/jobs", json=body, headers=headers, timeout=120
    )
    assert answer.status_code == 200, answer.text
    plan = answer.json()["plan"]
    assert plan["task"] == "chat" and plan["train_examples"] == 1 and plan["train_tokens"] > 20
