"""The gpt2ft command line: commands, keys against a real database, the dev supervisor."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.procs import Child, stop_all
from cli.run import REDIS_HINT, StopRequest, ensure_dev_api_key, supervise
from shared.settings import get_settings

BESIDE = Path(sys.executable).parent / "gpt2ft"
GPT2FT = [str(BESIDE)] if BESIDE.is_file() else [sys.executable, "-m", "cli.main"]
REPO = Path(__file__).resolve().parents[2]


def gpt2ft(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GPT2FT, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a gpt2ft process with its own home and SQLite database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPT2FT_")}
    env.pop("REDIS_URL", None)
    env["GPT2FT_HOME"] = str(tmp_path / "home")
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'gpt2ft.db'}"
    return env


def test_help_lists_every_command(cli_env: dict[str, str]) -> None:
    result = gpt2ft("--help", env=cli_env)
    assert result.returncode == 0, result.stderr
    for command in ("api", "worker", "migrate", "setup", "run", "keys"):
        assert f" {command} " in result.stdout
    keys = gpt2ft("keys", "--help", env=cli_env)
    for command in ("create", "list", "revoke"):
        assert f" {command} " in keys.stdout


def test_keys_create_stores_only_the_hash(cli_env: dict[str, str], tmp_path: Path) -> None:
    migrated = gpt2ft("migrate", env=cli_env)
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "home").is_dir()

    created = gpt2ft("keys", "create", "--owner", "alice", "--name", "laptop", env=cli_env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-") and len(key) >= 32

    with sqlite3.connect(tmp_path / "gpt2ft.db") as db:
        rows = db.execute("SELECT id, owner, key_hash, name, revoked_at FROM api_keys").fetchall()
        dump = "\n".join(db.iterdump())
    assert len(rows) == 1
    key_id, owner, key_hash, name, revoked_at = rows[0]
    assert (owner, name, revoked_at) == ("alice", "laptop", None)
    assert key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in dump

    revoked = gpt2ft("keys", "revoke", key, env=cli_env)
    assert revoked.returncode == 0, revoked.stderr
    with sqlite3.connect(tmp_path / "gpt2ft.db") as db:
        query = "SELECT revoked_at FROM api_keys WHERE id = ?"
        (revoked_at,) = db.execute(query, (key_id,)).fetchone()
    assert revoked_at is not None
    again = gpt2ft("keys", "revoke", key, env=cli_env)
    assert again.returncode != 0
    assert "no active key" in again.stderr


def test_run_without_redis_server_says_how_to_get_one(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    cli_env["PATH"] = str(empty_bin)
    result = gpt2ft("run", env=cli_env, timeout=60)
    assert result.returncode != 0
    assert REDIS_HINT in result.stderr
    assert "sudo apt-get install redis-server" in result.stderr


def test_dev_api_key_is_created_once_with_mode_600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPT2FT_DEV_API_KEY", raising=False)
    get_settings.cache_clear()
    first = ensure_dev_api_key(tmp_path)
    saved = tmp_path / "dev-api-key"
    assert saved.read_text().strip() == first
    assert saved.stat().st_mode & 0o777 == 0o600
    assert ensure_dev_api_key(tmp_path) == first

    monkeypatch.setenv("GPT2FT_DEV_API_KEY", "sk-from-the-environment")
    get_settings.cache_clear()
    try:
        assert ensure_dev_api_key(tmp_path) == "sk-from-the-environment"
    finally:
        get_settings.cache_clear()


def python_child(name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], dict(os.environ))


def process_gone(pid: int) -> bool:
    """True when pid no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_supervisor_restarts_the_worker_and_stops_when_the_api_dies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = python_child("api", "import time; time.sleep(60)")
    worker = python_child("worker", "import sys; sys.exit(3)")
    api.start()
    worker.start()
    killer = threading.Timer(2.5, lambda: api.signal_group(signal.SIGKILL))
    killer.start()
    try:
        code = supervise(api, worker, None, StopRequest())
    finally:
        killer.cancel()
    stderr = capsys.readouterr().err
    assert code != 0
    assert stderr.count("worker exited with code 3; starting a new one") >= 2
    assert "API exited with code -9; stopping everything" in stderr
    assert not api.running() and not worker.running()


