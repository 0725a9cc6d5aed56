"""Root of the `candor` CLI.

Each room's commands live in a module of this package (``cli/ingest.py``,
``cli/model.py``, ...) that defines ``app = typer.Typer()``; they are merged
here. Those modules import only Typer and ground modules at the top; the heavy
work (torch, llama-index, the API) is imported inside each command, so
``candor --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from candor.errors import CandorError
from candor.settings import SettingsError

app = typer.Typer(
    name="candor",
    help="Candor: answers from your documents, and says so when they do not hold the answer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

COMMAND_MODULES = ("ingest", "model", "serve", "feedback", "finetune", "retrain", "readers", "bench")

for _name in COMMAND_MODULES:
    app.add_typer(importlib.import_module(f"candor.cli.{_name}").app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user-facing errors become a message and a non-zero exit, never a traceback."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except SystemExit as exc:  # typer/click exits
        return int(exc.code or 0)
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        return 2
    except CandorError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # click's own usage errors arrive here in non-standalone mode
        import click

        # typer >= 0.29 vendors click: its usage errors derive from typer.TyperException, not click's
        if isinstance(exc, click.ClickException | typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            return int(getattr(exc, "exit_code", 2))
        if isinstance(exc, click.exceptions.Abort | typer.Abort):
            typer.echo("aborted", err=True)
            return 1
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
