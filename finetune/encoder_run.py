"""What the two encoder trainers share: the answerability verifier's and the reader's knobs and validation.

Both train the embedding encoder on SQuAD-style questions with derived negatives, through the one
training loop (``candor.finetune.trainer``); each config subclasses this one and sets its own defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from candor.errors import InvalidInputError
from candor.finetune.metrics import Scored, auroc, choose_threshold


@dataclass
class EncoderRunConfig:
    output_dir: str = ""
    seed: int = 13
    val_articles: int = 3  # the dataset builder's split (same seed → same articles)
    miss_ratio: float = 0.2  # retrieval_miss examples per answerable question
    removed_ratio: float = 0.2  # answer_removed examples per answerable question
    max_length: int = 384
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    num_train_epochs: float = 2.0
    max_steps: int = -1
    time_budget_minutes: float = 0.0  # 0 = none; the run saves and stops, the next one resumes
    save_steps: int = 100
    logging_steps: int = 20
    torch_threads: int = 1
    val_limit: int = 800

    def __post_init__(self) -> None:
        for name in ("miss_ratio", "removed_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"{self.kind()} {name} must be between 0 and 1")

    def kind(self) -> str:
        return type(self).__name__.removesuffix("Config").lower()


def threshold_report(scored: list[Scored]) -> dict:
    """AUROC of the refusal score and the minimax threshold with its rates, on validation examples."""
    threshold, point = choose_threshold(scored, "minimax")
    return {
        "auroc": round(auroc(scored), 4),
        "threshold": threshold,
        "hallucination_rate": round(point.get("hallucination_rate", 0.0), 4),
        "over_refusal": round(point.get("over_refusal", 0.0), 4),
    }
