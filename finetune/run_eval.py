"""`candor eval --mode oracle`: load data and models, measure, write the report.

The threshold of each model is chosen on the validation split of *train*
articles (built by `candor finetune build-data`), never on the split reported.
"""

from __future__ import annotations

import time
from pathlib import Path

from candor.answerability import AnswerabilityVerifier
from candor.data_source import data_split
from candor.finetune.evaluate import LocalGenerator, evaluate_oracle, oracle_items, parse_models
from candor.finetune.probe import run_probe
from candor.finetune.report import write_report
from candor.finetune.squad import load_squad
from candor.generation import GenerationParams
from candor.hardware import resolve_dtype
from candor.reader import load_reader


def load_eval_verifier(settings, ev: dict, verifier_path: Path | None, reader_path: Path | None = None):
    """The answerability layer named on the command line or in params (eval.reader, eval.verifier), or None."""
    reader = reader_path or ev.get("reader")
    if reader:
        return load_reader(Path(reader), settings)
    path = verifier_path or ev.get("verifier")
    if not path:
        return None

    return AnswerabilityVerifier(Path(path), settings.resolved_embed_model_path)


def refusal_signal(verifier) -> str:
    if verifier is None:
        return "first token: probability of the refusal sentence's first token"
    return f"{verifier.layer}: 1 - P(answerable) from {verifier.folder}"


def run_config(mode: str, src, split: str, n: int, limit, verifier, t0: float, models: dict, **details) -> dict:
    """A report's ``config``: what was asked, the mode's own ``details``, the refusal signal, the time taken."""
    head = {"mode": mode, "source": str(src), "split": split, "questions": n, "limit": limit}
    tail = {"refusal_signal": refusal_signal(verifier), "seconds": round(time.monotonic() - t0, 1), "models": models}
    return head | details | tail


def run_oracle_eval(
    settings,
    ev: dict,
    models: dict[str, str],
    *,
    source: Path | None,
    split: str | None,
    limit: int,
    calibration_limit: int,
    out: Path,
    progress: bool = True,
    verifier_path: Path | None = None,
    reader_path: Path | None = None,
) -> dict:
    models = parse_models(models)  # a missing adapter fails before any data or model loads
    split = split or ev.get("split", "dev")
    seed = int(ev.get("seed", 13))
    src = data_split(split, source or ev.get("source"), settings)
    corpus = load_squad(src, split)
    items = oracle_items(
        corpus,
        limit=limit,
        seed=seed,
        distractors=int(ev.get("distractors", 0)),
        extra_categories=ev.get("extra_categories", []) or [],
        extra_limit=int(ev.get("extra_limit", 100)),
    )
    calibration = []
    if calibration_limit >= 0:
        cal_corpus = load_squad(
            Path(ev.get("calibration_source", "var/finetune/data")), ev.get("calibration_split", "val")
        )
        calibration = oracle_items(
            cal_corpus, limit=calibration_limit, seed=seed, distractors=int(ev.get("distractors", 0))
        )
    gen = LocalGenerator(
        Path(ev.get("base_model_path") or settings.resolved_base_model_path),
        dtype=ev.get("dtype", settings.model_dtype),
        threads=int(ev.get("torch_threads", 1)),
        top_n=int(ev.get("top_n_tokens", 5)),
    )
    verifier = load_eval_verifier(settings, ev, verifier_path, reader_path)
    t0 = time.monotonic()
    pred_dir = out.parent / (out.stem + "-predictions")
    # the served generation parameters and prompt (settings), with the evaluation's token budget
    params = GenerationParams.from_settings(settings, int(ev.get("max_new_tokens", 32)))
    results = evaluate_oracle(
        gen,
        models,
        items,
        calibration,
        max_input_tokens=settings.max_input_tokens,
        max_new_tokens=int(ev.get("max_new_tokens", 32)),
        batch_size=int(ev.get("batch_size", 16)),
        threshold_objective=ev.get("threshold_objective", "minimax"),
        n_boot=int(ev.get("bootstrap", 1000)),
        out_dir=pred_dir,
        progress=progress,
        verifier=verifier,
        params=params,
        evidence_mode=settings.prompt_evidence,
    )
    if ev.get("probe", True):
        for name in models:
            results[name]["probe"] = run_probe(gen, name)
    calibration_set = {
        "source": str(ev.get("calibration_source", "var/finetune/data")),
        "split": ev.get("calibration_split", "val"),
        "questions": len(calibration),
    }
    run = {
        "config": run_config(
            "oracle",
            src,
            split,
            len(items),
            limit,
            verifier,
            t0,
            models,
            calibration=calibration_set,
            distractors=int(ev.get("distractors", 0)),
            max_new_tokens=int(ev.get("max_new_tokens", 32)),
            dtype=resolve_dtype(ev.get("dtype", settings.model_dtype)),
            decoding=f"greedy, batched, in-process; {params.describe()}",
            prompt_evidence=settings.prompt_evidence,
        ),
        "models": results,
    }
    write_report(run, out, out.with_suffix(".md"), title=f"Candor evaluation: oracle mode, {split}")
    return run
