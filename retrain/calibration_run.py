"""`candor calibrate`: the collection's flags from the answer store, the current reader, the choice stored.

Kept apart from ``calibrate.py`` (pure: flags and a reader in, a choice out) because this one opens the
answer store, loads the reader and, with ``--questions``, the retriever.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from candor.decision import READER, resolve_threshold
from candor.feedback.store import AnswerStore
from candor.ingest.retriever import Retriever
from candor.reader import AnswerabilityReader, load_reader
from candor.retrain.calibrate import calibrate, question_set_rates
from candor.retrain.readers import serving_reader_folder
from candor.settings import Settings, SettingsError


def load_current_reader(settings: Settings) -> AnswerabilityReader:
    folder = serving_reader_folder(settings)
    if folder is None:
        raise SettingsError("calibrating a threshold needs the reader: set CANDOR_READER_PATH (models/candor-reader)")
    return load_reader(folder, settings)


def run_calibration(
    settings: Settings,
    collection: str,
    *,
    dry_run: bool,
    questions: Path | None,
    min_flags: int,
    target: float,
    who: str | None,
    source: str = "calibration",
    reader: AnswerabilityReader | None = None,
) -> dict[str, Any]:
    reader = reader or load_current_reader(settings)
    store = AnswerStore(settings)
    try:
        record = store.get_collection_threshold(collection)
        applies = record is not None and record.model == reader.version
        served = resolve_threshold(settings, READER, reader.threshold, record.threshold if applies else None)
        rows = list(store.export_flags(collections=[collection]))
        result = calibrate(rows, collection, reader, served, min_flags=min_flags, target=target)
        lines = result.lines()
        if settings.reader_threshold is not None:
            lines.append("note: CANDOR_READER_THRESHOLD is set: it overrides every collection's calibration")
        if not dry_run:
            record = store.set_collection_threshold(result.record(source, who))
            lines.append(f"stored: {collection} refuses at {record.threshold:.4f} with reader {record.model}")
        else:
            lines.append("dry run: nothing stored")
    finally:
        store.close()
    report: dict[str, Any] = {
        "collection": collection,
        "model": result.model,
        "threshold": result.threshold,
        "chosen": result.chosen,
        "before": result.before,
        "flags": result.flags,
        "target": target,
        "meets_target": result.meets_target,
        "miss": result.miss,
        "stored": not dry_run,
    }
    if questions is not None:
        retriever = Retriever(settings)

        def retrieve(q: str, c: str) -> list[Any]:
            return retriever.retrieve(q, c, settings.top_k)

        args = (Path(questions), collection, retrieve, reader)
        before = question_set_rates(*args, served, settings.min_retrieval_score)
        after = question_set_rates(*args, result.threshold, settings.min_retrieval_score)
        report["question_set"] = {"file": str(questions), "before": before, "after": after}
        worst = max(after["over_refusal"], after["hallucination_rate"])
        lines.append(
            f"question set {questions} ({after['questions']} questions, decided before generation): "
            f"over-refusal {before['over_refusal']:.3f} -> {after['over_refusal']:.3f}, "
            f"hallucination {before['hallucination_rate']:.3f} -> {after['hallucination_rate']:.3f}"
            + ("" if worst <= target + 1e-12 else f"; misses the target {target:.2f} by {worst - target:.3f}")
        )
    report["lines"] = lines
    return report
