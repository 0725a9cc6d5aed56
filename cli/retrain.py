"""`candor retrain`, `candor adapters ...` and `candor loop ...`: the feedback loop.

`candor retrain` is the one command for a cron job or a systemd timer;
`candor adapters` manages the registry of promoted adapters (list, promote,
rollback, hot swap, health); `candor loop` holds the pipeline's stages, which
dvc.yaml runs (a person can run them too). All thin: the work is in
``candor.retrain`` (imported inside each command, so ``candor --help`` stays
fast).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from candor.settings import get_settings

app = typer.Typer()
adapters_app = typer.Typer(
    help="Promoted LoRA adapters by content hash: list, promote, rollback, hot swap, health.", no_args_is_help=True
)
loop_app = typer.Typer(
    help="The retraining pipeline's stages (dvc.yaml runs them; `candor retrain` runs dvc).", no_args_is_help=True
)
app.add_typer(adapters_app, name="adapters")
app.add_typer(loop_app, name="loop")

PARAMS_HELP = "The params file (the loop reads its `loop`, `build_data` and `train` sections)."


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _params(path: Path) -> dict[str, Any]:
    from candor.retrain.loop_params import read_params

    return read_params(path)


def _registry():
    from candor.retrain.adapters import AdapterRegistry

    return AdapterRegistry.for_settings(get_settings())


# --- candor retrain ------------------------------------------------------------------------------


RETRAIN_HELP = (
    "Flags → training pairs → adapter → gate → promote → hot swap, once (locked: runs never overlap).\n\n"
    "Base data: most of every retraining set is fresh examples from SQuAD 2.0 (the feedback pairs are a small "
    "share), so the loop needs the SQuAD 2.0 training data. Download the official files (train-v2.0.json, "
    "dev-v2.0.json) from https://rajpurkar.github.io/SQuAD-explorer/ into one folder and set CANDOR_DATA_SOURCE "
    "to that folder (environment or .env), or set `source:` under build_data in params.yaml. A folder of "
    "<split>.questions.jsonl + <split>.paragraphs.jsonl files, or one SQuAD v2 .json, works too. Unset, a source "
    "checkout uses ../shared/data/squad2 where it exists. Missing data stops the run before anything is "
    "exported, with a message naming CANDOR_DATA_SOURCE."
)


@app.command("retrain", help=RETRAIN_HELP)
def retrain_cmd(
    workspace: Path = typer.Option(
        Path("."), help="Folder with dvc.yaml and params.yaml (see `candor loop workspace`)."
    ),
    swap: bool = typer.Option(True, "--swap/--no-swap", help="Hot-swap a promoted adapter into the model server."),
    force: bool = typer.Option(False, "--force", help="Retrain even without new flags; rerun every stage."),
    only: str | None = typer.Option(
        None,
        "--only",
        help="adapter or reader; default: both (the reader when CANDOR_READER_PATH is set and "
        "params reader_loop.enabled).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON at the end."),
) -> None:
    """Flags → training pairs → adapter → gate → promote → hot swap, once (locked: runs never overlap).
    The same flags → reader labels → reader → its gate → promote → the API reloads it."""
    from candor.retrain.run import retrain

    _logging()
    summary = retrain(get_settings(), workspace, swap=swap, force=force, only=only, echo=typer.echo)
    if as_json:
        _print_json(summary)
    else:
        typer.echo(f"retrain: {summary['status']}")


# --- candor adapters ----------------------------------------------------------------------------


def _version_line(v, current: str | None, serving: dict | None, serving_mark: str = "serving as {name}") -> str:
    marks = []
    if v.version == current:
        marks.append("current")
    if serving and serving.get("version") == v.version:
        marks.append(serving_mark.format(name=serving.get("name")))
    mark = f"[{', '.join(marks)}]" if marks else ""
    parent = f"from {v.parent}" if v.parent else ""
    return f"{v.version}  {v.created_at}  {v.source:<7}  flags={len(v.flag_ids):<4} {parent:<22} {mark}".rstrip()


def print_registry(reg: Any, as_json: bool, empty: str, serving_mark: str = "serving as {name}") -> None:
    """`candor adapters list` and `candor readers list`: every version, oldest first, current and serving marked."""
    versions, cur, serving = reg.list(), reg.current(), reg.serving()
    if as_json:
        previous = reg.previous()
        _print_json(
            {
                "current": cur.version if cur else None,
                "previous": previous.version if previous else None,
                "serving": serving,
                "versions": [v.to_dict() for v in versions],
            }
        )
        return
    if not versions:
        typer.echo(empty)
        return
    for v in versions:
        typer.echo(_version_line(v, cur.version if cur else None, serving, serving_mark))


def register_version(reg: Any, path: Path, promote: bool, command: str, served: str) -> None:
    """`candor adapters register` and `candor readers register`: import a folder, maybe make it current."""
    v = reg.register(path, source="import")
    typer.echo(f"registered {v.version} ({v.path})")
    if promote:
        reg.promote(v.version, note=f"candor {command} register --promote")
        typer.echo(f"current: {v.version} ({served})")


def rollback_version(reg: Any, note: str | None) -> Any:
    """Restore the previous current version; says which; returns it."""
    restored, replaced = reg.rollback(note=note)
    typer.echo(f"current: {restored.version} (was {replaced.version if replaced else 'none'})")
    return restored


@adapters_app.command("list")
def adapters_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every registered version, oldest first, with current and serving marked."""
    reg = _registry()
    print_registry(reg, as_json, f"no adapters registered in {reg.root}")


