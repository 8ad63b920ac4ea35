"""Streaming and logprobs through the official openai SDK against the real processes."""

import json
from pathlib import Path

import httpx
import redis
import torch
from transformers import AutoModelForCausalLM, GPT2TokenizerFast

from tests.e2e.conftest import Service, wait_until

TINY = "gpt2-tiny"


def test_sdk_streams_the_same_text_as_a_plain_completion(client) -> None:
    plain = client.completions.create(model=TINY, prompt="Once upon", max_tokens=24, temperature=0)
    stream = client.completions.create(
        model=TINY,
        prompt="Once upon",
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 1 and "".join(texts) == plain.choices[0].text
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage

    # n > 1 streams each choice under its index; a seed makes it repeatable.
    body = {"model": TINY, "prompt": "Hi", "max_tokens": 8, "n": 3, "seed": 11}
    sampled = client.completions.create(**body)
    by_index: dict[int, str] = {}
    for chunk in client.completions.create(**body, stream=True):
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + choice.text
    assert by_index == {c.index: c.text for c in sampled.choices}


def test_stream_is_sse_ending_with_done(service: Service) -> None:
    headers = {"Authorization": f"Bearer {service.api_key}"}
    body = {"model": TINY, "prompt": "Hello", "max_tokens": 5, "stream": True}
    with httpx.stream(
        "POST", f"{service.url}/v1/completions", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])
    # Errors the worker finds before the first token are still plain HTTP errors.
    body = {**body, "prompt": "hello " * 250, "max_tokens": 16}
    response = httpx.post(f"{service.url}/v1/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 400
    assert "exceeds the model's context" in response.json()["error"]["message"]


def test_logprobs_equal_the_models_log_softmax(client, models_dir: Path) -> None:
    prompt = "The quick brown"
    answer = client.completions.create(
        model=TINY, prompt=prompt, max_tokens=6, temperature=0.8, seed=3, logprobs=5
    )
    logprobs = answer.choices[0].logprobs
    streamed = client.completions.create(
        model=TINY, prompt=prompt, max_tokens=6, temperature=0.8, seed=3, logprobs=5, stream=True
    )
    streamed_tokens = [t for c in streamed for t in c.choices[0].logprobs.tokens]
    assert streamed_tokens == logprobs.tokens
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert logprobs.text_offset[0] == len(prompt)

    tokenizer = GPT2TokenizerFast.from_pretrained(models_dir / TINY)
    model = AutoModelForCausalLM.from_pretrained(models_dir / TINY).eval()
    prompt_ids = tokenizer(prompt).input_ids
    new_ids = tokenizer(answer.choices[0].text).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + new_ids])).logits[0]
    expected = torch.log_softmax(logits.float(), dim=-1)[len(prompt_ids) - 1 : -1]
    for i, (token_id, row) in enumerate(zip(new_ids, expected, strict=True)):
        assert abs(logprobs.token_logprobs[i] - float(row[token_id])) < 1e-4
        top = torch.topk(row, 5)
        want = {
            tokenizer.decode([t]): float(v) for t, v in zip(top.indices, top.values, strict=True)
        }
        got = logprobs.top_logprobs[i]
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-4 for k in want)


def test_client_disconnect_mid_stream_frees_the_slot(service: Service) -> None:
    headers = {"Authorization": f"Bearer {service.api_key}"}
    store = redis.Redis.from_url(service.env["REDIS_URL"])

    def held() -> int:
        return sum(int(store.zcard(k)) for k in store.scan_iter("gpt2ft:inflight_requests:*"))

    # 16 choices of 240 tokens: the worker is still generating when the client goes.
    body = {"model": TINY, "prompt": "Hi", "max_tokens": 240, "n": 16, "stream": True}
    with httpx.stream(
        "POST", f"{service.url}/v1/completions", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200 and held() == 1
        lines = r.iter_lines()
        assert next(lines).startswith("data: {")
    wait_until(lambda: held() == 0, 10, "the stream's slot to be freed")
    cancelled = [k for k in store.scan_iter("gpt2ft:stream:*:cancel")]
    assert cancelled, "the API did not tell the worker to stop"
    worker_log = service.logs / "worker.log"
    wait_until(lambda: b"the client went away" in worker_log.read_bytes(), 30, "the worker to stop")
