"""The answerability reader: does this passage answer this question, and where?

An extractive question-answering model (all-MiniLM-L6-v2 with the standard
Hugging Face span head, fine-tuned by ``candor finetune train-reader``) reads
the question and one passage together and scores every legal answer span
against "no answer" (the [CLS] position), the SQuAD 2.0 recipe. Post-processing
is transformers' own (``select_starts_ends``: per-window softmax, the
maximum answer length, n-best, the null score kept across windows). Because
both scores share the same softmax normalisers, ``best / (best + null)`` is
the sigmoid of the classic null-score difference: that is P(answerable) for a
passage, and the best span is its evidence, with character offsets. A question
is as answerable as its best passage.

On disk (a folder): ``reader.json`` (format, base encoder by package, window
sizes, the validation threshold) and ``reader.safetensors`` holding the tensors
that training changed (the word embeddings stay the base encoder's, so the
folder stays small); the base encoder is the embedding model Candor already ships.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from candor.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from candor.settings import Settings

log = logging.getLogger("candor.reader")

FORMAT = "candor-reader/1"
CONFIG_FILE = "reader.json"
WEIGHTS_FILE = "reader.safetensors"


@dataclass
class ReaderMeta:
    format: str
    base_model: str  # informational: the package (and version) whose encoder the tensors sit on
    max_length: int = 384
    doc_stride: int = 128
    max_answer_len: int = 30
    threshold: float | None = None  # refusal threshold on 1 - P(answerable), chosen on validation
    validation: dict | None = None
    training: dict = field(default_factory=dict)
    int8: dict | None = None  # the int8 variant's own threshold and validation (`candor finetune quantize-reader`)

    @classmethod
    def read(cls, folder: Path) -> ReaderMeta:
        data, path = read_model_json(folder, CONFIG_FILE, FORMAT, "an answerability reader")
        for name in ("max_length", "doc_stride", "max_answer_len"):
            v = data.get(name, getattr(cls, name))
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"{path}: {name} must be a positive integer, not {v!r}")
        return cls(**{"base_model": "", **{k: v for k, v in data.items() if k in cls.__dataclass_fields__}})

    def write(self, folder: Path) -> None:
        write_model_json(folder, CONFIG_FILE, self.__dict__)


def write_model_json(folder: Path, config_file: str, data: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / config_file).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_model_json(folder: Path, config_file: str, fmt: str, what: str) -> tuple[dict, Path]:
    """A model folder's JSON card, checked: present, an object of the expected format, a threshold in [0, 1]."""
    path = Path(folder) / config_file
    if not path.exists():
        raise NotFoundError(f"no {config_file} in {folder}: not {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a JSON object")
    if data.get("format") != fmt:
        raise InvalidInputError(f"{path}: format {data.get('format')!r}, expected {fmt!r}")
    threshold = data.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0
    ):
        raise InvalidInputError(f"{path}: threshold must be a number from 0 to 1 (or null), not {threshold!r}")
    return data, path


@dataclass(frozen=True)
class Evidence:
    """The reader's verdict on one passage: P(answerable) and the best span (character offsets)."""

    passage: int  # index into the passages given
    answerable: float
    start: int  # character offsets into the passage; -1 when no span was legal
    end: int
    text: str
    span_score: float  # P(this span) under the reader's start/end distributions
    null_score: float  # P(no answer)


class PassageReader(Protocol):
    """The answerability layer's seam: the reader, or the older verifier (which marks no span)."""

    layer: str  # the refusal layer this model's decisions are recorded under

    @property
    def threshold(self) -> float | None: ...

    @property
    def version(self) -> str: ...

    def read(self, question: str, passages: Sequence[str]) -> list[Evidence]: ...


def folder_version(folder: Path, weights_file: str) -> str:
    """A model folder's name and the first 12 hex digits of its weights' sha256 (what the log records)."""
    import hashlib

    digest = hashlib.sha256((Path(folder) / weights_file).read_bytes()).hexdigest()[:12]
    return f"{Path(folder).name}@{digest}"


def load_trained_tensors(model, weights: Path, base_path: Path, trained_on: str, head: tuple[str, ...]) -> None:
    """Put the tensors a training run saved (float16, the changed ones only) onto the base encoder.

    Every failure is a clear InvalidInputError: an unreadable file, a missing head, tensors of another shape
    (trained on another encoder) or names the encoder does not have.
    """
    from safetensors.torch import load_file

    if not weights.exists():
        raise NotFoundError(f"no {weights.name} in {weights.parent}")
    try:
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
    except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
        raise InvalidInputError(f"{weights}: not a readable safetensors file ({exc})") from None
    missing_head = set(head) - set(state)
    if missing_head:
        raise InvalidInputError(f"{weights}: lacks {sorted(missing_head)}")
    try:
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    except RuntimeError as exc:  # shape mismatch: trained on top of another encoder
        first = str(exc).strip().splitlines()[-1].strip()
        raise InvalidInputError(
            f"{weights} does not fit the encoder at {base_path} (trained on {trained_on or 'another'}): {first}"
        ) from None
    if unexpected:
        raise InvalidInputError(f"{weights}: tensors the base encoder does not have: {unexpected[:5]}")


