"""Completions from a base or fine-tuned model, OpenAI-shaped, with a small model cache.

One decoding loop (ours, not `model.generate`) serves plain and streamed requests alike: it
sees the raw next-token logits (logprobs are their log-softmax, before temperature and top_p),
hands each choice's new text to a callback as it is produced (streaming), and checks stop
strings, the deadline and cancellation after every token. A plain answer is the
concatenation of the same chunks a stream sends, so both carry the same text.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from shared.settings import get_settings
from worker.training.device import inference_dtype
from worker.training.model_cache import ModelCache
from worker.training.model_loading import load_causal_lm, load_tokenizer

# A chunk of one choice: {"index", "text", "logprobs": [token entry] | None, "finish_reason"}.
Chunk = dict[str, Any]
OnChunk = Callable[[Chunk], None]


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


def held_back(text: str, stop: list[str]) -> int:
    """How many characters at text's end may still become a stop string (or a whole
    character: a token can end inside a UTF-8 sequence, which decodes to U+FFFD for now)."""
    hold = max(
        (
            k
            for s in stop
            for k in range(min(len(s) - 1, len(text)), 0, -1)
            if s.startswith(text[-k:])
        ),
        default=0,
    )
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":
        hold += 1
    return hold


class DeadlineExceeded(Exception):
    """The request's deadline passed: nobody waits for the answer any more."""