@dataclass(frozen=True)
class RegistryCommands:
    """What differs between `candor adapters` and `candor readers`: the help texts, and how a version that
    was made current is served (``serve(registry, version, note)``: the adapters' hot swap, the API's reload)."""

    command: str  # adapters | readers
    show: str
    folder: str
    register: str
    registered: str  # what to do next, after `register --promote`
    promote: str
    rollback: str
    serve_flag: str  # --swap/--no-swap | --reload/--no-reload
    serve_promoted: str
    serve_restored: str
    serve: Any


def registry_commands(app: typer.Typer, registry: Any, c: RegistryCommands) -> None:
    """`show`, `register`, `promote` and `rollback` of a registry (``AdapterRegistry`` or ``ReaderRegistry``)."""

    def show(version: str = typer.Argument(..., help="A version (or a unique prefix).")) -> None:
        _print_json(registry().get(version).to_dict())

    def register(
        path: Path = typer.Argument(..., help=c.folder),
        promote: bool = typer.Option(False, "--promote", help="Also make it current."),
    ) -> None:
        register_version(registry(), path, promote, c.command, c.registered)

    def promote(
        version: str = typer.Argument(..., help="A registered version (or a unique prefix)."),
        serve: bool = typer.Option(True, c.serve_flag, help=c.serve_promoted),
    ) -> None:
        reg = registry()
        note = f"candor {c.command} promote"
        v = reg.promote(version, note=note)
        typer.echo(f"current: {v.version}")
        if serve:
            c.serve(reg, v.version, note)

    def rollback(
        serve: bool = typer.Option(True, c.serve_flag, help=c.serve_restored),
        note: str | None = typer.Option(None, help="Why (kept in the registry's history)."),
    ) -> None:
        reg = registry()
        restored = rollback_version(reg, note)
        if serve:
            c.serve(reg, restored.version, note or f"candor {c.command} rollback")

    for name, fn, doc in (
        ("show", show, c.show),
        ("register", register, c.register),
        ("promote", promote, c.promote),
        ("rollback", rollback, c.rollback),
    ):
        fn.__doc__ = doc
        app.command(name)(fn)


def _hot_swap(reg: Any, version: str, note: str) -> None:
    from candor.retrain.hot_swap import hot_swap

    record = hot_swap(get_settings(), reg, version)
    typer.echo(f"serving {record['name']} = {record['version']} on {record['server']} (verified)")


registry_commands(
    adapters_app,
    _registry,
    RegistryCommands(
        command="adapters",
        show="One version: its lineage, training summary and gate results.",
        folder="A PEFT adapter folder (adapter_config.json + adapter_model.safetensors).",
        register="Add an adapter trained elsewhere (e.g. `candor finetune train`) to the registry.",
        registered="not yet serving: `candor adapters swap`",
        promote="Make a version current by hand (bypasses the gate: for an admin who knows why).",
        rollback="Restore the previous current version (and serve it).",
        serve_flag="--swap/--no-swap",
        serve_promoted="Hot-swap it into the model server too.",
        serve_restored="Hot-swap the restored version into the model server.",
        serve=_hot_swap,
    ),
)


