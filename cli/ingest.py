"""`candor` commands of this room (filled in by its issue)."""

import typer

app = typer.Typer()
