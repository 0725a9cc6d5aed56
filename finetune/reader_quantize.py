"""The answerability reader in int8, at a threshold of its own.

Dynamic int8 weights (``candor.reader.quantize_int8``) about halve the reader's time on a CPU and keep its
ranking (AUROC) where it was, but move P(answerable) enough that a fifth of the decisions near the float32
threshold flip. So the int8 variant gets its own threshold, chosen the way training chooses the float32 one:
on the same validation articles, by the same minimax rule. ``candor finetune quantize-reader`` writes it
into ``reader.json`` (``int8``), beside the float32 figures; ``CANDOR_READER_INT8=true`` serves it.
"""

from __future__ import annotations

from pathlib import Path

from candor.finetune.reader import ReaderConfig, load_examples, score_examples, validation_report
from candor.reader import AnswerabilityReader, ReaderMeta, quantize_int8


def quantize_reader(folder: Path, cfg: ReaderConfig, base_path: Path) -> dict:
    """Score the validation examples with the int8 reader, choose its threshold, record both in reader.json."""
    meta = ReaderMeta.read(Path(folder))
    same = {"max_length": meta.max_length, "doc_stride": meta.doc_stride, "max_answer_len": meta.max_answer_len}
    if meta.validation and meta.validation.get("examples"):  # the float32 threshold's own validation set
        same["val_limit"] = int(meta.validation["examples"])
    cfg = ReaderConfig(**{**cfg.__dict__, **same})
    reader = AnswerabilityReader(folder, base_path)  # float32, quantised here: it has no int8 threshold yet
    model = quantize_int8(reader.model)
    _, val, _ = load_examples(cfg)
    report = validation_report(val, score_examples(model, reader.tokenizer, val, cfg))
    meta.int8 = {
        "threshold": report["threshold"],
        "validation": report,
        "scheme": "torch dynamic int8 weights for every Linear layer, float32 activations",
    }
    meta.write(Path(folder))
    return meta.int8
