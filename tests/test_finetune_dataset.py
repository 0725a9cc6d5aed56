"""The dataset builder: categories, article split, dedupe, determinism, both input formats."""

from __future__ import annotations

import json
from pathlib import Path

import fixtures.finetune as ft_fixtures
import pytest
from fixtures.finetune import write_tiny_squad

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.dataset import CATEGORIES, BuildConfig, build_dataset, split_articles
from candor.finetune.squad import load_official_json, load_squad
from candor.prompts import NO_CONTEXT, REFUSAL_SENTENCE, SYSTEM_PROMPT, is_refusal

tiny_squad = ft_fixtures.tiny_squad  # the room's fixtures, until conftest registers them


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_categories_targets_and_split(tiny_squad: Path, tmp_path: Path) -> None:
    corpus = load_squad(tiny_squad, "train")
    cfg = BuildConfig(seed=3, val_articles=2, size=60, val_size=20, distractor_weights=[0.5, 0.5])
    stats = build_dataset(corpus, cfg, tmp_path / "out")
    train = _rows(tmp_path / "out" / "train.jsonl")
    val = _rows(tmp_path / "out" / "val.jsonl")
    assert {r["category"] for r in train} == set(CATEGORIES)
    # split by article: no article (hence no paragraph) on both sides
    assert set(stats["train_articles"]).isdisjoint(stats["val_articles"])
    assert {r["article"] for r in train} <= set(stats["train_articles"])
    assert {r["article"] for r in val} <= set(stats["val_articles"])
    val_docs = {d.split("#")[0] for r in val for d in r["doc_ids"]}
    train_docs = {d.split("#")[0] for r in train for d in r["doc_ids"]}
    assert val_docs.isdisjoint(train_docs)
    val_q = _rows(tmp_path / "out" / "val.questions.jsonl")
    assert {q["doc_id"].split("#")[0] for q in val_q} == set(stats["val_articles"])
    for r in train:
        msgs = r["messages"]
        assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert msgs[-1]["role"] == "assistant"
        user = msgs[1]["content"]
        if r["category"] == "answerable":
            assert r["gold_in_context"] and not is_refusal(msgs[-1]["content"])
            assert msgs[-1]["content"] in user  # a span of the context
        else:
            assert msgs[-1]["content"] == REFUSAL_SENTENCE
        if r["category"] == "no_context":
            assert NO_CONTEXT in user and r["doc_ids"] == []
        if r["category"] == "retrieval_miss":
            assert not r["gold_in_context"] and r["doc_ids"]
            gold_doc = next(
                q["doc_id"] for q in _rows(tiny_squad / "train.questions.jsonl") if q["id"] == r["question_id"]
            )
            assert gold_doc not in r["doc_ids"]
        if r["category"] == "false_premise":
            original = next(
                q["question"] for q in _rows(tiny_squad / "train.questions.jsonl") if q["id"] == r["question_id"]
            )
            assert r["question"] != original
    # stats agree with the files
    assert sum(stats["train"]["counts"].values()) == len(train)


def test_deterministic_and_deduplicated(tiny_squad: Path, tmp_path: Path) -> None:
    corpus = load_squad(tiny_squad, "train")
    cfg = BuildConfig(seed=5, val_articles=1, size=200)
    build_dataset(corpus, cfg, tmp_path / "a")
    build_dataset(corpus, cfg, tmp_path / "b")
    a, b = (tmp_path / "a" / "train.jsonl").read_text(), (tmp_path / "b" / "train.jsonl").read_text()
    assert a == b
    rows = _rows(tmp_path / "a" / "train.jsonl")
    keys = [(r["question"], tuple(sorted(r["doc_ids"])), r["answer"]) for r in rows]
    assert len(keys) == len(set(keys))
    # asking for more than exists caps the category instead of repeating examples
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    una = stats["train"]["per_category"]["unanswerable"]
    assert una["made"] < una["requested"]
    other = build_dataset(corpus, BuildConfig(seed=6, val_articles=1, size=200), tmp_path / "c")
    assert other["train_articles"] != json.loads((tmp_path / "a" / "stats.json").read_text())["train_articles"] or (
        (tmp_path / "c" / "train.jsonl").read_text() != a
    )


def test_split_rules(tiny_squad: Path) -> None:
    corpus = load_squad(tiny_squad, "train")
    train, val = split_articles(corpus, 2, seed=1)
    assert len(val) == 2 and train.isdisjoint(val) and train | val == set(corpus.articles())
    with pytest.raises(InvalidInputError):
        split_articles(corpus, len(corpus.articles()), seed=1)


def test_official_json_format(tmp_path: Path) -> None:
    data = {
        "version": "v2.0",
        "data": [
            {
                "title": "Zorvia",
                "paragraphs": [
                    {
                        "context": "Zorvia's capital is Lumen.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "What is the capital of Zorvia?",
                                "is_impossible": False,
                                "answers": [
                                    {"text": "Lumen", "answer_start": 20},
                                    {"text": "Lumen", "answer_start": 20},
                                ],
                            },
                            {
                                "id": "q2",
                                "question": "Who rules Zorvia?",
                                "is_impossible": True,
                                "answers": [],
                                "plausible_answers": [{"text": "Lumen", "answer_start": 20}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(data))
    corpus = load_official_json(path)
    assert list(corpus.paragraphs) == ["Zorvia#0"]
    q1, q2 = corpus.questions
    assert q1.answers == ("Lumen",) and not q1.is_impossible
    assert q2.answers == () and q2.is_impossible
    assert load_squad(path).questions == corpus.questions


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_squad(tmp_path / "missing", "train")
    folder = write_tiny_squad(tmp_path / "s", "train", 2)
    (folder / "train.questions.jsonl").write_text('{"id": "x", "doc_id": "Nope#0", "question": "?"}\n')
    with pytest.raises(InvalidInputError, match="Nope#0"):
        load_squad(folder, "train")
    (folder / "train.questions.jsonl").write_text("not json\n")
    with pytest.raises(InvalidInputError, match=":1:"):
        load_squad(folder, "train")
    with pytest.raises(InvalidInputError):
        BuildConfig(ratios={"made_up": 1.0})
