"""The refusal decision: one rule, and which threshold it uses, for serving, measuring and gating.

Ground layer: pure Python, nothing of ours imported. Every place that turns a refusal confidence into
"refuse" calls :func:`decide`: the answer core (the answerability layer before generation, the
first-token threshold after it, through ``candor.service.refusal_policy``), the API (the threshold it
reports and checks at start-up), ``candor eval`` (oracle and RAG, through ``candor.finetune.metrics``),
the retraining loop's evaluation and so the promotion gate, which reads its figures. What is measured is
then what is served.

The rule: a refusal the model wrote stays a refusal (the service cannot un-refuse it); otherwise refuse
when the refusal confidence is at or above the threshold; an unknown confidence or no threshold never
refuses. Which layers may refuse is the caller's explicit choice (``layers``), never a faked setting: an
evaluation that applies thresholds itself asks the answer core for :data:`MEASURE_ONLY`.
"""

from __future__ import annotations

from typing import Any

# The refusal layers, as recorded on every answer (``refusal_layer``).
RETRIEVAL_GATE = "retrieval_gate"
VERIFIER = "verifier"
READER = "reader"
MODEL = "model"
THRESHOLD = "threshold"  # the first-token refusal confidence (``settings.refusal_threshold``)
GROUNDING = "grounding"

ALL_LAYERS = frozenset({RETRIEVAL_GATE, VERIFIER, READER, MODEL, THRESHOLD, GROUNDING})
# The layers that refuse at a threshold on a refusal confidence.
THRESHOLD_LAYERS = frozenset({VERIFIER, READER, THRESHOLD})
# Everything but the thresholds: the confidences are still measured and reported, and the caller applies
# its own threshold to them (``candor eval --mode rag`` sweeps it).
MEASURE_ONLY = ALL_LAYERS - THRESHOLD_LAYERS

# The setting that overrides a layer's threshold, and its environment variable (for error messages).
THRESHOLD_SETTINGS = {
    THRESHOLD: ("refusal_threshold", "CANDOR_REFUSAL_THRESHOLD"),
    VERIFIER: ("verifier_threshold", "CANDOR_VERIFIER_THRESHOLD"),
    READER: ("reader_threshold", "CANDOR_READER_THRESHOLD"),
}


def decide(
    confidence: float | None,
    threshold: float | None,
    *,
    model_refused: bool = False,
    layer: str = THRESHOLD,
) -> str | None:
    """The layer that refuses, or None to answer.

    ``model_refused``: the generated text is a refusal (layer ``model``). Otherwise ``layer`` refuses
    when ``confidence`` reaches ``threshold``; None for either means no decision at that layer.
    """
    if model_refused:
        return MODEL
    if confidence is not None and threshold is not None and confidence >= threshold:
        return layer
    return None


# Where a threshold came from (``threshold_source``): the setting, a collection's calibration, the model's own.
CALIBRATION = "calibration"
SETTING = "setting"
VALIDATION = "validation"


def threshold_source(
    settings: Any, layer: str, stored: float | None = None, calibrated: float | None = None
) -> tuple[float | None, str | None]:
    """The threshold a layer applies and where it came from: the layer's setting when set (an operator's
    explicit choice, for every collection), else the collection's own (``calibrated``: ``candor calibrate``
    on its reviewed flags, for this very model), else the model's own (``stored``, e.g. the reader's
    validation threshold), else None (that layer never refuses)."""
    name, _ = THRESHOLD_SETTINGS[layer]
    configured = getattr(settings, name)
    if configured is not None:
        return configured, SETTING
    if calibrated is not None:
        return calibrated, CALIBRATION
    return stored, (VALIDATION if stored is not None else None)


def resolve_threshold(
    settings: Any, layer: str, stored: float | None = None, calibrated: float | None = None
) -> float | None:
    """The threshold a layer applies (``threshold_source`` without the source)."""
    return threshold_source(settings, layer, stored, calibrated)[0]


def threshold_env(layer: str) -> str:
    """The environment variable that sets ``layer``'s threshold."""
    return THRESHOLD_SETTINGS[layer][1]
