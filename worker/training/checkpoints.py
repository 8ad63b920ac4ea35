"""Checkpoints that are complete or absent: weights, tokenizer and everything resume needs."""

import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.training import device as device_module

# Our own resume state (optimizer, scheduler, RNG, data position); loaded with weights_only.
STATE_FILE = "training_state.pt"
# The same progress in JSON, for people and for the DB row that points at this folder.
INFO_FILE = "training_state.json"
CHECKPOINT_NAME = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    """step-00000042: zero-padded so names sort by step."""
    return f"step-{step:08d}"


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy, torch and the training GPU's RNG states, as weights_only loads them.

    Only the training device's CUDA state: a resume may see fewer GPUs than the save did.
    """
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = device_module.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Undo capture_rng_state: the next random draw is the one the saved run would have made."""
    random.setstate(state["python"])
    saved = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": saved["bit_generator"],
            "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
            "has_gauss": saved["has_gauss"],
            "gauss": saved["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda_state = state.get("cuda")
    if cuda_state is None or device.type != "cuda":
        return  # saved on CPU, or resumed on CPU: CPU draws come from the torch state above
    if isinstance(cuda_state, list):
        # Older checkpoints kept one state per visible GPU; the job trained on the first.
        cuda_state = cuda_state[0]
    device_module.cuda.set_rng_state(cuda_state, device)


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    training_state: dict[str, Any],
    info: dict[str, Any],
) -> Path:
    """Write step-NNNNNNNN atomically (temp folder, then rename); an existing one is kept."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / checkpoint_name(step)
    if final.is_dir():
        # Same step means same state (a pause right after an epoch checkpoint).
        return final
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=checkpoints_dir))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        torch.save(training_state, staging / STATE_FILE)
        (staging / INFO_FILE).write_text(json.dumps({"step": step, **info}, indent=2))
        staging.chmod(0o700)  # users' weights: the owner only
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """The resume state saved by save_checkpoint (tensors and plain types only)."""
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)


def read_checkpoint_info(checkpoint: Path) -> dict[str, float]:
    """The step and metrics recorded with a checkpoint."""
    return json.loads((checkpoint / INFO_FILE).read_text())


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    if not checkpoints_dir.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in checkpoints_dir.iterdir()
        if (match := CHECKPOINT_NAME.match(path.name)) and (path / STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


def remove_partial_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Delete temp folders a crashed save left behind; returns what was removed."""
    if not checkpoints_dir.is_dir():
        return []
    partial = [path for path in checkpoints_dir.iterdir() if path.name.startswith(".")]
    for path in partial:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return partial
