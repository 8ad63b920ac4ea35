"""LR schedules: warmup ramp, then linear, cosine or constant."""

import math

import pytest

from worker.training.schedules import lr_multiplier, warmup_steps_for


def test_warmup_is_ceil_of_ratio() -> None:
    assert warmup_steps_for(0.05, 100) == 5
    assert warmup_steps_for(0.05, 10) == 1
    assert warmup_steps_for(0.0, 10) == 0


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
def test_warmup_ramps_up_then_peaks(name: str) -> None:
    schedule = lr_multiplier(name, 4, 20)
    ramp = [schedule(step) for step in range(4)]
    assert ramp == [0.2, 0.4, 0.6, 0.8]
    assert schedule(4) == 1.0


def test_linear_decays_to_zero() -> None:
    schedule = lr_multiplier("linear", 0, 10)
    assert [schedule(s) for s in (0, 5, 10, 12)] == [1.0, 0.5, 0.0, 0.0]


def test_cosine_is_half_at_midpoint_and_zero_at_end() -> None:
    schedule = lr_multiplier("cosine", 2, 12)
    assert schedule(2) == 1.0
    assert schedule(7) == pytest.approx(0.5)
    assert schedule(12) == pytest.approx(0.0, abs=1e-12)
    values = [schedule(s) for s in range(2, 13)]
    assert values == sorted(values, reverse=True)
    # Cosine stays above linear in the first half: the characteristic shoulder.
    assert schedule(4) > 1 - 2 / 10 and math.isclose(
        schedule(4), 0.5 * (1 + math.cos(0.2 * math.pi))
    )


def test_constant_stays_after_warmup() -> None:
    schedule = lr_multiplier("constant", 1, 10)
    assert [schedule(s) for s in (1, 5, 9, 30)] == [1.0] * 4


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="use one of linear, cosine, constant"):
        lr_multiplier("step", 0, 10)