@adapters_app.command("swap")
def adapters_swap(
    version: str | None = typer.Argument(None, help="Version to serve; default: the current one."),
) -> None:
    """Load a version into the running model server under the stable name, verify, record."""
    from candor.retrain.hot_swap import hot_swap

    record = hot_swap(get_settings(), _registry(), version)
    typer.echo(f"serving {record['name']} = {record['version']} on {record['server']} (verified)")


@adapters_app.command("check")
def adapters_check(
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    out: Path | None = typer.Option(None, help="Also write the report as JSON here (a metrics file)."),
    rollback: bool = typer.Option(False, "--rollback", help="Roll back (and swap) if a rollback is recommended."),
) -> None:
    """Live flag and refusal rates of the current vs the previous version; recommends a rollback."""
    from candor.jsonl import write_json
    from candor.retrain.loop_params import loop_params
    from candor.retrain.monitor import check_health

    report = check_health(get_settings(), loop_params(_params(params)).monitor)
    if out:
        write_json(out, report)
    _print_json({k: v for k, v in report.items() if k != "per_version"})
    if report["recommend_rollback"]:
        typer.echo("ROLLBACK RECOMMENDED: " + "; ".join(report["reasons"]), err=True)
        if rollback:
            reg = _registry()
            restored = rollback_version(reg, "candor adapters check --rollback: " + "; ".join(report["reasons"]))
            _hot_swap(reg, restored.version, "candor adapters check --rollback")
        else:
            raise typer.Exit(3)


# --- candor loop (the pipeline's stages) ----------------------------------------------------------


@loop_app.command("workspace")
def loop_workspace(
    dest: Path = typer.Argument(..., help="Folder to create (or refresh)."),
    profile: str | None = typer.Option(
        None,
        help="Merge params.<profile>.yaml over params.yaml (e.g. small); several, comma-separated, merge in order "
        "(small,<model profile>: a base model's own overrides after the small profile).",
    ),
    project: Path = typer.Option(Path("."), help="The Candor checkout holding dvc.yaml and params*.yaml."),
) -> None:
    """A DVC workspace with another params profile, for `candor retrain --workspace DEST`."""
    from candor.retrain.workspace import make_workspace

    typer.echo(str(make_workspace(dest, project, profile)))


@loop_app.command("export")
def loop_export(params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP)) -> None:
    """Write the approved flags, the baseline adapter and where the base data is into the workspace.

    What `candor retrain` does first; the base data comes from params `build_data.source`, else CANDOR_DATA_SOURCE.
    """
    from candor.retrain.loop_stages import export_base_data, export_inputs, paths_for

    p = _params(params)
    _, paths = paths_for(p)
    settings = get_settings()
    data = export_base_data(p, paths, settings)
    result = export_inputs(settings, paths)
    typer.echo(f"exported {result['flags']} flag(s) to {result['export']}; baseline {result['baseline']['version']}")
    if settings.reader_path is not None:
        from candor.retrain.reader_loop import export_reader_baseline

        typer.echo(f"reader baseline {export_reader_baseline(settings, paths.root)['version']}")
    typer.echo(f"base data: {data['path']} (split {data['split']})")


def _echo_evaluation(m: dict[str, Any], tail: str) -> None:
    """Both models' frozen-set figures, one line each; ``tail`` formats the flagged questions' result."""
    for role in ("current", "candidate"):
        f, r = m["frozen"][role], m["regression"][role]
        rest = tail.format(threshold=f.get("threshold"), passed=r["passed"], n=m["regression"]["n"])
        typer.echo(
            f"{role:<9} hallucination {f['hallucination_rate']:.3f}  over-refusal {f['over_refusal']:.3f}  "
            f"F1 {f['f1']:.3f}  {rest}"
        )


def _echo_decision(d: dict[str, Any], what: str) -> None:
    typer.echo(f"{d['verdict']}: {what}{d['candidate_version']}" + (" (now current)" if d["promoted"] else ""))
    for reason in d["reasons"]:
        typer.echo(f"  - {reason}")


