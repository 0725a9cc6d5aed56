"""The one refusal rule (candor.decision): what it decides, which threshold it takes, and that nothing
else compares a refusal confidence with a threshold."""

from __future__ import annotations

import re

import pytest
from fixtures.core import REPO_ROOT

from candor.decision import MODEL, READER, THRESHOLD, VERIFIER, decide, resolve_threshold, threshold_env
from candor.settings import Settings


@pytest.mark.parametrize(
    ("confidence", "threshold", "model_refused", "expected"),
    [
        (0.9, 0.5, False, THRESHOLD),
        (0.5, 0.5, False, THRESHOLD),  # at the threshold: refuse
        (0.49, 0.5, False, None),
        (None, 0.5, False, None),  # unknown confidence: no decision at this layer
        (0.99, None, False, None),  # no threshold: this layer never refuses
        (0.0, 0.5, True, MODEL),  # a written refusal stays one
        (None, None, True, MODEL),
    ],
)
def test_decide(confidence, threshold, model_refused, expected):
    assert decide(confidence, threshold, model_refused=model_refused) == expected


def test_decide_names_the_layer_that_refused():
    assert decide(0.8, 0.7, layer=READER) == READER
    assert decide(0.8, 0.7, model_refused=True, layer=READER) == MODEL


def test_a_setting_overrides_the_models_own_threshold():
    s = Settings(reader_threshold=0.4, verifier_threshold=None, refusal_threshold=0.8)
    assert resolve_threshold(s, READER, 0.6) == 0.4
    assert resolve_threshold(s, VERIFIER, 0.6) == 0.6
    assert resolve_threshold(s, VERIFIER) is None
    assert resolve_threshold(s, THRESHOLD) == 0.8
    assert threshold_env(READER) == "CANDOR_READER_THRESHOLD"


def test_the_threshold_comparison_is_written_once():
    """Serving, `candor eval`, the loop's evaluation and the gate share decide(): no second copy."""
    rooms = ["candor", "cli", "ingest", "service", "model_server", "finetune", "feedback", "retrain", "bench"]
    pattern = re.compile(r">=\s*[\w.]*threshold\b|threshold\w*\s*<=\s*[\w.]*confidence")
    found = [
        f"{path.relative_to(REPO_ROOT)}:{n}"
        for room in rooms
        for path in sorted((REPO_ROOT / room).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert len(found) == 1 and found[0].startswith("candor/decision.py:"), found
