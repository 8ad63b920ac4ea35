"""`gpt2ft jobs watch`: the job's state now, then its new events and a live progress line."""

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import typer

from cli.client import TERMINAL, call, client

# On attach: the newest events read, and how many of their messages are shown for context.
RECENT_EVENTS = 100
RECENT_MESSAGES = 10
PAUSED_POLL_SECONDS = 2.0


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss past an hour."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Progress:
    """Step, loss, throughput and when the job should finish, as last heard."""

    step: int
    total: int
    loss: float | None = None
    tokens_per_second: float | None = None
    # Unix time the job should end: the service's estimate at attach, then our own rate.
    finish_at: float | None = None
    first_seen: tuple[float, int] | None = None

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> "Progress":
        """The job object's own figures: where it stands when we attach."""
        return cls(
            step=int(job.get("steps_completed") or 0),
            total=int(job.get("total_steps") or 0),
            tokens_per_second=job.get("tokens_per_second"),
            finish_at=job.get("estimated_finish"),
        )

    def update(self, data: dict[str, Any], now: float) -> None:
        """Take a live metrics event; the ETA comes from steps seen since we attached."""
        self.step = int(data.get("step", self.step))
        self.total = int(data.get("total_steps") or self.total)
        if data.get("train_loss") is not None:
            self.loss = float(data["train_loss"])
        if data.get("tokens_per_second") is not None:
            self.tokens_per_second = float(data["tokens_per_second"])
        if self.first_seen is None:
            self.first_seen = (now, self.step)
        elif self.step > self.first_seen[1] and self.total:
            per_step = (now - self.first_seen[0]) / (self.step - self.first_seen[1])
            self.finish_at = now + per_step * (self.total - self.step)

    def line(self, now: float) -> str:
        """[####......] step/total  loss  tok/s  ETA."""
        width = 24
        filled = int(width * self.step / self.total) if self.total else 0
        parts = [f"[{'#' * filled}{'.' * (width - filled)}] {self.step}/{self.total or '?'}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:,.0f} tok/s")
        if self.finish_at is not None:
            parts.append(f"ETA {clock(self.finish_at - now)}")  # 0:00 once the last step is done
        return "  ".join(parts)


class Screen:
    """Messages on their own lines; the progress line redrawn in place below them."""

    def __init__(self) -> None:
        self.on_progress_line = False

    def message(self, text: str) -> None:
        sys.stdout.write(("\n" if self.on_progress_line else "") + text + "\n")
        self.on_progress_line = False
        sys.stdout.flush()

    def progress(self, text: str) -> None:
        sys.stdout.write("\r" + text + "\033[K")
        self.on_progress_line = True
        sys.stdout.flush()


def recent_events(job_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """The last few messages (oldest first, per-step metrics left out) and the newest event id."""
    page = call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": RECENT_EVENTS})
    messages = [e for e in reversed(page["data"]) if e.get("type") != "metrics"]
    return messages[-RECENT_MESSAGES:], (page["data"][0]["id"] if page["data"] else None)


def follow(job_id: str, after: str | None, progress: Progress, screen: Screen) -> str | None:
    """Print events after `after` until the stream's `event: done`; return the last event id."""
    params = {"stream": "true", **({"after": after} if after else {})}
    pending = None
    with (
        client(timeout=None) as http,
        http.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params=params) as response,
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
                    return after
                event = json.loads(line[6:])
                after = event["id"]
                data = event.get("data") or {}
                if event.get("type") == "metrics" and "step" in data:
                    progress.update(data, time.time())
                    screen.progress(progress.line(time.time()))
                else:
                    screen.message(event["message"])
    return after


def wait_while_paused(job_id: str, screen: Screen) -> dict[str, Any]:
    """The job once it is no longer paused (resumed, or cancelled while paused)."""
    screen.message(f"{job_id} paused: waiting for `gpt2ft jobs resume {job_id}`")
    job = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
    while job["status"] == "paused":
        time.sleep(PAUSED_POLL_SECONDS)
        job = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
    return dict(job)


def watch_job(job_id: str) -> None:
    """The job's state now, then new events and live progress until it ends; exit 0 if succeeded."""
    job = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
    screen, progress, after = Screen(), Progress.from_job(job), None
    if job["status"] not in TERMINAL:
        # Attach where the job is: a few recent messages, its figures now, then new events only.
        context, after = recent_events(job_id)
        for event in context:
            screen.message(event["message"])
        screen.message(f"{job_id} {job['status']}")
        if progress.total:
            screen.progress(progress.line(time.time()))
    while job["status"] not in TERMINAL:
        try:
            after = follow(job_id, after, progress, screen)
        except httpx.HTTPError as exc:  # a dropped stream: go on after the last event seen
            screen.message(f"stream interrupted ({exc}); reconnecting")
            time.sleep(2)
        # The stream also ends when the job pauses, or after a quiet spell: carry on after `after`.
        job = call("GET", f"/v1/fine_tuning/jobs/{job_id}")
        if job["status"] == "paused":
            job = wait_while_paused(job_id, screen)
    model = f": {job['fine_tuned_model']}" if job["fine_tuned_model"] else ""
    error = job.get("error") or {}
    reason = f": {error.get('code')}: {error.get('message')}" if error else ""
    screen.message(f"{job_id} {job['status']}{model}{reason}")
    raise typer.Exit(0 if job["status"] == "succeeded" else 1)
