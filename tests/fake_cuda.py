"""A stand-in for torch.cuda on CPU-only machines, for worker.training.device's seam."""

from typing import Any

import torch


class FakeCuda:
    """A host with `count` GPUs as torch.cuda would describe it, recording what is asked."""

    def __init__(self, count: int = 1, bf16: bool = True, **memory: int) -> None:
        self.count, self.bf16 = count, bf16
        # free, total, reserved, allocated: bytes as mem_get_info and the allocator report them.
        self.memory = {"free": 0, "total": 0, "reserved": 0, "allocated": 0, **memory}
        self.calls: list[tuple[str, Any]] = []
        self.rng = {index: torch.tensor([index], dtype=torch.uint8) for index in range(count)}

    def is_available(self) -> bool:
        return self.count > 0

    def device_count(self) -> int:
        return self.count

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        # A T4: bf16 only by emulation.
        return self.bf16 or including_emulation

    def set_per_process_memory_fraction(self, fraction: float, device: Any = None) -> None:
        self.calls.append(("memory_fraction", fraction))

    def empty_cache(self) -> None:
        self.calls.append(("empty_cache", None))

    def _index(self, device: Any) -> int:
        index = torch.device(device).index or 0
        if index >= self.count:
            raise IndexError(f"no GPU {index}: only {self.count} visible")
        return index

    def get_rng_state(self, device: Any = "cuda") -> torch.Tensor:
        return self.rng[self._index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device: Any = "cuda") -> None:
        self.rng[self._index(device)] = state.clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [self.rng[index] for index in range(self.count)]

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for index, state in enumerate(states):
            self.set_rng_state(state, index)

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        return self.memory["free"], self.memory["total"]

    def memory_reserved(self, device: Any = None) -> int:
        return self.memory["reserved"]

    def memory_allocated(self, device: Any = None) -> int:
        return self.memory["allocated"]
