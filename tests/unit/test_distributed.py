"""n_gpus pieces that need no process group: shards, the report relay, the GPU count check."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from worker.run_job import gpu_count_problem
from worker.training import device
from worker.training.callbacks import RecordingCallbacks
from worker.training.distributed import Ranks, shard
from worker.training.launch import EventRelay


def ranks(rank: int, world: int) -> Ranks:
    return Ranks(rank, world, model=None, device=torch.device("cpu"))


def test_shards_cover_the_batch_once_and_an_empty_share_idles() -> None:
    index = torch.tensor([9, 4, 7, 1, 3])
    shares = [shard(ranks(r, 2), index).tolist() for r in (0, 1)]
    assert shares == [[9, 7, 3], [4, 1]]
    assert shard(None, index) is index

    lone = ranks(1, 2)
    assert shard(lone, torch.tensor([6])).tolist() == [6] and lone.idle  # a stand-in row
    busy = ranks(0, 2)
    assert shard(busy, torch.tensor([6])).tolist() == [6] and not busy.idle


def test_relay_replays_complete_lines_once_in_order(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    callbacks = RecordingCallbacks()
    relay = EventRelay(events, callbacks)
    relay.relay()  # nothing written yet
    log = {"kind": "log", "step": 1, "metrics": {"train_loss": 2.0, "tokens_seen": 64}}
    half = json.dumps({"kind": "message", "message": "Epoch 1/1 done", "data": None})
    events.write_text(json.dumps(log) + "\n" + half[:10])
    relay.relay()
    assert callbacks.logs == [(1, log["metrics"])] and callbacks.messages == []
    with events.open("a") as out:
        out.write(half[10:] + "\n")
        out.write(json.dumps({"kind": "checkpoint", "step": 1, "path": "/x", "metrics": {}}))
        out.write("\n")
    relay.relay()
    relay.relay()
    assert callbacks.messages == ["Epoch 1/1 done"]
    assert callbacks.checkpoints == [(1, Path("/x"), {})]
    assert (relay.step, relay.tokens) == (1, 64)


def test_gpu_count_check(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(is_available=lambda: True, device_count=lambda: 2)
    monkeypatch.setattr(device, "cuda", fake)
    assert gpu_count_problem(2, "cuda") is None
    assert gpu_count_problem(4, "cuda") == "n_gpus 4: this worker has 2 GPUs"
    assert gpu_count_problem(4, "cpu") is None  # a CPU worker runs the ranks with gloo
    assert gpu_count_problem(1, "cuda") is None
