"""The reader's retraining stages: flags → reader labels → fine-tune → gate → register and promote.

The adapter's pipeline with the reader in its place (dvc.yaml: ``reader_labels`` after ``export_feedback``,
then ``reader_train``, ``reader_evaluate``, ``reader_promote``); the same screened flags feed both, so the
poisoning defences apply to reader labels as to pairs. Knobs: params.yaml ``reader_loop``.

    reader_labels    flags.jsonl -> reader/labels.jsonl, reader/regression.jsonl, reader/labels_stats.json
    reader_train     the serving reader's tensors + labels (repeated) + replay examples from the base data
                     -> reader/train/final (``candor.finetune.reader.train_reader``: the one training loop)
    reader_evaluate  both readers, at the threshold each serves with, on the frozen set (reader examples of
                     the base data's validation articles) and the regression set -> reader/metrics.json
    reader_promote   the gate (``gate.decide``, its own bounds) -> reader/decision.json; a pass registers
                     the reader (lineage: flag ids, screening, training, checks) and makes it current
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from candor.decision import READER, decide, resolve_threshold
from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.dataset import split_articles
from candor.finetune.metrics import token_f1
from candor.finetune.reader import ReaderConfig, parse_source, score_examples, train_reader
from candor.finetune.reader_data import build_reader_examples
from candor.finetune.squad import load_squad
from candor.jsonl import read_jsonl, write_json, write_jsonl
from candor.reader import AnswerabilityReader, ReaderMeta
from candor.refusal_score import refusal_confidence
from candor.retrain.gate import promote_if_passed
from candor.retrain.loop_params import GateParams, LoopPaths, loop_params
from candor.retrain.reader_labels import build_reader_labels
from candor.retrain.readers import ReaderRegistry, ensure_current_reader
from candor.settings import Settings

log = logging.getLogger("candor.retrain.reader_loop")


@dataclass
class ReaderEvalParams:
    limit: int = 300  # frozen-set reader examples (validation articles of the base data), 0 = all


@dataclass
class ReaderLoopParams:
    enabled: bool = True  # `candor retrain` retrains the reader beside the adapter (--only picks one)
    source: str | None = None  # replay data ("PATH:SPLIT" or a .json); default: the loop's base data
    replay_examples: int = 800  # base-data reader examples replayed beside the flag labels (no forgetting)
    extra_repeats: int = 4  # each flag label this many times
    train: dict[str, Any] = field(default_factory=dict)  # ReaderConfig overrides (max_steps, learning_rate, ...)
    eval: ReaderEvalParams = field(default_factory=ReaderEvalParams)
    gate: GateParams = field(default_factory=lambda: GateParams(0.03, 0.03, 0.03, 0.9, 1))


def reader_loop_params(params: dict[str, Any]) -> ReaderLoopParams:
    raw = params.get("reader_loop") or {}
    if not isinstance(raw, dict):
        raise InvalidInputError("params section 'reader_loop' must be a mapping")
    known = {f.name for f in dataclasses.fields(ReaderLoopParams)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInputError(f"params.yaml reader_loop: unknown keys {unknown}; known: {sorted(known)}")
    values = dict(raw)
    try:
        if "eval" in values:
            values["eval"] = ReaderEvalParams(**(values["eval"] or {}))
        if "gate" in values:
            values["gate"] = GateParams(**{**ReaderLoopParams().gate.__dict__, **(values["gate"] or {})})
        rp = ReaderLoopParams(**values)
    except TypeError as exc:
        raise InvalidInputError(f"params.yaml reader_loop: {exc}") from None

    bad = sorted(set(rp.train) - {f.name for f in dataclasses.fields(ReaderConfig)})
    if bad:
        raise InvalidInputError(f"params.yaml reader_loop.train: unknown reader settings {bad}")
    if rp.replay_examples < 0 or rp.extra_repeats < 1:
        raise InvalidInputError("reader_loop: replay_examples >= 0 and extra_repeats >= 1")
    return rp


@dataclass(frozen=True)
class ReaderPaths:
    root: Path  # the loop's workdir

    @property
    def baseline(self) -> Path:  # the reader serving when the flags were exported
        return self.root / "inputs" / "reader_baseline.json"

    @property
    def dir(self) -> Path:
        return self.root / "reader"

    @property
    def labels(self) -> Path:
        return self.dir / "labels.jsonl"

    @property
    def regression(self) -> Path:
        return self.dir / "regression.jsonl"

    @property
    def labels_stats(self) -> Path:
        return self.dir / "labels_stats.json"

    @property
    def train_dir(self) -> Path:
        return self.dir / "train"

    @property
    def candidate(self) -> Path:
        return self.train_dir / "final"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def regression_report(self) -> Path:  # each flagged question: P(answerable), decision, before / after
        return self.dir / "regression_report.json"

    @property
    def decision(self) -> Path:
        return self.dir / "decision.json"


def _paths(params: dict[str, Any]) -> tuple[ReaderLoopParams, LoopPaths, ReaderPaths]:
    lp = loop_params(params)
    return reader_loop_params(params), LoopPaths(Path(lp.workdir)), ReaderPaths(Path(lp.workdir))


def _read_json(path: Path) -> Any:
    if not Path(path).exists():
        raise NotFoundError(f"{path} not found (run the stage that writes it, or `dvc repro`)")
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --- before dvc ------------------------------------------------------------------------------


def export_reader_baseline(settings: Settings, root: Path) -> dict[str, Any]:
    """Which reader serves now (the registry's current; on first use CANDOR_READER_PATH becomes version one)."""

    registry = ReaderRegistry.for_settings(settings)
    current = ensure_current_reader(settings, registry)
    baseline = {
        "version": current.version if current else None,
        "sha256": current.sha256 if current else None,
        "path": str(current.path.resolve()) if current else None,
    }
    write_json(ReaderPaths(root).baseline, baseline)
    return baseline


def replay_source(params: dict[str, Any], rp: ReaderLoopParams, paths: LoopPaths) -> str:
    """The replay data as a reader source spec: ``reader_loop.source``, else the loop's exported base data."""
    if rp.source:
        return rp.source
    if not paths.base_data.exists():
        raise NotFoundError(f"{paths.base_data} not found: `candor retrain` (or `candor loop export`) writes it first")
    manifest = _read_json(paths.base_data)
    path = Path(manifest["path"])
    return str(path) if path.suffix == ".json" else f"{path}:{manifest['split']}"


# --- the DVC stages ---------------------------------------------------------------------------


def labels(params: dict[str, Any]) -> dict[str, Any]:

    _, paths, rpaths = _paths(params)
    lp = loop_params(params)
    result = build_reader_labels(read_jsonl(paths.flags), lp.pairs.support_min_recall)
    write_jsonl(rpaths.labels, [e.to_row() for e in result.examples])
    write_jsonl(rpaths.regression, result.regression)
    write_json(rpaths.labels_stats, result.stats)
    return result.stats


def train_config(params: dict[str, Any], baseline_folder: Path) -> Any:

    rp, paths, rpaths = _paths(params)
    meta = ReaderMeta.read(baseline_folder)
    bd = params.get("build_data") or {}
    values: dict[str, Any] = {
        "output_dir": str(rpaths.train_dir),
        "sources": [replay_source(params, rp, paths)],
        "seed": int(bd.get("seed", 13)),
        "val_articles": int(bd.get("val_articles", 3)),
        "max_length": meta.max_length,
        "doc_stride": meta.doc_stride,
        "max_answer_len": meta.max_answer_len,
        "init_from_reader": str(baseline_folder),
        "extra_examples": str(rpaths.labels),
        "extra_repeats": rp.extra_repeats,
        "limit_examples": rp.replay_examples,
        "warmup_steps": 0,
        "learning_rate": 3e-5,
        "num_train_epochs": 1.0,
        "save_steps": 10_000,
        "val_limit": 400,
    }
    values.update(rp.train)
    return ReaderConfig(**values)


def train(params: dict[str, Any], settings: Settings) -> dict[str, Any]:

    _, _, rpaths = _paths(params)
    baseline = _read_json(rpaths.baseline)
    if not baseline.get("path"):
        raise NotFoundError("no reader to retrain: set CANDOR_READER_PATH (or register one: `candor readers register`)")
    folder = Path(baseline["path"])
    cfg = train_config(params, folder)
    shutil.rmtree(rpaths.train_dir, ignore_errors=True)  # a fresh run from the baseline, never a stale checkpoint
    summary = train_reader(cfg, settings.resolved_embed_model_path, ReaderMeta.read(folder).base_model, resume=False)
    if not rpaths.candidate.exists():
        raise InvalidInputError("reader training stopped before the end (time budget): no candidate to evaluate")
    return summary


def frozen_examples(params: dict[str, Any], limit: int) -> list[Any]:
    """Reader examples of the base data's validation articles (no reader trains on them), first ``limit``."""

    rp, paths, _ = _paths(params)
    bd = params.get("build_data") or {}
    seed, n_val = int(bd.get("seed", 13)), int(bd.get("val_articles", 3))
    corpus = load_squad(*parse_source(replay_source(params, rp, paths)))
    _, val_articles = split_articles(corpus, n_val, seed)
    rows, _ = build_reader_examples(corpus.subset(val_articles), seed, 0.2, 0.2, "val")
    return rows[:limit] if limit else rows


def _frozen_metrics(examples: list[Any], evidence: list[Any], threshold: float | None) -> dict[str, Any]:

    n_ans = sum(e.answerable for e in examples)
    n_un = len(examples) - n_ans
    refused = [decide(1.0 - ev.answerable, threshold, layer=READER) is not None for ev in evidence]
    over = sum(r for e, r in zip(examples, refused, strict=True) if e.answerable)
    hall = sum(not r for e, r in zip(examples, refused, strict=True) if not e.answerable)
    f1 = sum(
        token_f1(ev.text, [e.answer_text]) for e, ev, r in zip(examples, evidence, refused, strict=True)
        if e.answerable and not r
    )  # fmt: skip
    return {
        "n": len(examples),
        "n_answerable": n_ans,
        "threshold": threshold,
        "hallucination_rate": round(hall / n_un, 4) if n_un else 0.0,
        "over_refusal": round(over / n_ans, 4) if n_ans else 0.0,
        "f1": round(f1 / n_ans, 4) if n_ans else 0.0,
        "refused_rate": round(sum(refused) / len(examples), 4) if examples else 0.0,
    }


def regression_decisions(model: Any, items: list[dict[str, Any]], threshold: float | None) -> list[dict[str, Any]]:
    """Each flagged question decided as the service decides it: 1 - max P(answerable) over the passages shown,
    raised by a weak best retrieval match, at ``threshold``."""
    out = []
    for item in items:
        passages = item["passages"]
        p = max((ev.answerable for ev in model.read(item["question"], passages)), default=0.0)
        scores = [s for s in item.get("scores") or [] if s is not None]
        confidence = refusal_confidence(None, scores, p)
        refused = decide(confidence, threshold, layer=READER) is not None
        out.append(
            {
                "flag_id": item["flag_id"],
                "expect": item["expect"],
                "answerable": round(p, 4),
                "confidence": round(confidence, 4) if confidence is not None else None,
                "refused": refused,
                "passed": refused == (item["expect"] == "refuse"),
            }
        )
    return out


def served_threshold(settings: Settings, folder: Path) -> float | None:

    return resolve_threshold(settings, READER, ReaderMeta.read(folder).threshold)


def evaluate(params: dict[str, Any], settings: Settings) -> dict[str, Any]:

    rp, _, rpaths = _paths(params)
    baseline = _read_json(rpaths.baseline)
    items = read_jsonl(rpaths.regression)
    examples = frozen_examples(params, rp.eval.limit)
    base = settings.resolved_embed_model_path
    out: dict[str, Any] = {"frozen": {}, "regression": {"n": len(items), "items": {}}}
    for name, folder in (("current", Path(baseline["path"])), ("candidate", rpaths.candidate)):
        model = AnswerabilityReader(folder, base)
        m = model.meta
        cfg = ReaderConfig(max_length=m.max_length, doc_stride=m.doc_stride, max_answer_len=m.max_answer_len)
        threshold = served_threshold(settings, folder)
        evidence = score_examples(model.model, model.tokenizer, examples, cfg)
        out["frozen"][name] = _frozen_metrics(examples, evidence, threshold) | {"version": model.version}
        decisions = regression_decisions(model, items, threshold)
        out["regression"][name] = {"passed": sum(d["passed"] for d in decisions), "threshold": threshold}
        out["regression"]["items"][name] = decisions
    out["baseline"] = baseline.get("version")
    write_json(rpaths.regression_report, out["regression"].pop("items"))
    write_json(rpaths.metrics, out)
    return out


def promote(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The gate's decision; a passing reader is registered (with lineage) and made current."""

    rp, paths, rpaths = _paths(params)
    metrics = _read_json(rpaths.metrics)
    baseline = _read_json(rpaths.baseline)

    def lineage(decision: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        summary = _read_json(rpaths.train_dir / "summary.json")["invocations"][-1]
        info = {
            "kind": "reader",
            "train": {k: summary.get(k) for k in ("global_step", "train_loss", "wall_s_this_invocation")},
            "data": summary.get("data", {}).get("extra"),
            "validation": summary.get("validation"),
            "decision": {c["name"]: c["ok"] for c in decision["checks"]},
            "metrics": {"frozen": metrics["frozen"]["candidate"], "regression": metrics["regression"]["candidate"]},
            "screening": _read_json(paths.screening) if paths.screening.exists() else None,
            "flags_seen": sorted(r["flag_id"] for r in read_jsonl(paths.export)),
        }
        return _read_json(rpaths.labels_stats)["flag_ids"], info

    decision = promote_if_passed(
        ReaderRegistry.for_settings(settings), rpaths.candidate, baseline, metrics, rp.gate, lineage
    )
    write_json(rpaths.decision, decision)
    return decision
