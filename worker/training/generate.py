"""Completions from a base or fine-tuned model, OpenAI-shaped, with a small model cache."""

import time
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from shared.settings import get_settings
from worker.training.device import inference_dtype
from worker.training.model_cache import ModelCache
from worker.training.model_loading import load_causal_lm, load_tokenizer


def load_for_serving(location: str, device: torch.device) -> tuple[Any, Any]:
    """(model, tokenizer) ready to generate: eval mode, 16-bit weights on a GPU."""
    model = load_causal_lm(location, device, inference_dtype(device)).eval()
    return model, load_tokenizer(location)


_cache = ModelCache(load_for_serving, lambda: get_settings().inference_cache_size)


def cached_model(location: str) -> tuple[Any, Any]:
    """(model, tokenizer) for location, loading it and evicting the least recently used."""
    return _cache.get(location)


def clear_cache() -> None:
    """Forget every loaded model (tests; a model folder that changed on disk)."""
    _cache.clear()


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """text up to the earliest stop string, and whether one was found."""
    positions = [index for s in stop if s and (index := text.find(s)) >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True


class DeadlineExceeded(Exception):
    """The request's deadline passed: nobody waits for the answer any more."""


class StopAtDeadline(StoppingCriteria):
    """Ends every row once the clock passes deadline (wall-clock seconds, as the API set it)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """All rows done when the deadline has passed."""
        late = time.time() >= self.deadline
        return torch.full((input_ids.shape[0],), late, dtype=torch.bool, device=input_ids.device)


class StopOnText(StoppingCriteria):
    """Ends a row once its new text contains a stop string, decoding only the row's tail.

    Hugging Face's stop_strings precomputes over the whole vocabulary per call: seconds for
    a few dozen characters, minutes for thousands. A tail decode per step costs microseconds.
    """

    def __init__(self, tokenizer: Any, stop: list[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.start = prompt_length
        # A token decodes to one character at least, or to part of one (4 bytes at most).
        self.window = 4 * max((len(s) for s in self.stop), default=0) + 4

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """One flag per row: its generated text so far holds a stop string."""
        done = [
            any(s in self.tokenizer.decode(row[-self.window :]) for s in self.stop)
            for row in input_ids[:, self.start :].tolist()
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def stopping_criteria(
    tokenizer: Any, stop: list[str] | None, prompt_length: int, deadline: float | None
) -> StoppingCriteriaList:
    """Stop strings and the deadline as criteria model.generate checks after every token."""
    criteria = StoppingCriteriaList()
    if stop:
        criteria.append(StopOnText(tokenizer, stop, prompt_length))
    if deadline is not None:
        criteria.append(StopAtDeadline(deadline))
    return criteria


def _sample(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    max_tokens: int,
    n: int,
    options: dict[str, Any],
) -> list[list[int]]:
    """n continuations of prompt_ids (new token ids only, EOS padding removed)."""
    context = model.config.n_positions
    if len(prompt_ids) + max_tokens > context:
        raise ValueError(
            f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
            f"model's context of {context} tokens; shorten the prompt or lower max_tokens"
        )
    greedy = options["temperature"] == 0
    input_ids = torch.tensor([prompt_ids], device=model.device)
    sampling: dict[str, Any] = {"do_sample": False} if greedy else {
        "do_sample": True,
        "temperature": options["temperature"],
        "top_p": options["top_p"],
        # 0 disables top-k: OpenAI's API samples from the whole (top_p) distribution.
        "top_k": options["top_k"] or 0,
        "num_return_sequences": n,
    }  # fmt: skip
    with torch.no_grad():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_tokens,
            pad_token_id=tokenizer.eos_token_id,
            stopping_criteria=stopping_criteria(
                tokenizer, options["stop"], len(prompt_ids), options["deadline"]
            ),
            **sampling,
        )
    rows = output[:, len(prompt_ids) :].tolist()
    if greedy:
        rows = rows * n  # greedy decoding gives the same text every time
    return rows


def _choice(tokenizer: Any, prompt: str, new_ids: list[int], options: dict[str, Any]) -> dict:
    eos = tokenizer.eos_token_id
    hit_eos = eos in new_ids
    if hit_eos:
        new_ids = new_ids[: new_ids.index(eos)]
    text, hit_stop = cut_at_stop(tokenizer.decode(new_ids), options["stop"] or [])
    finish_reason = "stop" if hit_eos or hit_stop else "length"
    return {
        "text": prompt + text if options["echo"] else text,
        "finish_reason": finish_reason,
        "completion_tokens": len(new_ids),
    }


def generate(
    location: str,
    prompts: list[str],
    max_tokens: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    n: int = 1,
    stop: list[str] | None = None,
    seed: int | None = None,
    echo: bool = False,
    top_k: int | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """OpenAI-style completions: n choices per prompt, prompt-major, with usage counts.

    deadline (time.time() seconds): generation stops there and DeadlineExceeded is raised.
    """
    model, tokenizer = cached_model(location)
    options = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "stop": stop}
    options.update(echo=echo, deadline=deadline)
    choices: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    devices = [model.device] if model.device.type == "cuda" else []
    # fork_rng: a seeded request must not reset the RNG other requests draw from.
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for prompt in prompts:
            # An empty prompt starts from <|endoftext|>, as GPT-2 was trained to.
            prompt_ids = tokenizer(prompt).input_ids or [tokenizer.eos_token_id]
            prompt_tokens += len(prompt_ids)
            rows = _sample(model, tokenizer, prompt_ids, max_tokens, n, options)
            if deadline is not None and time.time() >= deadline:
                done = f"{len(choices)} of {len(prompts) * n} choices"
                raise DeadlineExceeded(f"generation stopped at the deadline after {done}")
            for new_ids in rows:
                choice = _choice(tokenizer, prompt, new_ids, options)
                completion_tokens += choice.pop("completion_tokens")
                choices.append({"text": choice["text"], "index": len(choices), "logprobs": None,
                                "finish_reason": choice["finish_reason"]})  # fmt: skip
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return {"choices": choices, "usage": usage}