def test_stop_request_terminates_children_and_their_children() -> None:
    spawner = (
        "import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    api = python_child("api", spawner)
    api.start(stdout=subprocess.PIPE)
    assert api.process is not None and api.process.stdout is not None
    grandchild = int(api.process.stdout.readline())
    worker = python_child("worker", "import time; time.sleep(60)")
    worker.start()
    stop = StopRequest()
    threading.Timer(0.5, lambda: setattr(stop, "count", 1)).start()
    started = time.monotonic()
    assert supervise(api, worker, None, stop) == 0
    assert time.monotonic() - started < 10
    assert not api.running() and not worker.running()
    deadline = time.monotonic() + 5
    while not process_gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_gone(grandchild)


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    stubborn = python_child(
        "worker",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    )
    stubborn.start(stdout=subprocess.PIPE)
    assert stubborn.process is not None and stubborn.process.stdout is not None
    assert stubborn.process.stdout.readline().strip() == b"ready"
    started = time.monotonic()
    stop_all([stubborn], timeout=1.0)
    assert 0.9 <= time.monotonic() - started < 8
    assert stubborn.poll() == -signal.SIGKILL


def test_run_state_file_is_private_and_ignored_once_its_process_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.state import read_run_state, remove_run_state, write_run_state

    path = write_run_state(tmp_path, "http://127.0.0.1:8123", "sk-secret")
    assert path.stat().st_mode & 0o777 == 0o600
    state = read_run_state(tmp_path)
    assert state is not None and (state.url, state.api_key) == (
        "http://127.0.0.1:8123",
        "sk-secret",
    )

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"url": "http://127.0.0.1:1", "api_key": "k", "pid": dead.pid}))
    assert read_run_state(tmp_path) is None  # what kill -9 of `gpt2ft run` leaves behind
    remove_run_state(tmp_path)
    assert path.exists(), "only the process that wrote the file removes it"
    write_run_state(tmp_path, "http://127.0.0.1:8123", "sk-secret")
    remove_run_state(tmp_path)
    assert not path.exists()


@pytest.fixture
def client_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home folder for the client commands, with no GPT2FT_API_* in the environment."""
    for name in ("GPT2FT_API_URL", "GPT2FT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GPT2FT_HOME", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_client_target_prefers_the_environment_then_the_running_service(
    client_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.state import resolve_target, write_run_state

    none = resolve_target()
    assert none.url == "http://127.0.0.1:8000" and none.api_key is None
    assert "GPT2FT_API_KEY" in none.key_source and "make run" in none.key_source

    (client_env / "dev-api-key").write_text("sk-saved\n")
    saved = resolve_target()
    assert (saved.url, saved.api_key) == ("http://127.0.0.1:8000", "sk-saved")

    write_run_state(client_env, "http://127.0.0.1:8123", "sk-from-run")
    running = resolve_target()
    assert (running.url, running.api_key) == ("http://127.0.0.1:8123", "sk-from-run")
    assert "run.json" in running.url_source

    monkeypatch.setenv("GPT2FT_API_URL", "https://gpt2ft.example.com/")
    remote = resolve_target()
    assert remote.url == "https://gpt2ft.example.com" and remote.api_key is None
    assert "never sent" in remote.key_source  # the local dev key stays local
    monkeypatch.setenv("GPT2FT_API_KEY", "sk-team")
    assert resolve_target().api_key == "sk-team"


def test_lists_have_a_header_and_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.tables import print_table

    print_table(
        ("ID", "STATUS", "FINE-TUNED MODEL"), [("ftjob-1", "running", None), ("j", "ok", "ft:x")]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "FINE-TUNED", "MODEL"]
    assert lines[1].split() == ["ftjob-1", "running"]
    assert lines[2].index("ok") == lines[0].index("STATUS") == lines[1].index("running")
    assert lines[2].index("ft:x") == lines[0].index("FINE-TUNED")


def test_watch_progress_starts_from_the_job_and_times_only_live_steps() -> None:
    from cli.watch import Progress

    now = 1_000_000.0
    job = {"steps_completed": 300, "total_steps": 400, "estimated_finish": now + 100}
    progress = Progress.from_job({**job, "tokens_per_second": 1500.0})
    assert progress.line(now) == f"[{'#' * 18}{'.' * 6}] 300/400  1,500 tok/s  ETA 1:40"
    progress.update({"step": 302, "total_steps": 400, "train_loss": 2.5}, now + 1)
    assert "ETA 1:39" in progress.line(now + 1)  # one live step: still the service's estimate
    progress.update({"step": 312, "total_steps": 400, "train_loss": 2.25}, now + 3)
    # 10 steps in 2 s since attaching: 88 left take 17.6 s.
    assert progress.line(now + 3).endswith("312/400  loss 2.2500  1,500 tok/s  ETA 0:17")
