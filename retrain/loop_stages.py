"""The retraining pipeline's stages as functions: files in, files out.

``dvc.yaml`` runs each through a thin ``candor loop <stage>`` command; the
functions here only connect the stage's files (``LoopPaths``) with the room
modules that do the work, so every stage can be run and tested on its own.

    export (candor retrain, before dvc)  answer log -> inputs/flags.jsonl, inputs/baseline.json;
                      CANDOR_DATA_SOURCE (or build_data.source) -> inputs/base_data.json
    export_feedback   screen flags (poisoning defences) -> flags.jsonl, screening.json
    build_pairs       -> pairs.jsonl, regression.jsonl, pairs_stats.json
    prepare           base data + pairs -> train.jsonl, mix_stats.json
    train             warm start from the baseline adapter -> train/
    evaluate          candidate vs baseline -> metrics.json, plots/, eval/
    promote           the gate -> decision.json; if it passes: registry register + promote
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from candor.data_source import split_files
from candor.errors import NotFoundError
from candor.feedback.store import AnswerStore
from candor.finetune.params import train_config as ft_config
from candor.jsonl import read_jsonl, write_json, write_jsonl
from candor.retrain.adapters import AdapterRegistry, ensure_current
from candor.retrain.gate import promote_if_passed
from candor.retrain.loop_eval import evaluate as evaluate_adapters
from candor.retrain.loop_params import LoopParams, LoopPaths, loop_params, squad_source
from candor.retrain.loop_train import train_from
from candor.retrain.mix import prepare as mix
from candor.retrain.pairs import build_pairs as build
from candor.retrain.poisoning import read_flags, screen_flags
from candor.settings import Settings

log = logging.getLogger("candor.retrain.loop")


def _read_json(path: Path) -> Any:
    if not Path(path).exists():
        raise NotFoundError(f"{path} not found (run the stage that writes it, or `dvc repro`)")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def paths_for(params: dict[str, Any]) -> tuple[LoopParams, LoopPaths]:
    lp = loop_params(params)
    return lp, LoopPaths(Path(lp.workdir))


# --- before dvc: the inputs DVC cannot hash itself ---------------------------------------------


def export_inputs(settings: Settings, paths: LoopPaths) -> dict[str, Any]:
    """Approved flags from the answer log, and which adapter they were judged against.

    Both files change only when their content does (the export is byte-stable),
    so ``dvc repro`` reruns the pipeline only for new flags or a new baseline.
    """
    registry = AdapterRegistry.for_settings(settings)
    current = ensure_current(settings, registry)
    store = AnswerStore(settings)
    try:
        n = store.write_export(paths.export)
    finally:
        store.close()
    baseline = {
        "version": current.version if current else None,
        "sha256": current.sha256 if current else None,
        "path": str(current.path.resolve()) if current else None,
        "name": settings.serving_adapter_name,
    }
    write_json(paths.baseline, baseline)
    return {"flags": n, "baseline": baseline, "export": str(paths.export)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_base_data(
    params: dict[str, Any], paths: LoopPaths, settings: Settings, workspace: Path = Path(".")
) -> dict[str, Any]:
    """Where the SQuAD base data is (``build_data.source``, else CANDOR_DATA_SOURCE) and its files' hashes.

    dvc.yaml cannot read a setting, so the stages that read the base data depend on this file
    instead: it changes when the data moves or its content does. Missing data is a SettingsError
    naming CANDOR_DATA_SOURCE, raised before DVC starts. A relative ``build_data.source`` is
    relative to the ``workspace`` (DVC's working directory).
    """
    bd = dict(params.get("build_data") or {})
    if bd.get("source"):
        bd["source"] = str(Path(workspace) / Path(bd["source"]).expanduser())
    source, split = squad_source({**params, "build_data": bd}, settings)
    files = split_files(source, split)
    manifest = {
        "path": str(source.resolve()),
        "split": split,
        "sha256": {f.name: _sha256(f) for f in files},
    }
    write_json(paths.base_data, manifest)
    return manifest


def with_base_data(params: dict[str, Any], paths: LoopPaths) -> dict[str, Any]:
    """``params`` with ``build_data.source`` set to the exported base data (what DVC hashed)."""
    if not paths.base_data.exists():
        raise NotFoundError(
            f"{paths.base_data} not found: `candor retrain` (or `candor loop export`) writes it first, "
            "from CANDOR_DATA_SOURCE or params.yaml build_data.source"
        )
    manifest = _read_json(paths.base_data)
    out = copy.deepcopy(params)
    out.setdefault("build_data", {})
    out["build_data"]["source"] = manifest["path"]
    out["build_data"]["split"] = manifest["split"]
    return out


# --- the DVC stages ---------------------------------------------------------------------------


def screen(params: dict[str, Any]) -> dict[str, Any]:
    lp, paths = paths_for(params)
    if not paths.export.exists():
        raise NotFoundError(f"{paths.export} not found: `candor retrain` (or `candor loop export`) writes it first")
    result = screen_flags(read_flags(paths.export), lp.poisoning, lp.pairs.support_min_recall)
    write_jsonl(paths.flags, result.kept)
    report = result.report()
    write_json(paths.screening, report)
    return report


def build_pairs(params: dict[str, Any]) -> dict[str, Any]:
    lp, paths = paths_for(params)
    result = build(read_jsonl(paths.flags), lp.pairs.support_min_recall)
    write_jsonl(paths.pairs, result.pairs)
    write_jsonl(paths.regression, result.regression)
    write_json(paths.pairs_stats, result.stats)
    return result.stats


def prepare(params: dict[str, Any]) -> dict[str, Any]:
    lp, paths = paths_for(params)
    rows, stats = mix(with_base_data(params, paths), read_jsonl(paths.pairs), lp.mix)
    write_jsonl(paths.train_data, rows)
    write_json(paths.mix_stats, stats)
    return stats


def train_config(params: dict[str, Any]) -> Any:
    """The `train` section with the loop's overrides, reading the mixed set and writing train/."""
    lp, paths = paths_for(params)
    overrides = dict(lp.train)
    overrides.update(train_file=str(paths.train_data), output_dir=str(paths.train_dir))
    return ft_config(params, None, **overrides)


def train(params: dict[str, Any], settings: Settings, progress: bool = True) -> dict[str, Any]:
    lp, paths = paths_for(params)
    baseline = _read_json(paths.baseline)
    init = Path(baseline["path"]) if baseline.get("path") else None
    # with no adapter to start from, a KL to a zero LoRA is a KL to the base: leave the recipe's own choice
    anchor = lp.anchor_base_rows and init is not None
    cfg = train_config(params)
    return train_from(cfg, init, settings, progress=progress, anchor=anchor, base_ce_weight=lp.base_ce_weight)


def evaluate(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    lp, paths = paths_for(params)
    metrics = evaluate_adapters(
        with_base_data(params, paths),
        lp,
        settings,
        paths.adapter,
        _read_json(paths.baseline),
        read_jsonl(paths.regression),
        paths.eval_dir,
        paths.plots,
    )
    write_json(paths.metrics, metrics)
    return metrics


def promote(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The gate's decision; a passing candidate is registered (with lineage) and made current."""
    lp, paths = paths_for(params)
    metrics = _read_json(paths.metrics)
    baseline = _read_json(paths.baseline)

    def lineage(decision: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        info = {
            "train": _read_json(paths.train_dir / "train_summary.json"),
            "data": _read_json(paths.mix_stats),
            "decision": {c["name"]: c["ok"] for c in decision["checks"]},
            "metrics": {"frozen": metrics["frozen"]["candidate"], "regression": metrics["regression"]["candidate"]},
            "flags_seen": sorted(r["flag_id"] for r in read_jsonl(paths.export)),
        }
        return _read_json(paths.pairs_stats)["flag_ids"], info

    registry = AdapterRegistry.for_settings(settings)
    decision = promote_if_passed(registry, paths.adapter, baseline, metrics, lp.gate, lineage)
    write_json(paths.decision, decision)
    return decision
