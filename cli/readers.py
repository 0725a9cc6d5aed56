"""`candor readers ...` and `candor calibrate`: the answerability reader's registry and per-collection thresholds.

`candor readers` is `candor adapters` for the reader (list, show, register, promote, rollback), plus
`reload`: the API loads the reader, so serving a promoted (or rolled back) version means the API reloads it
(``POST /v1/readers/reload``, admin). `candor calibrate --collection NAME` sets a collection's own threshold
from its reviewed flags and prints the trade-off it chose. Thin: the work is in ``candor.retrain``.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import typer

from candor.cli.retrain import RegistryCommands, print_registry, registry_commands
from candor.settings import get_settings

app = typer.Typer()
readers_app = typer.Typer(
    help="Answerability readers by content hash: list, register, promote, rollback, reload in the API.",
    no_args_is_help=True,
)
app.add_typer(readers_app, name="readers")


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def _registry():
    from candor.retrain.readers import ReaderRegistry

    return ReaderRegistry.for_settings(get_settings())


def _reload(note: str) -> None:
    """Ask the running API to load the current reader (CANDOR_API_URL, CANDOR_API_KEY: an admin key)."""
    from candor.retrain.reader_swap import reload_api_reader

    record = reload_api_reader(get_settings(), note=note)
    typer.echo(f"the API at {record['server']} serves reader {record['version']} (threshold {record['threshold']})")


@readers_app.command("list")
def readers_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every registered reader, oldest first, with current and serving marked."""
    reg = _registry()
    empty = f"no readers registered in {reg.root} (the first `candor retrain` registers CANDOR_READER_PATH)"
    print_registry(reg, as_json, empty, serving_mark="serving")


registry_commands(
    readers_app,
    _registry,
    RegistryCommands(
        command="readers",
        show="One reader: its lineage (flag ids, screening), training summary and the gate's checks.",
        folder="A reader folder (reader.json + reader.safetensors).",
        register="Add a reader trained elsewhere (e.g. `candor finetune train-reader`) to the registry.",
        registered="served after `candor readers reload` or an API restart",
        promote="Make a reader current by hand (bypasses the gate).",
        rollback="Restore the previous current reader (and serve it).",
        serve_flag="--reload/--no-reload",
        serve_promoted="Have the running API load it.",
        serve_restored="Have the running API load the restored one.",
        serve=lambda _reg, _version, note: _reload(note),
    ),
)


@readers_app.command("reload")
def readers_reload() -> None:
    """Have the running API (CANDOR_API_URL, an admin CANDOR_API_KEY) load the current reader, verified."""
    _reload("candor readers reload")


@app.command("calibrate")
def calibrate_cmd(
    collection: str = typer.Option(..., "--collection", "-c", help="The collection whose threshold to set."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the choice; store nothing."),
    questions: Path | None = typer.Option(
        None, help="A labelled question set (e.g. samples/handbook.questions.jsonl): its rates before and after."
    ),
    min_flags: int | None = typer.Option(None, help="Reviewed flags needed (default CANDOR_CALIBRATION_MIN_FLAGS)."),
    target: float | None = typer.Option(None, help="Aim for both error rates (default CANDOR_CALIBRATION_TARGET)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Set COLLECTION's refusal threshold from its reviewed flags (the current reader re-reads the passages
    each flagged question was shown); prints the trade-off chosen, and by how much it misses the target."""
    from candor.retrain.calibration_run import run_calibration

    settings = get_settings()
    report = run_calibration(
        settings,
        collection,
        dry_run=dry_run,
        questions=questions,
        min_flags=min_flags or settings.calibration_min_flags,
        target=target if target is not None else settings.calibration_target,
        who=_who(),
    )
    if as_json:
        _print_json(report)
    else:
        for line in report["lines"]:
            typer.echo(line)


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
