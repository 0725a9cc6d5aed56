"""The ``evaluate`` stage: the candidate adapter against the one serving now, on the same questions.

Every question goes through the service's answer core (``candor.service.answering.AnswerEngine``), as
served: prompt fitting, the chat template, the retrieval gate, the refusal rule, the grounding check. What
the gate promotes is then what users get. The base model and both adapters are in memory once; the answer
core's collaborators are this process's (``candor.retrain.served``: the question's own passages, an
in-process LLM per adapter, an answer log in memory). Two sets:

- the frozen eval set: questions of the training split's validation articles
  (the articles the fine-tuning builder holds out, so no adapter trained on
  them) in oracle mode, a fixed sample for ``loop.eval.seed``; any question
  that was flagged is left out, since the candidate trained on it. The answer
  core measures without thresholds (``candor.decision.MEASURE_ONLY``): the
  metrics apply ``settings.refusal_threshold`` by the same rule and sweep it
  for the trade-off curves;
- the regression set: every screened flag's prompt, rebuilt with its history
  and logged context, with the behaviour now expected (``pairs.py``), decided
  with every refusal layer on (``candor.decision.ALL_LAYERS``), as served.

Writes ``metrics.json`` (for ``dvc metrics`` and the gate), the trade-off
curves (``dvc plots``), predictions, and a before/after table of the
regression set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from candor.decision import ALL_LAYERS, MEASURE_ONLY, THRESHOLD, resolve_threshold
from candor.errors import NotFoundError
from candor.finetune.dataset import split_articles
from candor.finetune.evaluate import (
    BASE,
    EvalItem,
    LocalGenerator,
    Prediction,
    oracle_items,
    score,
    write_predictions,
)
from candor.finetune.metrics import summarize, token_f1
from candor.finetune.params import build_config
from candor.finetune.squad import load_squad
from candor.generation import GenerationParams
from candor.jsonl import json_safe
from candor.prompts import ContextChunk, normalize_text
from candor.retrain.loop_params import LoopParams, squad_source
from candor.retrain.served import FixedPassages, LocalLLM, MemoryLog, answer_all
from candor.service.answering import AnswerEngine, AnswerRequest, AnswerResult
from candor.service.chat_template import PromptRenderer
from candor.service.llm_client import ServerInfo

CANDIDATE = "candidate"
CURRENT = "current"
FROZEN_METRICS = (
    "n",
    "n_answerable",
    "n_unanswerable",
    "hallucination_rate",
    "over_refusal",
    "f1",
    "em",
    "answered_f1",
    "f1_rg",
    "refusal_f1",
    "refused_rate",
    "auroc",
    "curve_area",
)


def frozen_items(params: dict[str, Any], lp: LoopParams, exclude: set[str]) -> tuple[list[Any], int]:
    """(eval items, how many validation questions were left out as flagged)."""
    source, split = squad_source(params)
    corpus = load_squad(source, split)
    cfg = build_config(params)
    _, val_articles = split_articles(corpus, cfg.val_articles, cfg.seed)
    val = corpus.subset(val_articles)
    before = len(val.questions)
    val.questions = [q for q in val.questions if normalize_text(q.question) not in exclude]
    items = oracle_items(val, limit=lp.eval.limit, seed=lp.eval.seed, distractors=lp.eval.distractors)
    return items, before - len(val.questions)


def regression_passes(
    item: dict[str, Any], text: str, refused: bool, min_f1: float, confidence: float = 1.0, min_confidence: float = 0.0
) -> bool:
    """Refuse items pass on a decisive refusal; answer items on an answer close to the reference (if any).

    Decisive: the refusal's first token has at least ``min_confidence`` of the
    probability. A marginal flip (greedy picks "I" at 17%) was seen to come
    undone on the model server, whose merged bf16 weights round differently.
    """
    if item["expect"] == "refuse":
        return refused and confidence >= min_confidence
    if refused:
        return False
    ref = item.get("reference")
    if not ref:
        return True
    a, b = normalize_text(text), normalize_text(ref)
    return bool(a and b and (f" {b} " in f" {a} " or f" {a} " in f" {b} ")) or token_f1(text, [ref]) >= min_f1


def _requests(passages: FixedPassages, prefix: str, questions: Sequence[tuple[str, list[ContextChunk], list]]):
    """One request per question, each on its own passages (a one-question collection)."""
    return [
        AnswerRequest(question, passages.add(f"{prefix}:{i}", chunks), top_k=max(1, len(chunks)), history=history)
        for i, (question, chunks, history) in enumerate(questions)
    ]


def _answer_text(res: AnswerResult, log: MemoryLog) -> str:
    """The answer as served (cut at a repeated sentence), or for a refusal what the model wrote."""
    if not res.refused:
        return res.answer
    return log.records[res.answer_id].get("raw_answer") or res.answer


def _prediction(item: EvalItem, res: AnswerResult, log: MemoryLog, llm: LocalLLM) -> Prediction:
    """The answer core's answer as ``candor eval`` scores it: refused as served (the model's own refusal or
    the grounding check), the first token's refusal confidence."""
    _, alts, n = llm.outputs.get(log.records[res.answer_id].get("prompt") or "", ("", [], 0))
    conf = res.signals.get("first_token")
    extra = {"refusal_layer": res.refusal_layer}
    return Prediction(item.id, _answer_text(res, log), res.refused, float(conf or 0.0), alts, n, extra)


