"""`candor eval --questions FILE -c COLLECTION`: a labelled question set, end to end, on your own documents.

The set is JSONL, one question a line: ``question``, ``answers`` (gold answers; empty when the
documents do not hold one), ``is_impossible``, and optionally ``id`` and ``kind`` (a category to
report apart, e.g. answerable / near_miss / off_topic). Every question goes through the service's
answer core (retrieval over an already ingested collection, the answerability layer, a real
TGI-protocol model server over HTTP, the refusal policy, the answer log), so the figures are the
served ones. A question should be refused exactly when the documents do not answer it. Reported per
model: decision metrics with bootstrap intervals, per kind, which layer refused, and every answer
(so a reader of the report sees what was said, and repeated sentences are counted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from candor.decision import ALL_LAYERS
from candor.errors import InvalidInputError
from candor.finetune.evaluate import parse_models
from candor.finetune.metrics import summarize
from candor.finetune.rag import answer_all, count_layers, scored_answer, served_engines
from candor.finetune.report import write_report
from candor.generation import GenerationParams, repeats_a_sentence
from candor.jsonl import json_objects
from candor.service.answering import AnswerRequest


@dataclass(frozen=True)
class LabelledQuestion:
    id: str
    question: str
    answers: tuple[str, ...]
    is_impossible: bool
    kind: str


def load_question_set(path: Path) -> list[LabelledQuestion]:
    out = []
    for line, row in json_objects(Path(path)):
        question, answers = row.get("question"), row.get("answers") or []
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError(f"{path}:{line}: 'question' must be a non-empty string")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise InvalidInputError(f"{path}:{line}: 'answers' must be a list of strings")
        impossible = bool(row.get("is_impossible", not answers))
        if not impossible and not answers:
            raise InvalidInputError(f"{path}:{line}: an answerable question needs its gold answers")
        kind = str(row.get("kind") or ("unanswerable" if impossible else "answerable"))
        out.append(LabelledQuestion(str(row.get("id", line)), question, tuple(answers), impossible, kind))
    if not out:
        raise InvalidInputError(f"{path}: no questions")
    return out


__all__ = ["LabelledQuestion", "load_question_set", "repeats_a_sentence", "run_question_set_eval"]


def run_question_set_eval(
    settings,
    models: dict[str, str],
    questions_path: Path,
    collection: str,
    out: Path,
    *,
    answerability=None,
    threshold: float | None = None,
    llm_url: str | None = None,
    server_threads: int = 1,
    concurrency: int = 4,
    n_boot: int = 1000,
) -> dict:
    """Every question through the answer core for each model; the report's dict (also written to ``out``)."""
    models = parse_models(models)
    questions = load_question_set(questions_path)
    if answerability is not None and threshold is None:
        threshold = answerability.threshold
    t0 = time.monotonic()
    results: dict[str, dict] = {}
    if answerability is not None:  # the set's threshold applies in the engine: what is served is measured
        settings = settings.model_copy(update={f"{answerability.layer}_threshold": threshold})
    served = served_engines(
        settings,
        models,
        out,
        llm_url=llm_url,
        server_threads=server_threads,
        answerability=answerability,
        layers=ALL_LAYERS,
    )
    with served as (s, _, engines):
        requests = [AnswerRequest(question=q.question, collection=collection) for q in questions]
        for name, engine in engines.items():
            answers = anyio.run(answer_all, engine, requests, concurrency)
            scored, rows = [], []
            for q, res in zip(questions, answers, strict=True):
                x = scored_answer(res, q.answers, q.is_impossible, q.is_impossible, q.kind)
                scored.append(x)
                rows.append(
                    {
                        "id": q.id,
                        "kind": q.kind,
                        "question": q.question,
                        "answer": res.answer,
                        "refusal_layer": res.refusal_layer,
                        "confidence": res.refusal_confidence,
                        "evidence": (res.evidence or {}).get("text"),
                        "f1": round(x.f1, 3),
                    }
                )
            results[name] = {
                "model": models[name],
                "threshold": None,  # the engine applied the answerability threshold: decisions are final
                "model_only": summarize(scored, None, n_boot=n_boot),
                "at_threshold": None,
                "refusal_layers": count_layers(answers),
                "answers_repeating_a_sentence": sum(repeats_a_sentence(r["answer"]) for r in rows),
                "answers": rows,
            }
    run = {
        "config": {
            "mode": "question-set",
            "questions": str(questions_path),
            "n": len(questions),
            "collection": collection,
            "answerability": None if answerability is None else f"{answerability.layer} {answerability.version}",
            "answerability_threshold": threshold,
            "min_retrieval_score": s.min_retrieval_score,
            "grounding_enforce": s.grounding_enforce,
            "generation": GenerationParams.from_settings(s).describe(),
            "prompt_evidence": s.prompt_evidence,
            "seconds": round(time.monotonic() - t0, 1),
            "models": models,
        },
        "models": results,
    }
    write_report(run, out, out.with_suffix(".md"), title=f"Candor evaluation: {questions_path.name} on {collection}")
    with out.with_suffix(".md").open("a", encoding="utf-8") as fh:
        fh.write(answers_markdown(results))
    return run


def answers_markdown(results: dict) -> str:
    """Per model: refusals by kind and by layer, repeated sentences, and every answer given."""
    lines = ["", '("Model only" above is the served decision: the engine applied the answerability threshold.)', ""]
    for name, res in results.items():
        cats = res["model_only"]["per_category"]
        lines += [f"## {name}: by kind", "", "| kind | n | refused % | answered-F1 |", "|---|---|---|---|"]
        for kind, m in cats.items():
            f1 = f"{100 * m['answered_f1']:.1f}" if "answered_f1" in m else ""
            lines.append(f"| {kind} | {m['n']} | {100 * m['refused_rate']:.1f} | {f1} |")
        layers = ", ".join(f"{k} {v}" for k, v in sorted(res["refusal_layers"].items()))
        lines += [
            "",
            f"Refusal layers: {layers}. Answers repeating a sentence: {res['answers_repeating_a_sentence']}.",
            "",
        ]
        lines += ["| id | question | answer | layer | evidence |", "|---|---|---|---|---|"]
        for r in res["answers"]:
            cells = [r["id"], r["question"], r["answer"], r["refusal_layer"] or "", r["evidence"] or ""]
            lines.append("| " + " | ".join(" ".join(str(c).split()).replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"
