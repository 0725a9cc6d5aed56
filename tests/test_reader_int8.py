"""The reader in int8 at its own threshold, and the reader-only RAG evaluation (retrieved passages, no generation)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from fixtures.finetune import write_tiny_squad

from candor.finetune.reader_eval import RAG_CATEGORIES, evaluate_reader, rag_reader_items, score_item
from candor.finetune.squad import Question
from candor.reader import AnswerabilityReader, Evidence, ReaderMeta, load_reader
from candor.settings import Settings


def test_quantize_reader_chooses_an_int8_threshold_on_validation_and_serves_it(tmp_path: Path, tiny_reader: Path):
    from candor.finetune.reader import ReaderConfig
    from candor.finetune.reader_quantize import quantize_reader

    folder = tmp_path / "reader"
    shutil.copytree(tiny_reader, folder)
    before = ReaderMeta.read(folder)
    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=6)
    base = Settings().resolved_embed_model_path
    cfg = ReaderConfig(output_dir=str(tmp_path / "run"), sources=[f"{src}:train"], val_articles=2)
    got = quantize_reader(folder, cfg, base)

    after = ReaderMeta.read(folder)
    assert after.threshold == before.threshold  # the float32 threshold is left as it was
    assert after.int8 == json.loads((folder / "reader.json").read_text())["int8"] == got
    assert 0.0 <= got["threshold"] <= 1.0 and got["validation"]["examples"] == before.validation["examples"]

    reader = AnswerabilityReader(folder, base, int8=True)
    assert reader.threshold == got["threshold"] and reader.version.endswith("+int8")
    fp32 = load_reader(folder, Settings(reader_int8=False))
    assert fp32.threshold == before.threshold and not fp32.version.endswith("+int8")
    assert load_reader(folder, Settings(reader_int8=True)).threshold == got["threshold"]
    # both variants read the same passage into the same kind of verdict
    passage = "The Lumen bridge was opened in 1911 by the city council."
    for r in (reader, fp32):
        (ev,) = r.read("When was the Lumen bridge opened?", [passage])
        assert 0.0 <= ev.answerable <= 1.0 and (ev.start == -1 or passage[ev.start : ev.end] == ev.text)


def test_an_uncalibrated_reader_in_int8_keeps_the_float32_threshold(tiny_reader: Path, caplog):
    reader = AnswerabilityReader(tiny_reader, Settings().resolved_embed_model_path, int8=True)
    assert reader.threshold == ReaderMeta.read(tiny_reader).threshold
    assert "no int8 threshold" in caplog.text


@dataclass
class Hit:
    doc_id: str
    text: str
    score: float
    title: str | None = None


class FixedRetriever:
    def __init__(self, hits: dict[str, list[Hit]]):
        self.hits = hits

    def retrieve(self, query: str, collection: str, k: int) -> list[Hit]:
        return self.hits[query][:k]


def test_rag_items_carry_what_retrieval_gave_and_the_served_refusal_rule():
    qs = [
        Question("a", "d1", "found?", ("x",), False),
        Question("b", "d1", "missed?", ("x",), False),
        Question("c", "d2", "weak?", (), True),
    ]
    retriever = FixedRetriever(
        {
            "found?": [Hit("d1", "x is here", 0.8), Hit("d9", "other", 0.5)],
            "missed?": [Hit("d9", "other", 0.6)],
            "weak?": [Hit("d2", "gold but weak", 0.1)],  # below the gate: the reader gets nothing
        }
    )
    items, scores = rag_reader_items(retriever, qs, "c", 4, min_retrieval_score=0.3)
    assert [i.category for i in items] == ["answerable", "answerable_retrieval_miss", "unanswerable"]
    assert [i.should_refuse for i in items] == [False, True, True]
    assert [len(i.chunks) for i in items] == [2, 1, 0] and scores[0] == [0.8, 0.5]
    assert set(i.category for i in items) <= set(RAG_CATEGORIES)

    ev = Evidence(0, 0.9, 0, 1, "x", 0.9, 0.1)
    strong, weak = score_item(items[0], ev, [0.8]), score_item(items[0], ev, [0.2])
    assert abs(strong.confidence - 0.1) < 1e-9  # 1 - P: a strong match adds nothing
    assert weak.confidence > strong.confidence  # a weak best match raises the refusal confidence

    class Fixed:
        threshold = 0.5

        def read(self, question, passages):
            return [Evidence(i, 0.9 if "x" in p else 0.1, 0, 1, p[:1], 0.0, 0.0) for i, p in enumerate(passages)]

    report = evaluate_reader(Fixed(), items, headline=RAG_CATEGORIES, retrieval_scores=scores)
    d = report["decision"]
    assert d["n"] == 3 and d["hallucination_rate"] == 0.0 and d["over_refusal"] == 0.0


def test_the_commands_quantize_a_reader_and_evaluate_it_on_retrieved_passages(
    settings, tiny_reader: Path, tmp_path: Path, capsys
):
    """`candor finetune quantize-reader`, then `eval-reader --mode rag --int8` over a real Chroma collection."""
    import yaml

    from candor.cli.main import main

    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=4)
    write_tiny_squad(tmp_path / "squad", "dev", n_articles=2, first=4)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "build_data": {"source": str(src), "split": "train", "seed": 1, "val_articles": 2},
                "reader": {"extra_sources": []},
                "eval": {"seed": 1, "rag": {"collection": "tiny-reader", "top_k": 2, "also_ingest": ["train"]}},
            }
        )
    )
    folder = tmp_path / "reader"
    shutil.copytree(tiny_reader, folder)
    assert main(["finetune", "quantize-reader", str(folder), "--params", str(params)]) == 0
    assert "int8 threshold" in capsys.readouterr().out
    int8 = ReaderMeta.read(folder).int8
    assert int8 is not None

    out = tmp_path / "reports" / "rag.json"
    args = ["finetune", "eval-reader", str(folder), "--params", str(params), "--source", str(src)]
    assert main([*args, "--mode", "rag", "--int8", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["mode"] == "rag" and report["config"]["collection"] == "tiny-reader"
    assert report["threshold"] == int8["threshold"] and report["reader"].endswith("(int8)")
    d = report["decision"]
    assert d["n"] == 8  # every dev question (2 articles x 4), retrieval misses included in the headline
    assert set(d["per_category"]) <= set(RAG_CATEGORIES) and "answerable" in d["per_category"]
    assert "retrieved passages" in out.with_suffix(".md").read_text()

    assert main([*args, "--mode", "bogus", "--out", str(out)]) == 2
    assert "unknown reader eval mode" in capsys.readouterr().err
