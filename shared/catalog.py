"""Base models: the Hugging Face catalog names plus every folder of the models directory."""

import json
import re
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
