"""Base models: the Hugging Face catalog names plus every folder of the models directory."""

import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Catalog name -> hub repository; these load through from_pretrained (cache or hub).
CATALOG: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
# Model names are folder names; nothing else may reach the filesystem.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# HF's run_clm default; a model folder's gpt2ft.json may set its own.
DEFAULT_BASE_LEARNING_RATE = 5e-5
METADATA_FILE = "gpt2ft.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
# The API's check that the hub answers at all: at most this long, the answer kept a minute.
HUB_PROBE_SECONDS = 1.0
HUB_PROBE_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class BaseModelEntry:
    """A base model: where it loads from and what it says about itself."""

    name: str
    source: str  # "local" or "catalog"
    location: str  # folder path for local, hub repository for catalog
    created: int
    metadata: dict[str, Any]

    @property
    def base_learning_rate(self) -> float:
        """The learning rate that learning_rate_multiplier=1 means for this model."""
        return float(self.metadata.get("base_learning_rate", DEFAULT_BASE_LEARNING_RATE))


def _local_model(folder: Path) -> BaseModelEntry:
    meta_path = folder / METADATA_FILE
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return BaseModelEntry(
        name=folder.name,
        source="local",
        location=str(folder.resolve()),
        created=int((folder / "config.json").stat().st_mtime),
        metadata=metadata,
    )


def list_base_models(models_dir: Path) -> list[BaseModelEntry]:
    """Local folders with a config.json, then catalog names no local folder shadows."""
    local: dict[str, BaseModelEntry] = {}
    if models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if MODEL_NAME.match(folder.name) and (folder / "config.json").is_file():
                local[folder.name] = _local_model(folder)
    catalog = [
        BaseModelEntry(name=name, source="catalog", location=repo, created=0, metadata={})
        for name, repo in CATALOG.items()
        if name not in local
    ]
    return list(local.values()) + catalog


def find_base_model(name: str, models_dir: Path) -> BaseModelEntry | None:
    """The base model called name, or None."""
    if not MODEL_NAME.match(name):
        return None
    folder = models_dir / name
    if (folder / "config.json").is_file():
        return _local_model(folder)
    if name in CATALOG:
        return BaseModelEntry(
            name=name, source="catalog", location=CATALOG[name], created=0, metadata={}
        )
    return None


# Availability, torch-free and hub-library-free: the API answers "can this model load here"
# before queueing a request, and the worker (worker/training/model_loading.py) uses the same
# functions and messages before a job or a completion loads it.


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (read at call time: tests and operators flip it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cached_file(repo: str, name: str) -> Path | None:
    """The cached copy of repo's file name at its main revision, or None."""
    folder = hub_cache_dir() / f"models--{repo.replace('/', '--')}"
    try:
        commit = (folder / "refs" / "main").read_text().strip()
    except OSError:
        return None
    path = folder / "snapshots" / commit / name
    return path if path.is_file() else None


def in_hub_cache(repo: str) -> bool:
    """Whether the hub cache holds a loadable copy: config, safetensors weights, tokenizer."""
    return (
        cached_file(repo, "config.json") is not None
        and any(cached_file(repo, name) for name in WEIGHT_FILES)
        and any(cached_file(repo, name) for name in TOKENIZER_FILES)
    )


def missing_local_files(folder: Path) -> list[str]:
    """What a local model folder lacks to load (empty when complete)."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        hint = " (only pytorch_model.bin found: re-save with save_pretrained)"
        has_bin = (folder / "pytorch_model.bin").is_file()
        missing.append("model.safetensors" + (hint if has_bin else ""))
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json or vocab.json + merges.txt)")
    return missing


def incomplete_folder_message(base: BaseModelEntry, missing: list[str]) -> str:
    """What to do about a local model folder that lacks files."""
    return (
        f"model {base.name} in {base.location} is incomplete: missing {', '.join(missing)}; "
        "save it with model.save_pretrained() and tokenizer.save_pretrained() into that folder"
    )


def unavailable_message(base: BaseModelEntry, models_dir: Path, reason: str) -> str:
    """What to do about a catalog model this host cannot load (the job's and the API's text)."""
    return (
        f"model {base.name} is not in the local Hugging Face cache and {reason}; "
        f"on a machine with internet run `hf download {base.location}` and copy "
        f"~/.cache/huggingface, or save it with save_pretrained into {models_dir / base.name}"
    )


_probe_lock = threading.Lock()
_probe: dict[str, tuple[float, bool]] = {}


def _connect(host: str, port: int, answer: list[bool]) -> None:
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
        answer.append(True)
    except OSError:
        answer.append(False)


def hub_reachable() -> bool:
    """Whether a TCP connection to the hub (HF_ENDPOINT) opens within HUB_PROBE_SECONDS.

    In a thread: name resolution has no timeout of its own and may hang far longer. The
    answer is kept HUB_PROBE_TTL_SECONDS, so a listing or request pays for it once a minute.
    """
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    match = re.match(r"^(https?)://([^/:]+)(?::(\d+))?", endpoint)
    if match is None:
        return False
    host = match.group(2)
    port = int(match.group(3) or (443 if match.group(1) == "https" else 80))
    with _probe_lock:
        known = _probe.get(endpoint)
        if known is not None and time.monotonic() - known[0] < HUB_PROBE_TTL_SECONDS:
            return known[1]
        answer: list[bool] = []
        thread = threading.Thread(target=_connect, args=(host, port, answer), daemon=True)
        thread.start()
        thread.join(HUB_PROBE_SECONDS)
        reachable = bool(answer and answer[0])
        _probe[endpoint] = (time.monotonic(), reachable)
        return reachable


def unavailable_reason(base: BaseModelEntry, models_dir: Path) -> str | None:
    """Why base cannot load on this host (the user's instructions), or None when it can.

    A catalog model not in the hub cache can load only if the hub answers: offline
    (HF_HUB_OFFLINE) it cannot; online, a worker downloads it on first use.
    """
    if base.source == "local":
        missing = missing_local_files(Path(base.location))
        return incomplete_folder_message(base, missing) if missing else None
    if in_hub_cache(base.location):
        return None
    if hub_offline() or not hub_reachable():
        return unavailable_message(base, models_dir, "the hub cannot be reached")
    return None
