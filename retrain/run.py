"""`candor retrain`: export → `dvc repro` → promote (the pipeline's last stage) → hot swap.

One command for a cron job or a systemd timer (docs/retraining.md). A lock
file beside the adapter registry makes overlapping runs impossible: a second
run fails at once with the holder's pid instead of waiting (a timer that fires
again while a long run trains must not queue up runs). Steps:

1. health of the serving version (``monitor.py``): a rise in its flag or
   refusal rate recommends a rollback loudly, or does it (``auto_rollback``);
2. record where the SQuAD base data is (``build_data.source`` or CANDOR_DATA_SOURCE: missing
   data stops the run here with a message naming the setting); export the approved flags and
   the baseline adapter into the workspace;
   nothing new since the current adapter was trained → stop (no drift from
   retraining on the same flags every night);
3. ``dvc repro build_pairs``: if no flag gives a training pair → stop;
4. ``dvc repro``: prepare, train, evaluate, and the gate (``promote`` stage);
5. promoted → hot swap on the model server, verified before it is recorded.

DVC runs the stage commands in the workspace with the resolved settings passed
down as CANDOR_* variables (paths absolute), so a workspace elsewhere (the
small profile, CI) still uses this data directory, registry and model.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from candor.errors import CandorError, ConflictError, InvalidInputError
from candor.feedback.store import AnswerStore
from candor.jsonl import write_json
from candor.reader import load_reader
from candor.retrain.adapters import AdapterRegistry
from candor.retrain.calibration_run import run_calibration
from candor.retrain.hot_swap import hot_swap
from candor.retrain.loop_params import LoopPaths, loop_params, read_params
from candor.retrain.loop_stages import export_base_data, export_inputs
from candor.retrain.monitor import check_health
from candor.retrain.reader_loop import ReaderPaths, export_reader_baseline, reader_loop_params
from candor.retrain.reader_swap import reload_api_reader
from candor.retrain.readers import ReaderRegistry
from candor.retrain.runs import now_iso, record_run
from candor.settings import Settings

log = logging.getLogger("candor.retrain.run")


class PipelineFailed(CandorError):
    exit_code = 5


class RunLocked(ConflictError):
    """Another run holds the lock: this one never started (and is not recorded)."""


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock; a held lock raises ConflictError naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise RunLocked(f"another retraining run holds {path} (pid {holder}); not starting a second") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def settings_env(settings: Settings) -> dict[str, str]:
    """CANDOR_* variables reproducing ``settings`` in a child process started elsewhere."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = value.resolve()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | tuple | dict):  # complex settings travel as JSON, as pydantic-settings reads them
            value = json.dumps(value)
        env[f"CANDOR_{name.upper()}"] = str(value)
    if settings.database_url is None:
        env["CANDOR_DATABASE_URL"] = settings.resolved_database_url
    return env


