"""`gpt2ft run`: the development supervisor behind `make run`."""

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import typer

from cli.bootstrap import run_setup
from cli.procs import Child, free_port, port_is_free, stop_all, wait_for_port
from cli.state import DEV_KEY_FILE, remove_run_state, write_run_state
from shared.settings import get_settings

REDIS_HINT = (
    "redis-server not found: install it (Debian/Ubuntu: sudo apt-get install redis-server) "
    "or set REDIS_URL"
)
# A worker that dies sooner than this after starting counts as crashing: back off.
WORKER_HEALTHY_SECONDS = 30.0
MAX_RESTART_DELAY_SECONDS = 30.0
API_START_TIMEOUT_SECONDS = 120.0


def echo(message: str) -> None:
    """Supervisor messages, marked so they stand out among the children's logs."""
    typer.echo(f"[gpt2ft run] {message}", err=True)


def ensure_dev_api_key(home: Path) -> str:
    """GPT2FT_DEV_API_KEY, else the key saved in <home>/dev-api-key (created once, mode 600)."""
    configured = get_settings().dev_api_key
    if configured:
        return configured
    path = home / DEV_KEY_FILE
    if path.is_file():
        path.chmod(0o600)
        saved = path.read_text().strip()
        if saved:
            return saved
        path.unlink()
    from shared.keys import generate_key  # secrets-based: sk-gpt2ft- and 40 random characters

    plain = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(plain + "\n")
    return plain


def gpt2ft_command() -> list[str]:
    """The gpt2ft executable beside this one (the same virtual environment)."""
    beside = Path(sys.argv[0]).absolute().parent / "gpt2ft"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "cli.main"]


def start_redis(redis_server: str, home: Path, env: dict[str, str]) -> tuple[Child, str]:
    """A private redis-server on a free port with its AOF under <home>/redis."""
    folder = home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        redis_server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--maxmemory-policy", "noeviction", "--logfile", str(folder / "redis.log"),
    ]  # fmt: skip
    child = Child("redis", argv, env)
    child.start()
    if not wait_for_port(port, child, timeout=20):
        stop_all([child], timeout=2)
        raise RuntimeError(f"redis-server did not start; see {folder / 'redis.log'}")
    return child, f"redis://127.0.0.1:{port}/0"


def print_banner(port: int, key: str, key_source: str) -> None:
    """What to do next: the URL, the key and one request that works."""
    base = f"http://127.0.0.1:{port}"
    lines = [
        "",
        f"gpt2ft is running at {base}  (OpenAI-shaped API under {base}/v1)",
        f"API key: {key}  ({key_source})",
        f'Try:     curl -H "Authorization: Bearer {key}" {base}/v1/models',
        "Ctrl-C stops the API, the worker and Redis.",
        "",
    ]
    typer.echo("\n".join(lines))


class StopRequest:
    """Counts SIGINT/SIGTERM: the first asks for a clean stop, the second for haste."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            echo(f"{signal.Signals(signum).name}: stopping (again to kill at once)")

    def install(self) -> None:
        """Handle SIGINT and SIGTERM in this process from now on."""
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def supervise(api: Child, worker: Child, redis: Child | None, stop: StopRequest) -> int:
    """Restart the worker when it dies; anything else dying stops everything (non-zero)."""
    failures = 0
    restart_at: float | None = None
    code = 0
    while stop.count == 0:
        if (api_code := api.poll()) is not None:
            echo(f"API exited with code {api_code}; stopping everything")
            code = api_code if api_code > 0 else 1
            break
        if redis is not None and (redis_code := redis.poll()) is not None:
            echo(f"redis-server exited with code {redis_code}; stopping everything")
            code = redis_code if redis_code > 0 else 1
            break
        now = time.monotonic()
        if restart_at is None and (worker_code := worker.poll()) is not None:
            quick = now - worker.started_at < WORKER_HEALTHY_SECONDS
            failures = failures + 1 if quick else 0
            delay = min(2.0 ** (failures - 1), MAX_RESTART_DELAY_SECONDS) if failures else 0.0
            later = f" in {delay:.0f}s" if delay >= 1 else ""
            echo(f"worker exited with code {worker_code}; starting a new one{later}")
            restart_at = now + delay
        if restart_at is not None and now >= restart_at:
            worker.start()
            restart_at = None
        time.sleep(0.2)
    children = [api, worker]
    stop_all(children, hurry=lambda: stop.count > 1)
    if redis is not None:
        stop_all([redis], hurry=lambda: stop.count > 1)
    return code


def run_dev(port: int) -> int:
    """Set up, start Redis (unless REDIS_URL), the API and a worker; supervise until stopped."""
    settings = get_settings()
    redis_url = os.environ.get("REDIS_URL") or os.environ.get("GPT2FT_REDIS_URL")
    redis_server = None if redis_url else shutil.which("redis-server")
    if not redis_url and redis_server is None:
        typer.echo(REDIS_HINT, err=True)
        return 1
    if not port_is_free(port):
        typer.echo(f"port {port} is in use: stop what uses it or set PORT=<other port>", err=True)
        return 1
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    key_source = "GPT2FT_DEV_API_KEY" if settings.dev_api_key else f"saved in {home / DEV_KEY_FILE}"
    key = ensure_dev_api_key(home)
    run_setup(settings, echo)

    env = dict(os.environ, GPT2FT_HOME=str(home), GPT2FT_DEV_API_KEY=key, PYTHONUNBUFFERED="1")
    stop = StopRequest()
    stop.install()
    redis: Child | None = None
    api = worker = None
    try:
        if redis_server is not None:
            redis, redis_url = start_redis(redis_server, home, env)
            echo(f"redis-server on {redis_url} (data in {home / 'redis'})")
        assert redis_url is not None
        env["REDIS_URL"] = redis_url
        command = gpt2ft_command()
        api = Child("api", [*command, "api", "--host", "127.0.0.1", "--port", str(port)], env)
        worker = Child("worker", [*command, "worker"], env)
        api.start()
        worker.start()
        if not wait_for_port(port, api, API_START_TIMEOUT_SECONDS, lambda: stop.count > 0):
            if stop.count:
                stop_all([c for c in (api, worker, redis) if c is not None])
                return 0
            echo(f"the API did not start on port {port} (exit code {api.poll()}); stopping")
            stop_all([c for c in (api, worker, redis) if c is not None], timeout=5)
            return 1
        print_banner(port, key, key_source)
        # Client commands in other shells find this service and its key through the file.
        write_run_state(home, f"http://127.0.0.1:{port}", key)
        return supervise(api, worker, redis, stop)
    except BaseException:
        stop_all([c for c in (api, worker, redis) if c is not None], timeout=5)
        raise
    finally:
        remove_run_state(home)
