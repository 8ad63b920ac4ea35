"""`gpt2ft workers`: the fleet as the database sees it (devices, memory, current job)."""

import time
from typing import Annotated

import typer

from cli.tables import print_table


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def list_workers(
    all_rows: Annotated[
        bool,
        typer.Option("--all", help="Also inference processes and workers not seen within a lease."),
    ] = False,
) -> None:
    """List live training workers: id, host, device, the memory a job may use, current job."""
    from shared.db.session import session_scope
    from shared.settings import get_settings
    from shared.workers import fleet

    with session_scope() as session:
        rows = fleet(session, get_settings().lease_seconds, everyone=all_rows)
    now = time.time()
    print_table(
        ("ID", "HOST", "DEVICE", "MEMORY", "LAST SEEN", "JOB"),
        [
            (
                row["id"],
                row["hostname"],
                row["device"],
                f"{row['memory_bytes'] / 1024**3:.1f} GiB" if row["memory_bytes"] else "?",
                _ago(now - row["last_seen_at"]),
                row["job"] or "-",
            )
            for row in rows
        ],
    )
    if not rows:
        typer.echo("no live training worker; start one with `gpt2ft worker`", err=True)
