"""The retraining loop's knobs (the ``loop:`` section of params.yaml) and its file layout.

Why one module: every DVC stage of the loop is a thin command that reads the
same params file; keeping the dataclasses and the paths in one place means a
stage and the command that inspects its output cannot disagree about where a
file lives. Unknown keys are an error (a typo must not silently fall back to a
default). Pure Python; yaml is imported inside the loader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from candor.data_source import data_split
from candor.errors import InvalidInputError
from candor.finetune.params import load_params

if TYPE_CHECKING:
    from candor.settings import Settings

DEFAULT_PARAMS = Path("params.yaml")


@dataclass
class PoisoningParams:
    max_flags_per_key: int = 20  # per API key (and one shared slot for key-less flags), per training run
    drop_conflicts: bool = True  # same prompt flagged with contradicting targets: train on neither

    def __post_init__(self) -> None:
        if self.max_flags_per_key < 1:
            raise InvalidInputError("loop.poisoning.max_flags_per_key must be at least 1")


@dataclass
class PairsParams:
    support_min_recall: float = 0.8  # share of a correction's content words the context must hold
    regression_min_f1: float = 0.5  # an expected answer passes at this token F1 (or by containment)

    def __post_init__(self) -> None:
        if not 0 < self.support_min_recall <= 1 or not 0 < self.regression_min_f1 <= 1:
            raise InvalidInputError("loop.pairs thresholds must be in (0, 1]")


@dataclass
class MixParams:
    feedback_fraction: float = 0.2  # share of feedback rows in the mixed set; the rest is base data
    max_repeats: int = 4  # a feedback pair appears at most this often (upsampling a handful of flags)
    min_base_examples: int = 64
    max_base_examples: int = 4000
    seed: int = 13

    def __post_init__(self) -> None:
        if not 0 < self.feedback_fraction < 1:
            raise InvalidInputError("loop.mix.feedback_fraction must be between 0 and 1 (exclusive)")
        if self.max_repeats < 1 or self.min_base_examples < 0 or self.max_base_examples < self.min_base_examples:
            raise InvalidInputError("loop.mix: need max_repeats >= 1 and 0 <= min_base_examples <= max_base_examples")


@dataclass
class EvalParams:
    limit: int = 200  # frozen eval questions (validation articles of the train split), 0 = all
    seed: int = 13
    distractors: int = 1
    max_new_tokens: int = 32
    batch_size: int = 8
    threads: int = 1
    max_input_tokens: int | None = None  # None: settings.max_input_tokens (what the service fits to)
    refuse_min_confidence: float = 0.5  # a regression refusal counts when its first token holds this probability


@dataclass
class GateParams:
    max_hallucination_rise: float = 0.02
    max_over_refusal_rise: float = 0.02
    max_f1_drop: float = 0.02
    max_refused_rate: float = 0.9  # refusing (nearly) everything is never an improvement
    min_regression_gain: int = 1  # regression items newly passed, unless every item already passes


@dataclass
class MonitorParams:
    min_answers: int = 50  # answers by a version before its rates are judged
    max_flag_rate_rise: float = 0.05
    max_refusal_rate_rise: float = 0.2
    auto_rollback: bool = False  # False: recommend loudly; True: `candor retrain` rolls back itself


@dataclass
class LoopParams:
    workdir: str = "var/loop"
    code_dir: str = "."
    poisoning: PoisoningParams = field(default_factory=PoisoningParams)
    pairs: PairsParams = field(default_factory=PairsParams)
    mix: MixParams = field(default_factory=MixParams)
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the `train` section
    anchor_base_rows: bool = True  # KL to the starting adapter on every base row, none on feedback rows
    base_ce_weight: float = 0.0  # CE weight of base rows when anchored (0: base rows only distil)
    eval: EvalParams = field(default_factory=EvalParams)
    gate: GateParams = field(default_factory=GateParams)
    monitor: MonitorParams = field(default_factory=MonitorParams)


@dataclass(frozen=True)
class LoopPaths:
    """Every file the loop's stages read or write, relative to the workspace (DVC's cwd)."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def export(self) -> Path:  # written by `candor retrain` / `candor loop export` before `dvc repro`
        return self.inputs / "flags.jsonl"

    @property
    def baseline(self) -> Path:  # the adapter serving when the flags were exported
        return self.inputs / "baseline.json"

    @property
    def base_data(self) -> Path:  # where the SQuAD base data is and its files' hashes (DVC cannot find it)
        return self.inputs / "base_data.json"

    @property
    def flags(self) -> Path:
        return self.root / "flags.jsonl"

    @property
    def screening(self) -> Path:
        return self.root / "screening.json"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs.jsonl"

    @property
    def regression(self) -> Path:
        return self.root / "regression.jsonl"

    @property
    def pairs_stats(self) -> Path:
        return self.root / "pairs_stats.json"

    @property
    def train_data(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def mix_stats(self) -> Path:
        return self.root / "mix_stats.json"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def adapter(self) -> Path:
        return self.train_dir / "adapter"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def decision(self) -> Path:
        return self.root / "decision.json"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    return load_params(Path(path))


def _build(cls: type, values: Any, where: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise InvalidInputError(f"{where} must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None


def loop_params(params: dict[str, Any]) -> LoopParams:
    raw = params.get("loop") or {}
    if not isinstance(raw, dict):
        raise InvalidInputError("params section 'loop' must be a mapping")
    nested = {
        "poisoning": PoisoningParams,
        "pairs": PairsParams,
        "mix": MixParams,
        "eval": EvalParams,
        "gate": GateParams,
        "monitor": MonitorParams,
    }
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in nested:
            values[key] = _build(nested[key], value, f"params.yaml loop.{key}")
        else:
            values[key] = value
    lp = _build(LoopParams, values, "params.yaml loop")
    if not isinstance(lp.train, dict):
        raise InvalidInputError("loop.train must be a mapping of `train` overrides")
    return lp


def squad_source(params: dict[str, Any], settings: Settings | None = None) -> tuple[Path, str]:
    """Where the base data comes from: the fine-tuning builder's own split, read from ``build_data.source``
    when params set it, else from CANDOR_DATA_SOURCE (``candor.data_source``)."""
    bd = params.get("build_data") or {}
    split = str(bd.get("split") or "train")
    return data_split(split, bd.get("source"), settings), split