def load_trained_model(load_base, base_path: Path, weights: Path, trained_on: str, head: tuple[str, ...]):
    """(tokenizer, model): the base encoder with a fresh head (``load_base``), the run's tensors put on it
    (``load_trained_tensors``), in eval mode."""
    tokenizer, model = load_base(base_path)
    load_trained_tensors(model, weights, base_path, trained_on, head)
    model.eval()
    return tokenizer, model


def load_qa_model(base_path: Path):
    """The base encoder with a fresh span head (training starts here; loading adds the tensors)."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (Path(base_path) / "config.json").exists():
        raise NotFoundError(f"reader base encoder not found at {base_path}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "qa_outputs newly initialised" is expected here
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(base_path)
    finally:
        hf_logging.set_verbosity(verbosity)
    return AutoTokenizer.from_pretrained(base_path), model


def encode(tokenizer, questions: Sequence[str], passages: Sequence[str], max_length: int, doc_stride: int, **kw):
    """Question + passage windows (long passages overflow into more windows), with offsets."""
    return tokenizer(
        list(questions),
        list(passages),
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        **kw,
    )


def best_spans(
    start_logits, end_logits, enc, n_passages: int, max_answer_len: int, passages: Sequence[str]
) -> list[Evidence]:
    """Per passage: transformers' span post-processing over every window, the null score kept at its minimum."""
    import numpy as np
    from transformers.pipelines.document_question_answering import select_starts_ends

    best: list[tuple[float, int, int]] = [(0.0, -1, -1)] * n_passages
    null = [1.0] * n_passages
    for w, p in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(w)
        n = len(seq)
        p_mask = np.array([[0 if (s == 1 or i == 0) else 1 for i, s in enumerate(seq)]])
        attention = np.ones((1, n), dtype=np.int64)
        starts, ends, scores, null_w = select_starts_ends(
            start_logits[w : w + 1, :n],
            end_logits[w : w + 1, :n],
            p_mask,
            attention,
            min_null_score=null[p],
            top_k=1,
            handle_impossible_answer=True,
            max_answer_len=max_answer_len,
        )
        null[p] = null_w
        if len(scores) and float(scores[0]) > best[p][0]:
            offsets = enc["offset_mapping"][w]
            best[p] = (float(scores[0]), int(offsets[starts[0]][0]), int(offsets[ends[0]][1]))
    out = []
    for p in range(n_passages):
        score, s, e = best[p]
        prob = score / (score + null[p]) if score + null[p] > 0 else 0.0
        out.append(Evidence(p, prob, s, e, passages[p][s:e] if s >= 0 else "", score, null[p]))
    return out


def quantize_int8(model):
    """Weight-only int8 for every Linear layer (torch's dynamic quantisation: float32 activations, CPU)."""
    import torch

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_reader(folder: Path, settings: Settings) -> AnswerabilityReader:
    """The reader as the settings serve it: the embedding package's encoder, float32 or int8."""
    return AnswerabilityReader(folder, settings.resolved_embed_model_path, int8=settings.reader_int8)


class AnswerabilityReader:
    """Reads (question, passage) pairs; thread-safe, batched, torch threads set by the caller."""

    layer = "reader"

    def __init__(self, folder: Path, base_path: Path, batch_size: int = 8, int8: bool = False):
        import torch

        self.folder = Path(folder)
        self.meta = ReaderMeta.read(self.folder)
        weights, head = self.folder / WEIGHTS_FILE, ("qa_outputs.weight", "qa_outputs.bias")
        self.tokenizer, self.model = load_trained_model(load_qa_model, base_path, weights, self.meta.base_model, head)
        self.int8 = int8
        if int8:  # dynamic int8 weights for the Linear layers, float32 activations (CPU)
            self.model = quantize_int8(self.model)
            if self.meta.int8 is None:
                log.warning(
                    "reader %s has no int8 threshold (`candor finetune quantize-reader`): using the float32 one",
                    self.folder,
                )
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._torch = torch
        self.version = folder_version(self.folder, WEIGHTS_FILE) + ("+int8" if int8 else "")

    @property
    def threshold(self) -> float | None:
        """The refusal threshold chosen on validation for the variant being served (float32 or int8)."""
        if self.int8 and self.meta.int8 is not None:
            return self.meta.int8.get("threshold")
        return self.meta.threshold

    def read(self, question: str, passages: Sequence[str]) -> list[Evidence]:
        """One Evidence per passage, in the order given."""
        out: list[Evidence] = []
        for i in range(0, len(passages), self.batch_size):
            chunk = list(passages[i : i + self.batch_size])
            out.extend(replace(ev, passage=ev.passage + i) for ev in self._read_batch(question, chunk))
        return out

    def _read_batch(self, question: str, passages: list[str]) -> list[Evidence]:
        torch = self._torch
        m = self.meta
        enc = encode(self.tokenizer, [question] * len(passages), passages, m.max_length, m.doc_stride, padding=True)
        inputs = {k: torch.tensor(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        with self._lock, torch.inference_mode():
            out = self.model(**inputs)
        return best_spans(
            out.start_logits.float().numpy(),
            out.end_logits.float().numpy(),
            enc,
            len(passages),
            m.max_answer_len,
            passages,
        )

    def answerable_probability(self, question: str, passages: Sequence[str]) -> float:
        """A question is as answerable as its best passage; with no passage it is not."""
        if not passages:
            return 0.0
        return max(ev.answerable for ev in self.read(question, passages))
