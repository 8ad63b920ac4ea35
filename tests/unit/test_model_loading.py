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
