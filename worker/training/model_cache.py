"""Models kept loaded for serving: least recently used evicted, its GPU memory handed back."""

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from shared.settings import get_settings
from worker.training import device as device_module
from worker.training.device import pick_device, release_memory

_capped: set[str] = set()
_capped_lock = threading.Lock()


def inference_device() -> torch.device:
    """The serving device; on a GPU, this process is first capped to its share of memory.

    Training runs in another process on the same GPU: without the cap, cached models and
    generation buffers would grow into the memory a running job needs.
    """
    device = pick_device()
    if device.type == "cuda":
        with _capped_lock:
            if str(device) not in _capped:
                fraction = get_settings().inference_memory_fraction
                device_module.cuda.set_per_process_memory_fraction(fraction, device)
                _capped.add(str(device))
    return device


class ModelCache:
    """(model, tokenizer) per location, loaded by load(location, device); at most size() kept."""

    def __init__(
        self, load: Callable[[str, torch.device], tuple[Any, Any]], size: Callable[[], int]
    ) -> None:
        self._load = load
        self._size = size
        self._entries: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, location: str) -> tuple[Any, Any]:
        """The entry for location, loading it and evicting the least recently used."""
        with self._lock:
            if location in self._entries:
                self._entries.move_to_end(location)
                return self._entries[location]
            device = inference_device()
            entry = self._load(location, device)
            self._entries[location] = entry
            evicted = False
            while len(self._entries) > self._size():
                self._entries.popitem(last=False)
                evicted = True
            if evicted:
                # The evicted weights are unreachable now; give their memory back to the GPU.
                release_memory(device)
            return entry

    def locations(self) -> list[str]:
        """What is loaded, least recently used first."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        """Forget every loaded model (tests; a model folder that changed on disk)."""
        with self._lock:
            self._entries.clear()
        release_memory()
