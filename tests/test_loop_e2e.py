"""The loop end to end with the real model: a flagged hallucination becomes a refusal by the adapter itself.

The serving adapter (the shipped default, models/candor-refusal) answers a
handbook question the handbook cannot answer; a user flags it, an admin
approves the flag, `candor retrain` runs the small profile (screen, pairs,
mix, train, evaluate, gate, promote) and hot-swaps the new version into the
running model server; the same question with the same settings is then
refused by the model (refusal layer "model": not the retrieval gate, not a
threshold). Real parts throughout: model server over HTTP, the API, SQLite,
Chroma, DVC.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from fixtures.api import COLLECTION, make_harness
from fixtures.core import REPO_ROOT

pytestmark = pytest.mark.slow

# the shipped default adapter; CANDOR_TEST_LOOP_ADAPTER points the test at another starting adapter, and
# CANDOR_TEST_LOOP_PARAMS at other params profiles (e.g. "small,gemma3-270m" for a Gemma adapter)
SHIPPED_ADAPTER = Path(os.environ.get("CANDOR_TEST_LOOP_ADAPTER", REPO_ROOT / "models" / "candor-refusal"))
LOOP_PARAMS = os.environ.get("CANDOR_TEST_LOOP_PARAMS", "small")
ADAPTER_NAME = "refusal"
# About Candor, but not in its handbook: a good model refuses them all; the first one the serving
# adapter answers anyway is the hallucination a user flags.
CANDIDATE_QUESTIONS = [
    "How much does a Candor enterprise subscription cost per year?",
    "Who is the chief executive officer of the company behind Candor?",
    "In which year was the first version of Candor released?",
    "How many customers use Candor in production?",
    "Which city is Candor's headquarters in?",
    "What is the phone number of Candor's support team?",
    "How many GPUs does Candor need to serve one thousand users?",
    "What is the maximum number of API keys one Candor installation can hold?",
]


def _ask(harness, question: str) -> dict:
    r = harness.client.post(
        "/v1/chat", json={"question": question, "collection": COLLECTION}, headers=harness.headers()
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_flagged_hallucination_is_refused_by_the_next_adapter(
    tmp_path, handbook_chroma, base_model_dir, shared_models, model_server_factory, capsys
) -> None:
    from candor.retrain.adapters import AdapterRegistry, adapter_version
    from candor.retrain.run import retrain
    from candor.retrain.workspace import make_workspace

    assert (SHIPPED_ADAPTER / "adapter_model.safetensors").exists(), (
        f"the shipped default adapter is missing at {SHIPPED_ADAPTER} (issue 5 ships it)"
    )
    server = model_server_factory(adapters={ADAPTER_NAME: SHIPPED_ADAPTER})
    harness = make_harness(
        tmp_path,
        handbook_chroma,
        server.url,
        base_model_dir,
        shared_models,
        llm_adapter=ADAPTER_NAME,
        serving_adapter_name=ADAPTER_NAME,
        adapter_path=SHIPPED_ADAPTER,
    )
    with harness.client:
        first, question = None, None
        for q in CANDIDATE_QUESTIONS:
            answer = _ask(harness, q)
            if not answer["refused"]:
                first, question = answer, q
                break
        assert first is not None, "the serving adapter refused every candidate question: pick harder ones"
        assert first["model"]["adapter"] == ADAPTER_NAME

        # a user flags it; the user's key is untrusted, so an admin approves the flag first
        r = harness.client.post(
            f"/v1/answers/{first['answer_id']}/feedback",
            json={"verdict": "hallucination", "comment": "the handbook says nothing about this"},
            headers=harness.headers(),
        )
        assert r.status_code in (200, 201), r.text
        flag_id = r.json()["feedback_id"]
        harness.services.store.review_flags([flag_id], "approved", reviewer="e2e")

        print(f"flagged: {question!r} -> {first['answer']!r}", flush=True)
        workspace = make_workspace(tmp_path / "loop-small", REPO_ROOT, LOOP_PARAMS)
        summary = retrain(harness.settings, workspace, swap=True, echo=print)
        out = capsys.readouterr().out
        decision = json.loads((workspace / "var" / "loop" / "decision.json").read_text())
        assert summary["status"] == "promoted", f"{summary}\n{json.dumps(decision, indent=2)}\n{out[-3000:]}"

        registry = AdapterRegistry.for_settings(harness.settings)
        new = registry.current()
        assert new.version == decision["candidate_version"] != adapter_version(SHIPPED_ADAPTER)
        assert new.parent == adapter_version(SHIPPED_ADAPTER) and new.flag_ids == [flag_id]
        assert f"`{flag_id}`" in (new.path / "README.md").read_text()
        served = httpx.get(server.url + "/adapters").json()["adapters"]
        assert {"name": ADAPTER_NAME, "version": new.version} in [
            {"name": a["name"], "version": a["version"]} for a in served
        ]
        assert registry.serving()["version"] == new.version

        again = _ask(harness, question)  # same question, same settings
        assert again["refused"], again
        assert again["refusal_layer"] == "model", again
        assert again["model"]["adapter"] == ADAPTER_NAME

        report = json.loads((workspace / "var" / "loop" / "eval" / "regression_report.json").read_text())
        assert report[0]["flag_id"] == flag_id and report[0]["candidate"]["passed"]
        print(
            json.dumps(
                {
                    "question": question,
                    "before": first["answer"],
                    "after": again["answer"],
                    "regression_before": report[0]["current"],
                    "regression_after": report[0]["candidate"],
                    "gate": decision["checks"],
                },
                indent=2,
            )
        )