def run_dvc(args: list[str], workspace: Path, settings: Settings) -> None:
    env = {**os.environ, **settings_env(settings)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `candor` of this install
    env.pop("HF_HUB_OFFLINE", None)
    cmd = [sys.executable, "-m", "dvc", *args]
    log.info("running %s in %s", " ".join(cmd[2:]), workspace)
    code = subprocess.call(cmd, cwd=workspace, env=env)
    if code != 0:
        raise PipelineFailed(f"`dvc {' '.join(args)}` failed with exit code {code} in {workspace} (see its output)")


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _export_ids(path: Path) -> set[str]:
    with path.open(encoding="utf-8") as fh:
        return {json.loads(line)["flag_id"] for line in fh if line.strip()}


def retrain(
    settings: Settings,
    workspace: Path = Path("."),
    swap: bool = True,
    force: bool = False,
    echo: Callable[[str], None] = print,
    only: str | None = None,
) -> dict[str, Any]:
    """Run the loop once; returns a summary (status, decision, serving record). Every run that got the lock
    is recorded, whatever its outcome, in the runs record (``runs.py``: `GET /v1/retrain/runs`)."""
    if only is not None and only not in PARTS:  # a usage error, not a run: nothing recorded
        raise InvalidInputError(f"--only must be one of {', '.join(PARTS)}, not {only!r}")
    started, summary = now_iso(), {}
    try:
        _retrain(settings, workspace, swap, force, echo, summary, only)
    except RunLocked:
        raise
    except BaseException as exc:
        record_run(settings, summary, started, exc)
        raise
    record_run(settings, summary, started)
    return summary


def _retrain(
    settings: Settings,
    workspace: Path,
    swap: bool,
    force: bool,
    echo: Callable[[str], None],
    summary: dict[str, Any],
    only: str | None = None,
) -> dict[str, Any]:
    workspace = Path(workspace).resolve()
    params = read_params(workspace / "params.yaml")
    lp = loop_params(params)
    parts = which_parts(params, settings, only)
    paths = LoopPaths(workspace / lp.workdir)
    registry = AdapterRegistry.for_settings(settings)
    summary["workspace"] = str(workspace)
    with run_lock(registry.root / ".retrain.lock"):
        health = check_health(settings, lp.monitor)
        write_json(paths.root / "adapter_health.json", health)  # `dvc metrics show` lists it
        summary["health"] = {k: health.get(k) for k in ("status", "reasons", "current", "previous")}
        if health["recommend_rollback"]:
            echo("!" * 78)
            echo("ROLLBACK RECOMMENDED: the serving adapter does worse with users than the one before it:")
            for reason in health["reasons"]:
                echo(f"  - {reason}")
            if lp.monitor.auto_rollback:
                restored, _ = registry.rollback(note="auto rollback: " + "; ".join(health["reasons"]))
                echo(f"rolled back to {restored.version} (loop.monitor.auto_rollback)")
                if swap:
                    summary["serving"] = hot_swap(settings, registry, restored.version)
                summary["status"] = "rolled_back"
                echo("!" * 78)
                return summary
            echo("  run `candor adapters rollback` (or set loop.monitor.auto_rollback: true)")
            echo("!" * 78)

        base_data = export_base_data(
            params, paths, settings, workspace
        )  # no base data: a SettingsError before anything else
        summary["base_data"] = base_data["path"]
        exported = export_inputs(settings, paths)
        summary["exported_flags"] = exported["flags"]
        echo(f"exported {exported['flags']} approved flag(s) to {paths.export}")
        if exported["flags"] == 0:
            summary["status"] = "no_flags"
            return summary
        if "reader" in parts:
            summary["reader"] = _retrain_reader(settings, workspace, paths, swap, force, echo)
            if "adapter" not in parts:
                summary["status"] = summary["reader"]["status"]
                return summary
        current = registry.current()
        if current is not None and not force:
            seen = set(current.flag_ids) | set(current.info.get("flags_seen") or [])
            new = _export_ids(paths.export) - seen
            if not new:
                echo(f"no flags since adapter {current.version} was trained: nothing to do (--force to retrain)")
                summary["status"] = "no_new_flags"
                return summary

        run_dvc(["repro", "build_pairs"], workspace, settings)
        stats = _read(paths.pairs_stats)
        summary["pairs"] = stats["pairs"]
        if stats["pairs"] == 0:
            echo("no flag gives a training pair (see pairs_stats.json): nothing to train")
            summary["status"] = "no_pairs"
            return summary
        run_dvc(["repro", *(["--force"] if force else []), "promote"], workspace, settings)
        decision = _read(paths.decision)
        summary["decision"] = {k: decision.get(k) for k in ("verdict", "reasons", "candidate_version", "promoted")}
        summary["decision_file"] = str(paths.decision)
        echo(f"gate: {decision['verdict']} ({paths.decision})")
        for reason in decision["reasons"]:
            echo(f"  - {reason}")
        if not decision.get("promoted"):
            summary["status"] = "rejected"
            return summary
        if swap:
            try:
                record = hot_swap(settings, registry, decision["candidate_version"])
            except CandorError:
                echo(
                    f"promoted {decision['candidate_version']} but the hot swap failed: it is current, not serving; "
                    "retry with `candor adapters swap`"
                )
                raise
            summary["serving"] = record
            echo(f"serving {record['name']} = {record['version']} on {record['server']} (verified)")
        summary["status"] = "promoted"
        return summary


PARTS = ("adapter", "reader")


def which_parts(params: dict[str, Any], settings: Settings, only: str | None) -> tuple[str, ...]:
    """What this run retrains: ``only`` (adapter or reader), else the adapter and, when a reader serves
    (CANDOR_READER_PATH) and params ``reader_loop.enabled``, the reader too (first: it takes minutes)."""
    if only is not None and only not in PARTS:
        raise InvalidInputError(f"--only must be one of {', '.join(PARTS)}, not {only!r}")
    if only == "reader" and settings.reader_path is None:
        raise InvalidInputError("--only reader: no reader serves (set CANDOR_READER_PATH, e.g. models/candor-reader)")
    if only is not None:
        return (only,)
    if settings.reader_path is not None and reader_loop_params(params).enabled:
        return ("reader", "adapter")
    return ("adapter",)


def _retrain_reader(
    settings: Settings, workspace: Path, paths: LoopPaths, swap: bool, force: bool, echo: Callable[[str], None]
) -> dict[str, Any]:
    """The reader's half: labels from the same screened flags, then train, evaluate, gate and promote
    (``dvc repro reader_promote``); a promoted reader is reloaded by the API (CANDOR_API_URL)."""
    out: dict[str, Any] = {}
    baseline = export_reader_baseline(settings, paths.root)
    out["baseline"] = baseline["version"]
    current = ReaderRegistry.for_settings(settings).current()
    if current is not None and not force:
        seen = set(current.flag_ids) | set(current.info.get("flags_seen") or [])
        if not _export_ids(paths.export) - seen:
            echo(f"reader: no flags since reader {current.version} was trained: nothing to do")
            return out | {"status": "no_new_flags"}
    rpaths = ReaderPaths(paths.root)
    run_dvc(["repro", *(["--force"] if force else []), "reader_labels"], workspace, settings)
    stats = _read(rpaths.labels_stats)
    out["labels"] = stats["examples"]
    if stats["examples"] == 0:
        echo("reader: no flag gives a reader label (see reader/labels_stats.json): nothing to train")
        return out | {"status": "no_labels"}
    run_dvc(["repro", "reader_promote"], workspace, settings)
    decision = _read(rpaths.decision)
    out["decision"] = {k: decision.get(k) for k in ("verdict", "reasons", "candidate_version", "promoted")}
    echo(f"reader gate: {decision['verdict']} ({rpaths.decision})")
    for reason in decision["reasons"]:
        echo(f"  - {reason}")
    if not decision.get("promoted"):
        return out | {"status": "rejected"}
    out["status"] = "promoted"
    out["calibrated"] = recalibrate(settings, Path(decision["registry_path"]), echo)
    if swap:
        try:
            out["serving"] = reload_api_reader(settings, note="candor retrain: reader gate passed")
            echo(f"reader {decision['candidate_version']} promoted; the API at {settings.api_url} serves it")
        except CandorError as exc:
            out["reload_error"] = str(exc)
            echo(f"reader {decision['candidate_version']} promoted (current), not yet served: {exc}")
    return out


def recalibrate(settings: Settings, folder: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    """After a reader promotion: every collection calibrated before is calibrated again, for the new reader,
    from its reviewed flags (a calibration holds only for the reader it was made on); one that no longer
    has enough flags says so and falls back to the new reader's own threshold."""
    store = AnswerStore(settings)
    try:
        collections = [t.collection for t in store.list_collection_thresholds()]
    finally:
        store.close()
    if not collections:
        return {}
    reader = load_reader(folder, settings)
    out: dict[str, Any] = {}
    for name in collections:
        try:
            report = run_calibration(
                settings, name, dry_run=False, questions=None, min_flags=settings.calibration_min_flags,
                target=settings.calibration_target, who="candor retrain", source="loop", reader=reader,
            )  # fmt: skip
        except CandorError as exc:
            echo(f"reader: {name} not recalibrated ({exc}); the new reader's own threshold applies")
            out[name] = {"error": str(exc)}
            continue
        for line in report["lines"]:
            echo(f"reader: {line}")
        out[name] = {k: report[k] for k in ("threshold", "chosen", "flags", "meets_target", "miss")}
    return out
