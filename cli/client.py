"""`gpt2ft files|jobs|models|generate`: the HTTP API from a terminal (httpx, typer)."""

import json
import tarfile
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

from cli.state import Target, resolve_target
from cli.tables import print_table

files_app = typer.Typer(help="Upload, list and delete files.", no_args_is_help=True)
jobs_app = typer.Typer(help="Create, follow and control fine-tuning jobs.", no_args_is_help=True)
models_app = typer.Typer(help="List and download models.", no_args_is_help=True)
TERMINAL = ("succeeded", "failed", "cancelled")


def api_key(target: Target) -> str:
    """The key to send, or exit 2 saying how to give one."""
    if target.api_key is None:
        typer.echo(f"no API key for {target.url}: {target.key_source}", err=True)
        raise typer.Exit(2)
    return target.api_key


def client(timeout: float | None = 60.0) -> httpx.Client:
    """An httpx client on the resolved service (see cli.state) with the bearer key."""
    target = resolve_target()
    headers = {"Authorization": f"Bearer {api_key(target)}"}
    return httpx.Client(base_url=target.url, headers=headers, timeout=timeout)


def unreachable(http: httpx.Client, exc: Exception) -> NoReturn:
    """Say which service did not answer, where its URL came from, and exit 1."""
    target = resolve_target()
    typer.echo(
        f"cannot reach {http.base_url} (from {target.url_source}): {exc}\n"
        "start it with `make run`, or set GPT2FT_API_URL (and GPT2FT_API_KEY) to another service",
        err=True,
    )
    raise typer.Exit(1)


def call(method: str, path: str, timeout: float = 60.0, **kwargs: Any) -> Any:
    """The JSON body of a request; an error envelope is printed and exits 1."""
    with client(timeout) as http:
        try:
            response = http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            unreachable(http, exc)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        typer.echo(f"error {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return response.json()


def show(data: Any) -> None:
    """Pretty JSON on stdout."""
    typer.echo(json.dumps(data, indent=2))


@files_app.command("upload")
def upload_file(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, CSV or TXT.")],
    purpose: str = "fine-tune",
) -> None:
    """Upload a training or validation file; prints its id."""
    with path.open("rb") as handle:
        body = call(
            "POST", "/v1/files", files={"file": (path.name, handle)}, data={"purpose": purpose}
        )
    typer.echo(body["id"])


@files_app.command("list")
def list_files() -> None:
    """Each file's id, purpose, size, records, format and name, newest first."""
    rows = [
        (f["id"], f["purpose"], f["bytes"], f["records"], f.get("format"), f["filename"])
        for f in call("GET", "/v1/files")["data"]
    ]
    print_table(("ID", "PURPOSE", "BYTES", "RECORDS", "FORMAT", "FILENAME"), rows)


@files_app.command("rm")
def remove_file(file_id: str) -> None:
    """Delete a file (refused while an unfinished job uses it)."""
    call("DELETE", f"/v1/files/{file_id}")
    typer.echo(f"deleted {file_id}")


def parse_hyperparameters(pairs: list[str]) -> dict[str, Any]:
    """name=value pairs; values are JSON when they parse (numbers, "auto" stays a string)."""
    found: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r}: use name=value, e.g. n_epochs=3")
        try:
            found[name] = json.loads(raw)
        except ValueError:
            found[name] = raw
    return found


@jobs_app.command("create")
def create_job(
    model: Annotated[str, typer.Option(help="Base model, e.g. gpt2 or gpt2-tiny.")],
    training_file: Annotated[str, typer.Option(help="A file id from `gpt2ft files upload`.")],
    validation_file: str | None = None,
    suffix: str | None = None,
    seed: int | None = None,
    hp: Annotated[
        list[str] | None, typer.Option(help="Hyperparameter name=value (repeat).")
    ] = None,
) -> None:
    """Create a fine-tuning job; prints its id."""
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    optional = {"validation_file": validation_file, "suffix": suffix, "seed": seed}
    body.update({k: v for k, v in optional.items() if v is not None})
    if hp:
        body["hyperparameters"] = parse_hyperparameters(hp)
    typer.echo(call("POST", "/v1/fine_tuning/jobs", json=body)["id"])


