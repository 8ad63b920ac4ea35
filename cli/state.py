"""Which service the client commands call: the environment, else what `gpt2ft run` left."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import get_settings

DEFAULT_API_URL = "http://127.0.0.1:8000"
# `gpt2ft run` writes this under the home folder once its API answers and removes it on exit.
RUN_STATE_FILE = "run.json"
DEV_KEY_FILE = "dev-api-key"


class ClientSettings(BaseSettings):
    """GPT2FT_API_URL and GPT2FT_API_KEY: set them to call a service other than `make run`."""

    model_config = SettingsConfigDict(env_prefix="GPT2FT_", extra="ignore")

    api_url: str | None = None
    api_key: str | None = None


@dataclass(frozen=True)
class RunState:
    """What a running `gpt2ft run` serves: its URL, its dev key and its process id."""

    url: str
    api_key: str
    pid: int


@dataclass(frozen=True)
class Target:
    """The service and key a client command uses, each with where it came from."""

    url: str
    url_source: str
    api_key: str | None
    key_source: str


def run_state_path(home: Path) -> Path:
    """<home>/run.json."""
    return home / RUN_STATE_FILE


def write_run_state(home: Path, url: str, api_key: str) -> Path:
    """Record this process as the running service (mode 600: the file holds the key)."""
    path = run_state_path(home)
    partial = path.with_name(f".{RUN_STATE_FILE}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": url, "api_key": api_key, "pid": os.getpid()}, out)
    partial.replace(path)  # readers see the old file or the whole new one
    return path


def remove_run_state(home: Path) -> None:
    """Remove the state file if this process wrote it (a newer `gpt2ft run` keeps its own)."""
    path = run_state_path(home)
    state = _load(path)
    if state is not None and state.pid == os.getpid():
        path.unlink(missing_ok=True)


def read_run_state(home: Path) -> RunState | None:
    """The running `gpt2ft run`'s state; None when absent, unreadable or its process is gone."""
    state = _load(run_state_path(home))
    if state is None or not _alive(state.pid):
        return None  # a kill -9 leaves the file behind: a dead pid means nothing listens
    return state


def _load(path: Path) -> RunState | None:
    try:
        raw = json.loads(path.read_text())
        return RunState(url=str(raw["url"]), api_key=str(raw["api_key"]), pid=int(raw["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def is_loopback(url: str) -> bool:
    """True for a URL on this machine: the only kind the local dev key is sent to."""
    host = urlsplit(url).hostname or ""
    return host in {"127.0.0.1", "localhost", "::1"}


def resolve_target() -> Target:
    """GPT2FT_API_URL/KEY, else the running `gpt2ft run`, else port 8000 and the saved dev key."""
    client = ClientSettings()
    home = get_settings().home
    state = read_run_state(home)
    state_source = f"`gpt2ft run` ({run_state_path(home)})"
    if client.api_url:
        url, url_source = client.api_url.rstrip("/"), "GPT2FT_API_URL"
    elif state is not None:
        url, url_source = state.url, state_source
    else:
        url, url_source = DEFAULT_API_URL, "the default"
    saved = home / DEV_KEY_FILE
    key: str | None = None
    key_source = "none: set GPT2FT_API_KEY"
    if client.api_key:
        key, key_source = client.api_key, "GPT2FT_API_KEY"
    elif not is_loopback(url):
        key_source += f" (the local dev key is never sent to {url})"
    elif state is not None and url == state.url:
        key, key_source = state.api_key, state_source
    elif saved.is_file() and saved.read_text().strip():
        key, key_source = saved.read_text().strip(), str(saved)
    else:
        key_source += f", or start `make run` (it saves a key in {saved})"
    return Target(url, url_source, key, key_source)
