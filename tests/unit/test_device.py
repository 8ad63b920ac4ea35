"""The device seam on CPU: device choice, precision, serving cache and RNG state, fake GPUs."""

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from shared.settings import get_settings
from tests.fake_cuda import FakeCuda
from worker.training import device as device_module
from worker.training import model_cache
from worker.training.checkpoints import capture_rng_state, restore_rng_state
from worker.training.device import inference_dtype, pick_amp_dtype, pick_device
from worker.training.model_cache import ModelCache

GPU = torch.device("cuda")


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch):
    def apply(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()


def test_device_setting_picks_the_gpu(monkeypatch: pytest.MonkeyPatch, settings_env) -> None:
    monkeypatch.setattr(device_module, "cuda", FakeCuda(count=2))
    assert pick_device() == torch.device("cuda")
    settings_env(GPT2FT_DEVICE="cuda:1")
    assert pick_device() == torch.device("cuda:1")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit argument wins
    monkeypatch.setattr(device_module, "cuda", FakeCuda(count=0))
    settings_env(GPT2FT_DEVICE="auto")
    assert pick_device() == torch.device("cpu")


def test_device_setting_refuses_nonsense(settings_env) -> None:
    settings_env(GPT2FT_DEVICE="gpu0")
    with pytest.raises(ValueError, match="device"):
        get_settings()


def test_emulated_bf16_takes_the_fp16_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "cuda", FakeCuda(bf16=False))
    assert pick_amp_dtype(GPU) == torch.float16
    monkeypatch.setattr(device_module, "cuda", FakeCuda(bf16=True))
    assert pick_amp_dtype(GPU) == torch.bfloat16 == inference_dtype(GPU)
    assert pick_amp_dtype(torch.device("cpu")) is None
    assert inference_dtype(torch.device("cpu")) == torch.float32


def test_serving_cache_caps_the_gpu_and_frees_evicted_models(
    monkeypatch: pytest.MonkeyPatch, settings_env
) -> None:
    fake = FakeCuda()
    monkeypatch.setattr(device_module, "cuda", fake)
    monkeypatch.setattr(model_cache, "_capped", set())
    settings_env(GPT2FT_INFERENCE_MEMORY_FRACTION="0.3")
    loaded: list[tuple[str, torch.device]] = []

    def load(location: str, device: torch.device) -> tuple[Any, Any]:
        loaded.append((location, device))
        return f"model {location}", f"tokenizer {location}"

    cache = ModelCache(load, lambda: 2)
    assert cache.get("a") == ("model a", "tokenizer a")
    cache.get("b")
    cache.get("a")
    assert fake.calls == [("memory_fraction", 0.3)]  # capped once, before the first load
    cache.get("c")  # evicts b, the least recently used
    assert cache.locations() == ["a", "c"]
    assert fake.calls == [("memory_fraction", 0.3), ("empty_cache", None)]
    assert loaded == [("a", GPU), ("b", GPU), ("c", GPU)]


def test_resume_with_fewer_gpus_than_the_checkpoint_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    # Checkpoints used to hold one CUDA RNG state per visible GPU (here: four).
    random.seed(1)
    state = capture_rng_state(torch.device("cpu"))
    state["cuda"] = [torch.tensor([40 + i], dtype=torch.uint8) for i in range(4)]
    fake = FakeCuda(count=1)
    monkeypatch.setattr(device_module, "cuda", fake)
    restore_rng_state(state, GPU)  # set_rng_state_all would raise IndexError here
    assert fake.rng[0].tolist() == [40]
    # New checkpoints keep only the training device's state.
    fake.rng[0] = torch.tensor([7], dtype=torch.uint8)
    saved = capture_rng_state(GPU)
    assert saved["cuda"].tolist() == [7]
    fake.rng[0] = torch.tensor([0], dtype=torch.uint8)
    restore_rng_state(saved, GPU)
    assert fake.rng[0].tolist() == [7]
    # A GPU checkpoint resumed on a CPU-only worker: the CUDA state is not needed there.
    restore_rng_state(saved, torch.device("cpu"))


def test_release_memory_empties_the_cache_only_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda()
    monkeypatch.setattr(device_module, "cuda", fake)
    device_module.release_memory(torch.device("cpu"))
    assert fake.calls == []
    device_module.release_memory(GPU)
    assert fake.calls == [("empty_cache", None)]
    monkeypatch.setattr(device_module, "cuda", SimpleNamespace(is_available=lambda: False))
    device_module.release_memory()  # no GPU: nothing to call
