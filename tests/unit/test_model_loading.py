"""Base-model availability and loading, offline."""

import shutil
from pathlib import Path

import pytest

from shared.catalog import find_base_model
from worker.training.model_loading import (
    ModelUnavailable,
    ensure_available,
    load_causal_lm,
    load_tokenizer,
    model_context_length,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # An empty cache, so a developer's own ~/.cache cannot make the test pass or fail.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("GPT2FT_MODELS_DIR", str(tmp_path / "models"))
    from shared.settings import get_settings

    get_settings.cache_clear()


def test_catalog_model_offline_says_how_to_get_it(tmp_path: Path) -> None:
    import time

    base = find_base_model("gpt2-medium", tmp_path / "models")
    assert base is not None and base.source == "catalog"
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        ensure_available(base)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "gpt2-medium is not in the local Hugging Face cache" in message
    assert "hf download openai-community/gpt2-medium" in message
    assert str(tmp_path / "models" / "gpt2-medium") in message
    assert "Traceback" not in message


def test_local_tiny_model_is_available_and_loads(models_dir: Path) -> None:
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None
    ensure_available(base)
    tokenizer = load_tokenizer(base.location)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer("hello world").input_ids == [31373, 995]
    model = load_causal_lm(base.location, "cpu")
    assert model.config.n_layer == 2
    assert model_context_length(base.location) == 256


def test_local_folder_without_safetensors_is_refused(models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "broken"
    shutil.copytree(models_dir / "gpt2-tiny", folder)
    (folder / "model.safetensors").unlink()
    base = find_base_model("broken", tmp_path / "models")
    assert base is not None
    with pytest.raises(ModelUnavailable) as caught:
        ensure_available(base)
    assert "missing model.safetensors" in str(caught.value)
    assert "save_pretrained" in str(caught.value)


def test_loaded_models_compute_gelu_new_with_the_fused_kernel(
    models_dir: Path, tmp_path: Path
) -> None:
    import json

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.activations import GELUTanh, NewGELUActivation

    from worker.training.classify import load_classifier

    location = str(models_dir / "gpt2-tiny")
    model = load_causal_lm(location, "cpu")
    classifier = load_classifier(location, torch.device("cpu"), ["a", "b"])
    for loaded in (model, classifier):
        kinds = {type(m) for m in loaded.modules()}
        assert NewGELUActivation not in kinds and GELUTanh in kinds
    # The same function as the stock model's gelu_new, so the same logits.
    stock = AutoModelForCausalLM.from_pretrained(location).eval()
    assert any(type(m) is NewGELUActivation for m in stock.modules())
    ids = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.eval()(input_ids=ids).logits, stock(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    # Saved models still name gelu_new: nothing downstream sees the swap.
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["activation_function"] == "gelu_new"