def evaluate(
    params: dict[str, Any],
    lp: LoopParams,
    settings: Any,
    candidate: Path,
    baseline: dict[str, Any],
    regression: Sequence[dict[str, Any]],
    out_dir: Path,
    plots_dir: Path,
) -> dict[str, Any]:
    """Measure both adapters; returns the metrics dict (also written by the caller)."""
    if not (Path(candidate) / "adapter_config.json").exists():
        raise NotFoundError(f"no candidate adapter at {candidate} (run the train stage)")
    threshold = resolve_threshold(settings, THRESHOLD)
    max_in = lp.eval.max_input_tokens or settings.max_input_tokens
    exclude = {normalize_text(it["question"]) for it in regression}
    items, excluded = frozen_items(params, lp, exclude)

    gen = LocalGenerator(settings.resolved_base_model_path, dtype=settings.model_dtype, threads=lp.eval.threads)
    current_path = baseline.get("path")
    names = {CANDIDATE: CANDIDATE, CURRENT: CURRENT if current_path else BASE}
    if current_path:
        gen.add_adapter(CURRENT, current_path)
    gen.add_adapter(CANDIDATE, str(candidate))
    # the answer core as served, with the evaluation's own generation length and input budget
    served = settings.model_copy(update={"max_new_tokens": lp.eval.max_new_tokens, "llm_backend": "tgi"})
    renderer = PromptRenderer(settings.resolved_tokenizer_path)
    params = GenerationParams.from_settings(served)
    info = ServerInfo(Path(settings.resolved_base_model_path).name, max_in, settings.max_total_tokens)
    passages = FixedPassages()
    frozen_requests = _requests(passages, "frozen", [(it.question, it.chunks, []) for it in items])
    regression_requests = _requests(
        passages,
        "regression",
        [
            (it["question"], [ContextChunk(c["text"], c.get("title")) for c in it["contexts"]], it.get("history") or [])
            for it in regression
        ],
    )

    out_dir = Path(out_dir)
    frozen: dict[str, Any] = {"n": len(items), "excluded_flagged": excluded, "threshold": threshold}
    curves: dict[str, list] = {}
    reg: dict[str, Any] = {"n": len(regression)}
    table = [
        {"flag_id": it["flag_id"], "question": it["question"], "expect": it["expect"], "reference": it["reference"]}
        for it in regression
    ]
    for role in (CURRENT, CANDIDATE):
        llm = LocalLLM(gen, names[role], renderer, info, batch_size=lp.eval.batch_size, params=params)
        log = MemoryLog()
        # frozen set: every confidence measured, the threshold applied below by the metrics (and swept)
        engine = AnswerEngine(served, passages, llm, renderer, log, layers=MEASURE_ONLY)
        results = answer_all(engine, llm, frozen_requests)
        preds = [_prediction(it, res, log, llm) for it, res in zip(items, results, strict=True)]
        write_predictions(out_dir / f"predictions-{role}.jsonl", items, preds)
        summary = summarize(score(items, preds), threshold, n_boot=0)
        frozen[role] = {k: summary.get(k) for k in FROZEN_METRICS}
        curves[role] = [
            {"model": role, "over_refusal": p["over_refusal"], "hallucination_rate": p["hallucination_rate"]}
            for p in summary["curve"]
        ]
        # regression set: decided as served, every refusal layer on
        engine = AnswerEngine(served, passages, llm, renderer, log, layers=ALL_LAYERS)
        passed = 0
        for row, it, res in zip(table, regression, answer_all(engine, llm, regression_requests), strict=True):
            text = _answer_text(res, log)
            conf = float(res.signals.get("first_token") or 0.0)
            ok = regression_passes(
                it, text, res.refused, lp.pairs.regression_min_f1, conf, lp.eval.refuse_min_confidence
            )
            passed += ok
            row[role] = {
                "answer": text,
                "refused": res.refused,
                "refusal_layer": res.refusal_layer,
                "refusal_confidence": round(conf, 4),
                "passed": ok,
            }
        reg[role] = {
            "passed": passed,
            "pass_rate": passed / len(regression) if regression else 0.0,
            "refused": sum(r[role]["refused"] for r in table),
        }
    metrics = json_safe(
        {
            "baseline": {"version": baseline.get("version"), "path": current_path, "name": baseline.get("name")},
            "candidate": {"path": str(candidate)},
            "frozen": frozen,
            "regression": reg,
        }
    )
    plots = Path(plots_dir)
    plots.mkdir(parents=True, exist_ok=True)
    for role, pts in curves.items():
        (plots / f"tradeoff_{role}.json").write_text(json.dumps(json_safe(pts), indent=1) + "\n")
    (out_dir / "regression_report.json").write_text(json.dumps(json_safe(table), indent=2, ensure_ascii=False) + "\n")
    return metrics