@jobs_app.command("list")
def list_jobs(limit: int = 20) -> None:
    """Recent jobs: id, status, steps done, base model, created, fine-tuned model."""
    jobs = call("GET", "/v1/fine_tuning/jobs", params={"limit": limit})["data"]
    rows = [
        (
            job["id"],
            job["status"],
            f"{job.get('steps_completed') or 0}/{job.get('total_steps') or '?'}",
            job["model"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created_at"])),
            job["fine_tuned_model"],
        )
        for job in jobs
    ]
    print_table(("ID", "STATUS", "STEPS", "MODEL", "CREATED", "FINE-TUNED MODEL"), rows)


@jobs_app.command("show")
def show_job(job_id: str) -> None:
    """The job object as JSON."""
    show(call("GET", f"/v1/fine_tuning/jobs/{job_id}"))


@jobs_app.command("cancel")
def cancel_job(job_id: str) -> None:
    """Cancel a job."""
    typer.echo(call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")["status"])


@jobs_app.command("pause")
def pause_job(job_id: str) -> None:
    """Pause a job (a running one checkpoints first)."""
    typer.echo(call("POST", f"/v1/fine_tuning/jobs/{job_id}/pause")["status"])


@jobs_app.command("resume")
def resume_job(job_id: str) -> None:
    """Resume a paused job from its last checkpoint."""
    typer.echo(call("POST", f"/v1/fine_tuning/jobs/{job_id}/resume")["status"])


@models_app.command("list")
def list_models() -> None:
    """Model ids, owners and whether this service can load them: bases, then your fine-tunes."""
    models = call("GET", "/v1/models")["data"]
    # "no": a base model this host cannot load; GET /v1/models/ID's unavailable_reason says why.
    rows = [(m["id"], m["owned_by"], "no" if m.get("available") is False else "yes")
            for m in models]  # fmt: skip
    print_table(("ID", "OWNED BY", "AVAILABLE"), rows)


@models_app.command("download")
def download_model(
    model: Annotated[str, typer.Argument(help="A fine-tuned model id (ft:...).")],
    out: Annotated[Path, typer.Option(help="Folder to unpack the model into.")] = Path("."),
) -> None:
    """Download a fine-tuned model (weights, config, tokenizer) and unpack it under OUT."""
    out.mkdir(parents=True, exist_ok=True)
    archive = out / ".gpt2ft-download.tar.gz"
    with client(timeout=None) as http, http.stream("GET", f"/v1/models/{model}/content") as reply:
        if reply.status_code >= 400:
            reply.read()
            typer.echo(f"error {reply.status_code}: {reply.text}", err=True)
            raise typer.Exit(1)
        with archive.open("wb") as handle:
            for chunk in reply.iter_bytes():
                handle.write(chunk)
    try:
        with tarfile.open(archive) as tar:
            tops = {name.split("/", 1)[0] for name in tar.getnames()}
            tar.extractall(out, filter="data")  # "data" refuses absolute paths and ../
    finally:
        archive.unlink(missing_ok=True)
    for top in sorted(tops):
        typer.echo(str(out / top))


@jobs_app.command("results")
def download_results(
    job_id: str,
    out: Annotated[Path, typer.Option(help="Folder to write into.")] = Path("."),
) -> None:
    """Save a job's object, its results CSV and its loss.svg under OUT."""
    job = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{job_id}.json").write_text(json.dumps(job, indent=2))
    with client() as http:
        for file_id in job.get("result_files") or []:
            data = http.get(f"/v1/files/{file_id}/content")
            data.raise_for_status()
            (out / f"{job_id}_results.csv").write_bytes(data.content)
        chart = http.get(f"/v1/fine_tuning/jobs/{job_id}/loss.svg")
        chart.raise_for_status()
        (out / f"{job_id}_loss.svg").write_text(chart.text)
    typer.echo(f"saved {job_id} results to {out}")


def generate(
    model: Annotated[str, typer.Option(help="Base or fine-tuned model id.")],
    prompt: Annotated[str, typer.Argument(help="Text to continue.")] = "",
    max_tokens: int = 32,
    temperature: float = 1.0,
    seed: int | None = None,
) -> None:
    """Continue PROMPT with a model (POST /v1/completions)."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    body["temperature"] = temperature
    if seed is not None:
        body["seed"] = seed
    result = call("POST", "/v1/completions", json=body, timeout=300)
    typer.echo(result["choices"][0]["text"])


def show_target() -> None:
    """Which service and API key the client commands use, where each came from, and /readyz."""
    target = resolve_target()
    try:
        ready = httpx.get(f"{target.url}/readyz", timeout=5).status_code == 200
        state = "ready" if ready else "answers, not ready (see /readyz)"
    except httpx.HTTPError as exc:
        state = f"not answering ({exc.__class__.__name__})"
    key = target.api_key
    shown = f"{key[:10]}…{key[-4:]}" if key and len(key) > 20 else ("(set)" if key else "none")
    typer.echo(f"service  {target.url}  (from {target.url_source}): {state}")
    typer.echo(f"API key  {shown}  (from {target.key_source})")
