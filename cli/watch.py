"""`gpt2ft jobs watch`: follow a job's event stream with a live progress line."""

import json
import sys
import time
from typing import Any

import httpx
import typer

from cli.client import TERMINAL, call, client


def progress_line(data: dict[str, Any], started: float, first_step: int) -> str:
    """[####......] step/total loss tok/s ETA from a metrics event's data."""
    step, total = int(data.get("step", 0)), int(data.get("total_steps") or 0)
    width = 24
    filled = int(width * step / total) if total else 0
    parts = [f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total or '?'}"]
    if data.get("train_loss") is not None:
        parts.append(f"loss {data['train_loss']:.4f}")
    if data.get("tokens_per_second") is not None:
        parts.append(f"{data['tokens_per_second']:,.0f} tok/s")
    done = step - first_step
    if total and done > 0:
        eta = (time.monotonic() - started) / done * (total - step)
        parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
    return "  ".join(parts)


def follow(job_id: str) -> None:
    """Print messages and a progress line from the SSE stream until `event: done`."""
    started, first_step, pending = time.monotonic(), None, None
    with (
        client(timeout=None) as http,
        http.stream(
            "GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"stream": "true"}
        ) as response,
    ):
        if response.status_code >= 400:
            response.read()
            typer.echo(f"error {response.status_code}: {response.text}", err=True)
            raise typer.Exit(1)
        for line in response.iter_lines():
            if line.startswith("event: "):
                pending = line[7:]
            elif line.startswith("data: "):
                if pending == "done":
                    return
                event = json.loads(line[6:])
                data = event.get("data") or {}
                if event.get("type") == "metrics" and "step" in data:
                    if first_step is None:
                        first_step, started = int(data["step"]), time.monotonic()
                    sys.stdout.write("\r" + progress_line(data, started, first_step) + "  ")
                else:
                    sys.stdout.write(f"\n{event['message']}")
                sys.stdout.flush()


def watch_job(job_id: str) -> None:
    """Live progress (step/total, loss, tokens/s, ETA) until the job ends; exit 0 if succeeded."""
    while True:
        try:
            follow(job_id)
            break
        except httpx.HTTPError as exc:  # a dropped stream: replay from the start after a pause
            typer.echo(f"\nstream interrupted ({exc}); reconnecting", err=True)
            time.sleep(2)
    job = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
    while job["status"] not in TERMINAL:  # the stream ended on a paused job's end, say
        time.sleep(1)
        job = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
    typer.echo(
        f"\n{job_id} {job['status']}"
        + (f": {job['fine_tuned_model']}" if job["fine_tuned_model"] else "")
    )
    raise typer.Exit(0 if job["status"] == "succeeded" else 1)