STAGE_HELP = {
    "screen": "Stage export_feedback: screen the exported flags (approved, per-key caps, duplicates, conflicts).",
    "pairs": "Stage build_pairs: flags → refusal / QA training pairs and the regression set.",
    "prepare": "Stage prepare: mix the pairs into fresh base data from the fine-tuning builder.",
    "evaluate": "Stage evaluate: candidate vs baseline on the frozen eval set and the regression set.",
    "promote": "Stage promote: the gate's decision (decision.json); a pass registers and promotes the adapter.",
    "reader-labels": "Stage reader_labels: the screened flags → reader labels on the passages shown, and its "
    "regression set.",
    "reader-evaluate": "Stage reader_evaluate: both readers on the frozen set and the flagged questions.",
    "reader-promote": "Stage reader_promote: the reader's gate; a pass registers and promotes it.",
}


def _stage(name: str, target: str, echo: Any, *, settings: bool = False, logs: bool = False) -> None:
    """`candor loop NAME --params FILE`: run ``target`` ("module:function") on the params (and the settings),
    print its result with ``echo``; the help is ``STAGE_HELP[name]``."""
    module, _, func = target.partition(":")

    def command(params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP)) -> None:
        import importlib

        stage = getattr(importlib.import_module(module), func)
        if logs:
            _logging()
        echo(stage(_params(params), get_settings()) if settings else stage(_params(params)))

    command.__doc__ = STAGE_HELP[name]
    loop_app.command(name)(command)


def _gate_stages(prefix: str, module: str, what: str, flagged: str) -> None:
    """evaluate and promote, the adapter's (``prefix`` "") or the reader's ("reader-")."""
    _stage(f"{prefix}evaluate", f"{module}:evaluate", lambda m: _echo_evaluation(m, flagged), settings=True, logs=True)
    _stage(f"{prefix}promote", f"{module}:promote", lambda d: _echo_decision(d, what), settings=True)


def _echo_screen(r: dict[str, Any]) -> None:
    typer.echo(f"kept {r['kept']} of {r['input']} flag(s); dropped {r['dropped_by_reason'] or 'none'}")


def _echo_pairs(s: dict[str, Any]) -> None:
    pairs = f"{s['pairs']} pair(s) ({s['refusal_pairs']} refusal, {s['qa_pairs']} QA)"
    typer.echo(f"{pairs}, {s['regression_items']} regression item(s)")


def _echo_mix(s: dict[str, Any]) -> None:
    feedback = f"{s['feedback_rows']} feedback ({s['pairs']} pairs x {s['repeats']})"
    typer.echo(f"{s['rows']} rows: {feedback}, {s['base_rows']} base")


def _echo_labels(s: dict[str, Any]) -> None:
    labels = f"{s['examples']} reader label(s) ({s['answerable']} answerable, {s['no_answer']} no answer)"
    typer.echo(
        f"{labels} from {s['labelled_flags']} of {s['flags']} flag(s); {s['regression_items']} regression item(s)"
    )


_stage("screen", "candor.retrain.loop_stages:screen", _echo_screen)
_stage("pairs", "candor.retrain.loop_stages:build_pairs", _echo_pairs)
_stage("prepare", "candor.retrain.loop_stages:prepare", _echo_mix)


@loop_app.command("train")
def loop_train(
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Stage train: continue training the baseline adapter on the mixed set."""
    from candor.retrain.loop_stages import train

    _logging()
    s = train(_params(params), get_settings(), progress=progress)
    typer.echo(
        f"trained {s['steps']} steps in {s['train_time_s']} s; loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}"
    )


_gate_stages("", "candor.retrain.loop_stages", "", "regression {passed}/{n}")


_stage("reader-labels", "candor.retrain.reader_loop:labels", _echo_labels)


@loop_app.command("reader-train")
def loop_reader_train(params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP)) -> None:
    """Stage reader_train: continue the serving reader on the labels and replay examples."""
    from candor.retrain.reader_loop import train

    _logging()
    s = train(_params(params), get_settings())
    typer.echo(f"reader: {s['global_step']} steps in {s['wall_s_this_invocation']} s; loss {s['train_loss']}")


_gate_stages("reader-", "candor.retrain.reader_loop", "reader ", "(threshold {threshold})  flagged {passed}/{n}")
