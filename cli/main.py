"""The gpt2ft command line: services (api, worker, run), admin (migrate, setup, keys), client."""

import os
from typing import Annotated

import typer

from cli.bootstrap import migrate_database, run_setup
from cli.client import files_app, generate, jobs_app, models_app, show_target
from cli.keys import keys_app
from cli.watch import watch_job
from cli.workers import list_workers
from shared.logging_setup import configure_logging
from shared.settings import get_settings

app = typer.Typer(
    help="gpt2ft: fine-tune GPT-2 models behind an OpenAI-shaped API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold API keys and database passwords
)
app.add_typer(keys_app, name="keys")
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.command("generate")(generate)
app.command("target")(show_target)
app.command("workers")(list_workers)
jobs_app.command("watch")(watch_job)

DEFAULT_PORT = 8000
# Uploads, checkpoints, results, the SQLite database and `gpt2ft run`'s Redis AOF hold users'
# data: what the services create is readable by their own user only (files 0600, dirs 0700).
PRIVATE_UMASK = 0o077
SERVICES = {"api", "worker", "run", "migrate", "setup"}


@app.callback()
def _private_files(context: typer.Context) -> None:
    """Service commands create files and folders for their own user only."""
    if context.invoked_subcommand in SERVICES:
        os.umask(PRIVATE_UMASK)


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT", help="TCP port.")] = DEFAULT_PORT,
) -> None:
    """Serve the HTTP API (uvicorn, factory api.app:create_app)."""
    settings = get_settings()
    if settings.dev_api_key:
        from shared.keys import ensure_api_key

        ensure_api_key(settings.dev_owner, settings.dev_api_key)
    serve("api.app:create_app", port, host)


def serve(factory: str, port: int, host: str = "127.0.0.1") -> None:
    """Serve the app factory at factory with uvicorn (bench/api_bench.py serves its baseline app
    through here too, so both run under the same server settings)."""
    import uvicorn

    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the JSON-lines handlers configure_logging installed
    )


@app.command()
def worker() -> None:
    """Run the Celery training and inference workers and the sweep until stopped."""
    from worker.main import run_worker

    raise typer.Exit(run_worker())


@app.command()
def migrate() -> None:
    """Create the home folder and bring the database to the newest schema."""
    url = migrate_database(get_settings())
    typer.echo(f"database {url} is at the newest revision")


@app.command()
def setup() -> None:
    """Home folders, migrations, the offline GPT-2 tokenizer and the gpt2-tiny base model."""
    run_setup(get_settings(), typer.echo)


@app.command()
def run(
    port: Annotated[int, typer.Option(envvar="PORT", help="API port.")] = DEFAULT_PORT,
) -> None:
    """Development: set up, start Redis, the API and a worker; Ctrl-C stops them all."""
    from cli.run import run_dev

    try:
        code = run_dev(port)
    except KeyboardInterrupt:  # Ctrl-C during setup, before the supervisor handles signals
        code = 130
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