class _PastDeadline(Exception):
    """Raised inside the loop; generate() turns it into DeadlineExceeded with a count."""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet back to bytes (the inverse of its bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The exact bytes a token stands for (GPT-2 tokens can split a UTF-8 character)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    decoder = _byte_decoder()
    if all(c in decoder for c in piece):
        return bytes(decoder[c] for c in piece)
    return str(tokenizer.decode([int(token_id)])).encode()


def token_text(raw: bytes) -> str:
    """A token as text; part of a character reads `bytes:\\xe2\\x80`, as in OpenAI's answers."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def token_entry(
    tokenizer: Any,
    token_id: int,
    logprob: float | None,
    offset: int,
    top: list[tuple[int, float]] | None,
) -> dict[str, Any]:
    """One token's logprob entry: text, bytes, offset in the choice's text, top alternatives."""
    raw = token_bytes(tokenizer, token_id)
    entry: dict[str, Any] = {"token": token_text(raw), "logprob": logprob, "bytes": list(raw)}
    entry["offset"] = offset
    entry["top"] = None if top is None else [
        {"token": token_text(b := token_bytes(tokenizer, i)), "logprob": lp, "bytes": list(b)}
        for i, lp in top
    ]  # fmt: skip
    return entry


@dataclass
class _Row:
    """One choice being generated."""

    index: int
    base: int  # the prompt's length: token offsets count from the prompt's start, as OpenAI's
    prefix: str  # the echoed prompt, sent with the first chunk
    ids: list[int] = field(default_factory=list)
    raw: bytes = b""  # the new tokens' bytes
    pending: list[dict[str, Any]] = field(default_factory=list)  # logprob entries not yet sent
    sent: int = 0  # characters of the new text already sent
    started: bool = False
    finish_reason: str | None = None
    closed: bool = False


def _top(logprobs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    if k <= 0:
        return []
    values, ids = torch.topk(logprobs, k)
    return list(zip(ids.tolist(), values.tolist(), strict=True))


def _pick(logits: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else sampled as Hugging Face's warpers do
    (temperature, then top_k, then top_p keeping at least one token)."""
    if options["temperature"] == 0:
        return logits.argmax(dim=-1)
    scores = logits / options["temperature"]
    top_k = options["top_k"]
    if top_k:  # 0 or None disables top-k: OpenAI's API samples from the whole distribution
        kth = torch.topk(scores, min(top_k, scores.shape[-1])).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if options["top_p"] < 1:
        ordered, order = torch.sort(scores, descending=False)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - options["top_p"]
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(-1)


class _Decoder:
    """Generates the choices of one prompt, sending each one's text as it becomes final."""

    def __init__(self, model: Any, tokenizer: Any, options: dict[str, Any], on_chunk: OnChunk):
        self.model, self.tokenizer, self.on_chunk = model, tokenizer, on_chunk
        self.options = options
        self.stop = [s for s in options["stop"] or [] if s]
        self.top_logprobs: int | None = options["logprobs"]

    def run(self, prompt: str, prompt_ids: list[int], rows: list[_Row], max_tokens: int) -> None:
        """Generate rows: one batch row each, or one shared by all at temperature 0."""
        greedy = self.options["temperature"] == 0
        batch = 1 if greedy else len(rows)
        inputs = torch.tensor([prompt_ids] * batch, device=self.model.device)
        past = None
        for step in range(max_tokens):
            deadline = self.options["deadline"]
            if deadline is not None and time.time() >= deadline:
                raise _PastDeadline
            with torch.no_grad():
                out = self.model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = out.past_key_values
            if step == 0 and self.options["echo"] and self.top_logprobs is not None and prompt:
                self._echo_entries(prompt_ids, out.logits[0].float(), rows)
            logits = out.logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            chosen = _pick(logits, self.options)
            for b in range(batch):
                targets = rows if greedy else [rows[b]]
                if targets[0].finish_reason is None:
                    self._advance(targets, int(chosen[b]), logprobs[b])
            if all(row.finish_reason is not None for row in rows):
                break
            inputs = chosen[:, None]
        for row in rows:
            row.finish_reason = row.finish_reason or "length"
            self._send(row)

    def _echo_entries(self, prompt_ids: list[int], logits: torch.Tensor, rows: list[_Row]) -> None:
        """Logprob entries for the echoed prompt: the first token has none (nothing precedes it)."""
        logprobs = torch.log_softmax(logits, dim=-1)
        entries, raw = [], b""
        for i, token_id in enumerate(prompt_ids):
            offset = len(raw.decode("utf-8", errors="ignore"))
            value, top = None, None
            if i > 0:
                value, top = (
                    float(logprobs[i - 1, token_id]),
                    _top(logprobs[i - 1], self.top_logprobs or 0),
                )
            entries.append(token_entry(self.tokenizer, token_id, value, offset, top))
            raw += token_bytes(self.tokenizer, token_id)
        for row in rows:
            row.pending = [dict(entry) for entry in entries]

    def _advance(self, rows: list[_Row], token_id: int, logprobs: torch.Tensor) -> None:
        """Add token_id to rows (greedy rows share it), then send what has become final."""
        if token_id == self.tokenizer.eos_token_id:
            for row in rows:
                row.finish_reason = "stop"  # <|endoftext|> ends the text and is not part of it
                self._send(row)
            return
        raw = token_bytes(self.tokenizer, token_id)
        top = _top(logprobs, self.top_logprobs) if self.top_logprobs is not None else None
        for row in rows:
            if self.top_logprobs is not None:
                offset = row.base + len(row.raw.decode("utf-8", errors="ignore"))
                value = float(logprobs[token_id])
                row.pending.append(token_entry(self.tokenizer, token_id, value, offset, top))
            row.ids.append(token_id)
            row.raw += raw
            self._send(row)

    def _send(self, row: _Row) -> None:
        """Send the row's text that no later token can change, with its tokens' logprobs."""
        if row.closed:
            return
        # Byte-level BPE: the text is the tokens' bytes as UTF-8 (what tokenizer.decode gives).
        text, hit_stop = cut_at_stop(row.raw.decode("utf-8", errors="replace"), self.stop)
        if hit_stop:
            row.finish_reason = "stop"
        final = row.finish_reason is not None
        ready = max(row.sent, len(text) if final else len(text) - held_back(text, self.stop))
        whole = final and not hit_stop  # every token is in the text; else those before `ready`
        release = [e for e in row.pending if whole or e["offset"] - row.base < ready]
        piece = text[row.sent : ready] if row.started else row.prefix + text[:ready]
        if not (piece or release or final):
            return
        row.pending = row.pending[len(release) :]
        row.sent, row.started, row.closed = ready, True, final
        self.on_chunk({
            "index": row.index,
            "text": piece,
            "logprobs": release if self.top_logprobs is not None else None,
            "finish_reason": row.finish_reason if final else None,
        })  # fmt: skip


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
    logprobs: int | None = None,
    on_chunk: OnChunk | None = None,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """OpenAI-style completions: n choices per prompt, prompt-major, with usage counts.

    logprobs: how many alternatives each token lists (None: no logprobs at all).
    on_chunk: called with each piece of a choice's text as it becomes final (streaming);
    whatever it raises stops generation and comes out of generate().
    on_start: called once every prompt has passed its checks, before the first token.
    deadline (time.time() seconds): generation stops there and DeadlineExceeded is raised.
    """
    model, tokenizer = cached_model(location)
    options = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "stop": stop}
    options.update(echo=echo, deadline=deadline, logprobs=logprobs)
    context = model.config.n_positions
    # An empty prompt starts from <|endoftext|>, as GPT-2 was trained to.
    encoded = [tokenizer(prompt).input_ids or [tokenizer.eos_token_id] for prompt in prompts]
    for prompt_ids in encoded:
        if len(prompt_ids) + max_tokens > context:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"model's context of {context} tokens; shorten the prompt or lower max_tokens"
            )
    if on_start is not None:
        on_start()
    total = len(prompts) * n
    texts: list[list[str]] = [[] for _ in range(total)]
    choices = [
        {"text": "", "index": i, "logprobs": None, "finish_reason": None} for i in range(total)
    ]

    def collect(chunk: Chunk) -> None:
        choice = choices[chunk["index"]]
        texts[chunk["index"]].append(chunk["text"])
        if chunk["logprobs"] is not None:
            choice["logprobs"] = (choice["logprobs"] or []) + chunk["logprobs"]
        choice["finish_reason"] = chunk["finish_reason"]
        if on_chunk is not None:
            on_chunk(chunk)

    decoder = _Decoder(model, tokenizer, options, collect)
    rows: list[_Row] = []
    devices = [model.device] if model.device.type == "cuda" else []
    # fork_rng: a seeded request must not reset the RNG other requests draw from.
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for prompt, prompt_ids in zip(prompts, encoded, strict=True):
            mine = [_Row(len(rows) + i, len(prompt), prompt if echo else "") for i in range(n)]
            rows += mine
            try:
                decoder.run(prompt, prompt_ids, mine, max_tokens)
            except _PastDeadline:
                done = f"{sum(row.closed for row in rows)} of {total} choices"
                raise DeadlineExceeded(f"generation stopped at the deadline after {done}") from None
    for choice, pieces in zip(choices, texts, strict=True):
        choice["text"] = "".join(pieces)
    prompt_tokens = sum(len(ids) for ids in encoded)
    completion_tokens = sum(len(row.ids) for row in rows)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return {"choices": choices, "usage": usage}
