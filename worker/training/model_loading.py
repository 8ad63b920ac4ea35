"""Base-model availability and loading: local folders and Hugging Face catalog names."""

import functools
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from shared.catalog import (
    BaseModelEntry,
    hub_offline,
    in_hub_cache,
    incomplete_folder_message,
    missing_local_files,
    unavailable_message,
)
from shared.chat import CHAT_TEMPLATE
from shared.settings import get_settings

# Only the files a GPT-2 needs: never the .bin/.h5/.msgpack copies a hub repo also holds.
DOWNLOAD_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
]
# A hub that does not answer within this many seconds counts as unreachable.
HUB_TIMEOUT_SECONDS = 10.0


class ModelUnavailable(Exception):
    """A base model that cannot be loaded here; str() is the message to show the user."""


def _unavailable_message(base: BaseModelEntry, reason: str) -> str:
    return unavailable_message(base, get_settings().resolved_models_dir, reason)


def _download_from_hub(base: BaseModelEntry) -> None:
    from huggingface_hub import HfApi, snapshot_download

    try:
        # A quick metadata call first, so an unreachable hub fails in seconds, not minutes.
        HfApi().model_info(base.location, timeout=HUB_TIMEOUT_SECONDS)
        snapshot_download(
            base.location, allow_patterns=DOWNLOAD_PATTERNS, etag_timeout=HUB_TIMEOUT_SECONDS
        )
    except Exception as exc:  # any network/hub failure means the same thing to the user
        reason = f"the hub cannot be reached ({type(exc).__name__})"
        raise ModelUnavailable(_unavailable_message(base, reason)) from None
    if not in_hub_cache(base.location):
        reason = "the hub has no safetensors weights for it"
        raise ModelUnavailable(_unavailable_message(base, reason))


def ensure_available(base: BaseModelEntry) -> None:
    """Raise ModelUnavailable (a user-facing message) unless base can be loaded now.

    The same check as the API's (shared.catalog.unavailable_reason), plus the download of a
    catalog model the hub cache lacks.
    """
    if base.source == "local":
        missing = missing_local_files(Path(base.location))
        if missing:
            raise ModelUnavailable(incomplete_folder_message(base, missing))
        return
    if in_hub_cache(base.location):
        return
    if hub_offline():
        raise ModelUnavailable(_unavailable_message(base, "the hub cannot be reached"))
    _download_from_hub(base)


def _load_kwargs() -> dict[str, Any]:
    # Offline: never let from_pretrained try the network and wait for timeouts.
    return {"local_files_only": True} if hub_offline() else {}


def model_load_kwargs() -> dict[str, Any]:
    """from_pretrained options for weights: no remote code, safetensors only, fp32, SDPA."""
    return {
        "trust_remote_code": False,
        "use_safetensors": True,
        # float32 master weights; mixed precision comes from autocast.
        "dtype": torch.float32,
        "attn_implementation": "sdpa",
        **_load_kwargs(),
    }


def load_tokenizer(location: str) -> Any:
    """The model's tokenizer; GPT-2 has no pad token, so EOS doubles as one.

    A tokenizer without a chat template gets gpt2ft's (shared/chat.py), so every checkpoint
    and model saved with it serves apply_chat_template as the chat route renders prompts.

    Kept per process (a job's pickup would otherwise spend a second parsing the same JSON
    files), until the folder's files change. Callers only read it: nothing sets its options.
    """
    return _cached_tokenizer(location, _files_signature(location))


def _files_signature(location: str) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of a local folder's files; () for a hub id."""
    folder = Path(location)
    if not folder.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(location: str, _signature: tuple[tuple[str, int, int], ...]) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False, **_load_kwargs())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def fused_activations(model: Any) -> Any:
    """model with GPT-2's gelu_new modules swapped for torch's fused tanh GELU, in place.

    The same function (equal within 3e-7 in fp32): gelu_new spells it as eight tensor
    operations, each a pass over the MLP's 4 x width activations, forward and backward;
    torch's kernel makes one (gpt2-small shape on a CPU: 0.54 s -> 0.12 s a layer per step,
    bench/NOTES.md). The config keeps saying gelu_new, so saved models are unchanged.
    """
    from transformers.activations import ACT2FN, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, ACT2FN["gelu_pytorch_tanh"])
    return model


def load_causal_lm(
    location: str, device: str | torch.device, dtype: torch.dtype = torch.float32
) -> Any:
    """The model on device, SDPA attention, fused GELU; float32 to train (autocast adds
    16-bit compute)."""
    model: Any = AutoModelForCausalLM.from_pretrained(
        location, **{**model_load_kwargs(), "dtype": dtype}
    )
    return fused_activations(model).to(device)


def model_context_length(location: str) -> int:
    """n_positions from the model's config (GPT-2's longest sequence)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, trust_remote_code=False, **_load_kwargs())
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{location}: config.json gives no context length (n_positions)")
