"""`gpt2ft keys`: create, list and revoke API keys (stored hashed; shown once)."""

from typing import Annotated

import typer

from cli.tables import print_table

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@keys_app.command("create")
def create_key(
    owner: Annotated[str, typer.Option(help="Who the key acts for; owns what it creates.")],
    name: Annotated[str | None, typer.Option(help="A label to tell keys apart.")] = None,
) -> None:
    """Create a key for OWNER and print it once (only its sha256 is stored)."""
    from shared.keys import create_api_key

    plain = create_api_key(owner, name=name)
    typer.echo(f"API key for {owner!r} (shown once; store it now):", err=True)
    typer.echo(plain)


@keys_app.command("list")
def list_keys(
    owner: Annotated[str | None, typer.Option(help="Only this owner's keys.")] = None,
) -> None:
    """List key ids, owners and names (never the keys themselves)."""
    from shared.keys import list_api_keys

    rows = [
        (row["id"], row["owner"], row["name"], "revoked" if row["revoked_at"] else "active")
        for row in list_api_keys(owner)
    ]
    print_table(("ID", "OWNER", "NAME", "STATE"), rows)


@keys_app.command("revoke")
def revoke_key(
    key: Annotated[str, typer.Argument(help="The key id (key_...) or the plain key.")],
) -> None:
    """Revoke a key by its id or its plain value; requests with it get 401 from then on."""
    from shared.keys import revoke_api_key

    if not revoke_api_key(key):
        typer.echo("no active key matches that id or key", err=True)
        raise typer.Exit(1)
    typer.echo("revoked")
