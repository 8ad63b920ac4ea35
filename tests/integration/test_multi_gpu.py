"""n_gpus: real torchrun ranks (gloo on CPU) against one process on the same global batches."""

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from shared.catalog import find_base_model
from shared.settings import get_settings
from shared.spec import Hyperparameters
from worker.training.callbacks import RecordingCallbacks, StopReason
from worker.training.classify import count_targets
from worker.training.engine import TrainResult, train
from worker.training.examples import Examples, pad_right
from worker.training.launch import RankFailed, train_on_ranks
from worker.training.plan import plan_training
from worker.training.tiny import TINY_CONFIG, build_random_gpt2

SEED, BATCH, ROWS = 5, 4, 17  # 17 rows: the epoch's last batch has one row, rank 1 idles
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, models_dir: Path):
    """A dropout-free gpt2-tiny, a 2-rank spec and padded rows of very different lengths."""
    # fp32 on every CPU: bf16 rounding differs with the ranks' batch shapes (1e-4 below).
    env = pytest.MonkeyPatch()
    env.setenv("GPT2FT_CPU_BF16", "false")
    get_settings.cache_clear()
    models = tmp_path_factory.mktemp("models")
    build_random_gpt2(models / "tiny-nodrop", tokenizer_dir, {**TINY_CONFIG, **NO_DROPOUT}, "")
    base = find_base_model("tiny-nodrop", models)
    assert base is not None
    hp = Hyperparameters(
        n_epochs=2, batch_size=BATCH, block_size=16, learning_rate=5e-3,
        gradient_accumulation_steps=2,
    )  # fmt: skip
    spec = plan_training(hp, base, ["warm up " * 40], None, seed=SEED).spec
    spec = spec.model_copy(update={"validation_split": 0.0, "keep": "last", "n_gpus": 2})
    lengths = torch.randint(3, 60, (ROWS,), generator=torch.Generator().manual_seed(1))
    # Even rows repeat a pattern the model learns within a few steps, odd rows are noise:
    # per-row losses soon differ, so how the ranks' losses are weighted shows.
    rows = [
        ([7, 8, 9] * 20)[: int(n)] if i % 2 == 0 else torch.randint(0, 500, (int(n),)).tolist()
        for i, n in enumerate(lengths)
    ]
    ids, mask, labels = pad_right(rows, rows, pad_id=50256)
    data = Examples(ids, mask, labels)
    valid = Examples(ids[:3], mask[:3], labels[:3])
    yield spec, data, valid
    env.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory: pytest.TempPathFactory) -> RecordingCallbacks:
    spec, data, valid = setup
    callbacks = RecordingCallbacks()
    out = tmp_path_factory.mktemp("single")
    one = spec.model_copy(update={"n_gpus": 1})
    train(one, data, valid, out / "checkpoints", out / "model", callbacks, log_every_steps=1)
    return callbacks


@dataclass
class StopAfter(RecordingCallbacks):
    """Answers reason once `logs` steps have been reported."""

    logs_before_stop: int = 1
    reason: StopReason = StopReason.pause

    def should_stop(self) -> StopReason | None:
        return self.reason if len(self.logs) >= self.logs_before_stop else None


def on_ranks(setup, out: Path, callbacks: RecordingCallbacks, **kwargs) -> TrainResult:
    spec, data, valid = setup
    return train_on_ranks(spec, data, valid, out / "checkpoints", out / "model", callbacks,
                          log_every_steps=1, **kwargs)  # fmt: skip


def losses(callbacks: RecordingCallbacks) -> dict[int, float]:
    return {step: metrics["train_loss"] for step, metrics in callbacks.logs}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def rank_pids(out: Path) -> list[int]:
    return [int(p.read_text()) for p in (out / "ranks").glob("rank-*.pid")]


def test_two_ranks_match_one_process_step_by_step(setup, single, tmp_path: Path) -> None:
    callbacks = RecordingCallbacks()
    result = on_ranks(setup, tmp_path, callbacks)

    assert result.stopped is None and result.step == 10
    assert result.model_dir is not None and (result.model_dir / "config.json").is_file()
    ranked, alone = losses(callbacks), losses(single)
    assert sorted(ranked) == sorted(alone) == list(range(1, 11))
    worst = max(abs(ranked[step] - alone[step]) for step in alone)
    assert worst < 1e-4, (worst, ranked, alone)
    assert result.trained_tokens == single.logs[-1][1]["tokens_seen"]
    assert any("Training" in message for message in callbacks.messages)
    assert [step for step, _, _ in callbacks.checkpoints] == [5, 10]


def test_uneven_tokens_per_rank_need_the_token_weighting(setup, single) -> None:
    """With the step-5 weights, the mean of each rank's mean loss is far off the batch's."""
    spec, data, _ = setup
    order = torch.randperm(ROWS, generator=torch.Generator().manual_seed(spec.seed))
    model = AutoModelForCausalLM.from_pretrained(single.checkpoints[0][1]).eval()
    means, counts = [], []
    with torch.no_grad():
        for rank in (0, 1):
            batch = data.batch(order[:BATCH][rank::2], torch.device("cpu"))
            means.append(float(model(**batch).loss))
            counts.append(int(count_targets(batch["labels"])))
    naive = sum(means) / 2
    weighted = sum(m * n for m, n in zip(means, counts, strict=True)) / sum(counts)
    assert counts[0] != counts[1]
    assert abs(naive - weighted) > 1e-3, (naive, weighted, counts)


def test_pause_then_resume_on_two_ranks_continues_exactly(setup, single, tmp_path: Path) -> None:
    first = StopAfter(logs_before_stop=3, reason=StopReason.pause)
    paused = on_ranks(setup, tmp_path, first)
    assert paused.stopped is StopReason.pause
    step, path, _ = first.checkpoints[-1]
    assert 3 <= step < 10 and step == paused.step

    rest = RecordingCallbacks()
    result = on_ranks(setup, tmp_path, rest, resume_from=path)

    assert result.stopped is None and result.step == 10
    resumed, alone = losses(rest), losses(single)
    assert sorted(resumed) == list(range(step + 1, 11))
    assert max(abs(resumed[s] - alone[s]) for s in resumed) < 1e-4


def test_a_rank_crash_fails_with_its_error_and_no_rank_lingers(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT2FT_DDP_FAIL_AT", "1:3")
    started = time.monotonic()
    message = r"rank 1 failed: RuntimeError: injected failure on rank 1"
    with pytest.raises(RankFailed, match=message):
        on_ranks(setup, tmp_path, RecordingCallbacks())
    assert time.monotonic() - started < 120  # no hang waiting on the dead rank
    pids = rank_pids(tmp_path)
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)


def test_cancel_kills_every_rank_at_once(setup, tmp_path: Path) -> None:
    callbacks = StopAfter(logs_before_stop=1, reason=StopReason.cancel)
    result = on_ranks(setup, tmp_path, callbacks)

    assert result.stopped is StopReason.cancel and result.model_dir is None
    pids = rank_pids(tmp_path)
    assert len(pids) == 2
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids)
    assert not math.isnan(callbacks.logs[0][1]["train_loss"])


def test_command_line_trains_on_ranks(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.training.__main__ import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog.\n" * 60)
    code = main(["--model", str(models_dir / "gpt2-tiny"), "--train-file", str(corpus),
                 "--output", str(tmp_path / "out"), "--n-epochs", "1", "--batch-size", "4",
                 "--block-size", "32", "--n-gpus", "2", "--log-every", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert '"n_gpus": 2' in printed and "step 1 epoch" in printed
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "ranks" / "rank-1.pid").is_file()  # it did run a second rank
