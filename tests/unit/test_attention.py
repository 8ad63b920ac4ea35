"""worker/training/attention.py: SDPA's math with a cheaper dropout mask (#8)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from worker.training.attention import ATTENTION, attention_forward, use_fast_attention


def qkv(seed: int = 0, q_length: int = 12, kv_length: int = 12) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, 3, length, 8, generator=generator)
        for length in (q_length, kv_length, kv_length)
    ]


def test_without_dropout_it_is_sdpa() -> None:
    query, key, value = qkv()
    ours, _ = attention_forward(None, query, key, value, None, dropout=0.0, scaling=0.3)
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=0.3)
    assert torch.allclose(ours, expected.transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "float"])
def test_with_dropout_kept_entries_equal_sdpas_scaled(mask_kind: str) -> None:
    """A vanishing p drops nothing: the math (scale, mask, softmax, values) is SDPA's."""
    query, key, value = qkv(1, q_length=5, kv_length=12)  # decoding-like: queries at the end
    visible = torch.ones(5, 12, dtype=torch.bool).tril(diagonal=7)
    mask = None
    if mask_kind == "bool":
        mask = visible.expand(2, 1, 5, 12)
    elif mask_kind == "float":
        mask = torch.zeros(2, 1, 5, 12).masked_fill(~visible, torch.finfo(torch.float32).min)
    ours, _ = attention_forward(None, query, key, value, mask, dropout=1e-12)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=visible)
    assert torch.allclose(ours, expected.transpose(1, 2), atol=1e-5)


def test_dropout_drops_p_of_the_weights_and_keeps_the_mean() -> None:
    query, key, value = qkv(2)
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    torch.manual_seed(0)
    draws = torch.stack(
        [attention_forward(None, query, key, value, None, dropout=0.5)[0] for _ in range(400)]
    )
    # Inverted dropout: the mean over draws tends to the undropped output.
    error = (draws.mean(0) - expected.transpose(1, 2)).abs().mean().item()
    assert error < 0.05, error
    assert not torch.allclose(draws[0], draws[1])  # each draw its own mask
    # With a value of ones, each output is the sum of kept weights / (1 - p): about 1 on average.
    ones = torch.ones_like(value)
    sums = torch.stack(
        [attention_forward(None, query, key, ones, None, dropout=0.5)[0] for _ in range(200)]
    )
    assert abs(sums.mean().item() - 1.0) < 0.05


def test_gradients_flow_through_the_kept_weights() -> None:
    query, key, value = (t.requires_grad_() for t in qkv(3))
    output, _ = attention_forward(None, query, key, value, None, dropout=0.1)
    output.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (query, key, value))


def test_a_loaded_gpt2_trains_with_it_and_saves_an_unchanged_config(
    models_dir: Path, tmp_path: Path
) -> None:
    from worker.training.model_loading import load_causal_lm

    model = use_fast_attention(load_causal_lm(str(models_dir / "gpt2-tiny"), "cpu"))
    assert model.config._attn_implementation == ATTENTION
    ids = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():  # no dropout: the same logits as SDPA
        fast = model(input_ids=ids).logits
        model.set_attn_implementation("sdpa")
        plain = model(input_ids=ids).logits
    assert torch.allclose(fast, plain, atol=1e-5)
    model.set_attn_implementation(ATTENTION)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.transformer.h[0].attn.c_attn.weight.grad is not None
    model.save_pretrained(tmp_path / "saved")
    saved = (tmp_path / "saved" / "config.json").read_text()
    assert ATTENTION not in saved and json.loads(saved)["activation_function"] == "gelu_new"
