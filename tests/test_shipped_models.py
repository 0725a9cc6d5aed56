"""What the README's demo shows, held by a test: the shipped adapter and reader on the handbook.

Each refusal layer appears once, with the real shipped files (models/candor-refusal served by a real
model server, models/candor-reader in the API), so a retrained adapter or reader that loses one of
these behaviours fails here rather than in front of a user running scripts/demo.sh. The questions
come from the labelled handbook set (samples/handbook.questions.jsonl).
"""

from __future__ import annotations

import pytest
from fixtures.api import COLLECTION, make_harness
from fixtures.core import REPO_ROOT

from candor.settings import Settings

pytestmark = pytest.mark.slow

ADAPTER = REPO_ROOT / "models" / "candor-refusal"
READER = REPO_ROOT / "models" / "candor-reader"


@pytest.fixture(scope="module")
def shipped_server(model_server_factory):
    return model_server_factory(adapters={"refusal": ADAPTER})


def test_the_demo_questions_take_the_layers_the_readme_names(
    tmp_path, handbook_chroma, shipped_server, base_model_dir, shared_models
):
    h = make_harness(
        tmp_path,
        handbook_chroma,
        shipped_server.url,
        base_model_dir,
        shared_models,
        llm_adapter="refusal",
        reader_path=READER,
        max_new_tokens=Settings.model_fields["max_new_tokens"].default,  # the demo's prompt budget
    )
    # The generation side refuses this one (the reader passes it: P(answerable) well above its threshold): the adapter
    # itself or, when its first token is a near-tie (float32, where the order of sums follows the model server's thread
    # count), the grounding check; either layer is the generation side's refusal.
    generation_side = {"model", "grounding"}
    expected = {
        "How large are Candor's chunks?": None,  # answered: 256 tokens
        "How many dimensions do Candor's embeddings have?": "generation side",
        "How many languages does Candor's user interface support?": "reader",
        "How much does a Candor enterprise subscription cost per year?": "retrieval_gate",
        "What is the boiling point of mercury?": "retrieval_gate",
    }
    with h.client:
        for question, layer in expected.items():
            body = h.client.post(
                "/v1/chat", json={"question": question, "collection": COLLECTION}, headers=h.headers()
            ).json()
            allowed = generation_side if layer == "generation side" else {layer}
            assert body["refusal_layer"] in allowed, (question, body["answer"], body["refusal_confidence"])
            assert body["refused"] is (layer is not None)
            assert body["model"]["adapter"] == "refusal"
            if layer is None:
                assert "256" in body["answer"] and body["citations"], body
                assert "256" in body["evidence"]["text"] and body["evidence"]["score"] > 0.5, body["evidence"]
