"""Learning-rate schedules: warmup, then linear decay, cosine decay or constant."""

import math
from collections.abc import Callable

SCHEDULES = ("linear", "cosine", "constant")


def warmup_steps_for(warmup_ratio: float, total_steps: int) -> int:
    """Warmup length in optimizer steps: ceil(ratio x total)."""
    return math.ceil(warmup_ratio * total_steps)


def lr_multiplier(name: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier for LambdaLR: linear ramp over warmup_steps, then the named decay."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr_scheduler {name!r}; use one of {', '.join(SCHEDULES)}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            # (step + 1): the first step already learns, unlike a ramp from exactly 0.
            return (step + 1) / (warmup_steps + 1)
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return multiplier
