"""GPT-2's attention with dropout, as SDPA computes it, with a cheaper dropout mask on a CPU.

GPT-2 trains with attention dropout (attn_pdrop 0.1). With dropout, PyTorch's CPU SDPA takes
its math path, and that path draws the batch x heads x seq x seq mask with bernoulli_, one
generator call per element: 0.42 s a layer for gpt2-small shape at 8 x 512, more than the
attention's own matmuls (bench/NOTES.md). Here the same math path (scores, causal mask,
softmax, dropout, values) draws the mask as uniform floats compared with p, a vectorised
draw 4x faster; every element is still dropped with probability p and the kept ones scaled
by 1/(1-p). Everything else (no dropout: evaluation, generation; a GPU) is plain SDPA.

Registered under ATTENTION with transformers' attention and mask interfaces (masks made
exactly as for "sdpa"); use_fast_attention() switches a loaded model to it. The model's saved
config is not changed by it.
"""

import math
from typing import Any

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "gpt2ft_sdpa"


def attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """(batch, seq, heads, head_dim) attention output, as transformers' sdpa forward returns."""
    if dropout == 0.0 or query.device.type != "cpu" or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    q_length, kv_length = query.shape[2], key.shape[2]
    if attention_mask is None:  # causal: query i (at the end of the keys) sees keys up to it
        rows = torch.arange(q_length, device=query.device)[:, None] + (kv_length - q_length)
        visible = rows >= torch.arange(kv_length, device=query.device)[None, :]
        scores.masked_fill_(~visible, torch.finfo(scores.dtype).min)
    elif attention_mask.dtype == torch.bool:
        scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    keep = torch.rand(probs.shape, device=probs.device) >= dropout
    # where() keeps only the boolean mask for backward, as aten's dropout does.
    probs = torch.where(keep, probs * (1.0 / (1.0 - dropout)), 0.0)
    output = torch.matmul(probs, value)
    return output.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ATTENTION known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def use_fast_attention(model: Any) -> Any:
    """model switched to ATTENTION where it uses SDPA (GPT-2 does), in place."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return model
    register()
    model.set_attn_implementation(ATTENTION)
    return model
