"""build-data's evidence lines and variants (issue 18): fast, no model, the tiny corpus."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fixtures.finetune as ft_fixtures
import pytest
import yaml
from fixtures.finetune import write_tiny_squad

from candor.cli.main import main
from candor.errors import InvalidInputError
from candor.finetune.dataset import BuildConfig, build_dataset, pseudo_span
from candor.finetune.params import build_config, build_data_section, load_params, train_config
from candor.finetune.squad import load_squad
from candor.prompts import REFUSAL_SENTENCE

tiny_squad = ft_fixtures.tiny_squad  # the room's fixtures, until conftest registers them

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

# sha256 of train.jsonl / val.jsonl written by the builder before evidence lines existed (commit 2ab7910),
# for the tiny corpus of fixtures.finetune (6 articles). If the prompt template changes on purpose
# (PROMPT_VERSION bump), regenerate these with the same configs.
PRE_EVIDENCE = {
    3: (
        dict(seed=3, val_articles=2, size=60, val_size=20, distractor_weights=[0.5, 0.5]),
        "9ece238fba47a29bb9a2999dd3a0d4787e0580af37179025b8c1d9279cc03366",
        "db29f2090e910ec11852a987b1bcfb50a20a636007c074b8a424a6a4f4ba819f",
    ),
    5: (
        dict(seed=5, val_articles=1, size=200),
        "e79e8f86c9a8dcb31988c85111ea6662b74269675e40c1d9ac9008c6f77f561c",
        "e612683ee5c75054b8d90138c9d395cae7e53160059518336c8c9bda10b28f5d",
    ),
}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evidence(row: dict) -> str | None:
    lines = [ln for ln in row["messages"][1]["content"].splitlines() if ln.startswith("Evidence: ")]
    assert len(lines) <= 1
    return lines[0].removeprefix("Evidence: ") if lines else None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("seed", sorted(PRE_EVIDENCE))
def test_evidence_none_writes_the_same_bytes_as_before(tiny_squad: Path, tmp_path: Path, seed: int) -> None:
    kwargs, train_sha, val_sha = PRE_EVIDENCE[seed]
    corpus = load_squad(tiny_squad, "train")
    assert BuildConfig().evidence == "none"
    build_dataset(corpus, BuildConfig(**kwargs, evidence="none"), tmp_path / "none")
    assert _sha(tmp_path / "none" / "train.jsonl") == train_sha
    assert _sha(tmp_path / "none" / "val.jsonl") == val_sha
    assert not any(_evidence(r) for r in _rows(tmp_path / "none" / "train.jsonl"))
    # span mode draws no random numbers: the same examples in the same order, only the user turn differs
    build_dataset(corpus, BuildConfig(**kwargs, evidence="span"), tmp_path / "span")
    none, span = _rows(tmp_path / "none" / "train.jsonl"), _rows(tmp_path / "span" / "train.jsonl")
    strip = lambda r: {**r, "messages": [r["messages"][0], r["messages"][2]]}  # noqa: E731
    assert [strip(r) for r in none] == [strip(r) for r in span]
    assert sum(a != b for a, b in zip(none, span, strict=True)) > 0


def test_span_evidence_per_category(tiny_squad: Path, tmp_path: Path) -> None:
    corpus = load_squad(tiny_squad, "train")
    cfg = BuildConfig(seed=3, val_articles=2, size=120, val_size=20, distractor_weights=[0.5, 0.5], evidence="span")
    stats = build_dataset(corpus, cfg, tmp_path / "out")
    rows = _rows(tmp_path / "out" / "train.jsonl")
    by_id = {q.id: q for q in corpus.questions}
    seen = set()
    for r in rows:
        line, user = _evidence(r), r["messages"][1]["content"]
        seen.add(r["category"])
        if r["category"] == "no_context":
            assert line is None and "Evidence:" not in user
            continue
        assert line, r
        # the line sits between the context and the question, and is a span of a shown passage
        assert user.index("Evidence: ") < user.index("Question: ")
        assert line in user.split("\n\nEvidence: ")[0]
        if r["category"] == "answerable":
            assert line == r["answer"] == by_id[r["question_id"]].answers[0]
        elif r["category"] == "false_premise":
            assert line == by_id[r["question_id"]].answers[0] and r["answer"] == REFUSAL_SENTENCE
        else:
            assert r["answer"] == REFUSAL_SENTENCE
            assert len(line.split()) <= 8  # a reader-like short span
    assert seen == {"answerable", "unanswerable", "retrieval_miss", "no_context", "false_premise"}
    per = stats["train"]["per_category"]
    assert stats["evidence"] == "span"
    for category, counts in per.items():
        assert counts["with_evidence"] == sum(1 for r in rows if r["category"] == category and _evidence(r))
    assert per["no_context"]["with_evidence"] == 0
    assert per["answerable"]["offsets"]["missed"] == 0
    assert per["answerable"]["offsets"]["located"] == per["answerable"]["made"]


def test_sentence_evidence_holds_the_answer(tiny_squad: Path, tmp_path: Path) -> None:
    corpus = load_squad(tiny_squad, "train")
    build_dataset(corpus, BuildConfig(seed=4, val_articles=1, size=80, evidence="sentence"), tmp_path / "out")
    answerable = [r for r in _rows(tmp_path / "out" / "train.jsonl") if r["category"] == "answerable"]
    assert answerable
    for r in answerable:
        line = _evidence(r)
        assert r["answer"] in line and line != r["answer"] and line.endswith(".")


def test_offsets_come_from_the_data_and_a_miss_leaves_the_line_out(tmp_path: Path) -> None:
    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=4)
    qfile = src / "train.questions.jsonl"
    qs = _rows(qfile)
    paras = {p["doc_id"]: p["text"] for p in _rows(src / "train.paragraphs.jsonl")}
    for q in qs:
        if q["id"] == "0a":
            q["answers"] = ["a large empire"]  # not in its paragraph
        if q["id"] == "1a":
            q["answer_starts"] = [paras[q["doc_id"]].index(q["answers"][0])]
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    corpus = load_squad(src, "train")
    stats = build_dataset(corpus, BuildConfig(seed=1, val_articles=0, size=400, evidence="span"), tmp_path / "out")
    rows = _rows(tmp_path / "out" / "train.jsonl")
    missed = [r for r in rows if r["question_id"] == "0a" and r["category"] == "answerable"]
    assert missed and all(_evidence(r) is None for r in missed)
    offsets = stats["train"]["per_category"]["answerable"]["offsets"]
    assert offsets["missed"] == 1 and offsets["given"] == 1
    given = next(r for r in rows if r["question_id"] == "1a" and r["category"] == "answerable")
    assert _evidence(given) == "a river town"
    made = stats["train"]["per_category"]["answerable"]
    assert made["with_evidence"] == made["made"] - 1


def test_pseudo_span_is_deterministic_and_short() -> None:
    passage = "Hesper is a ship. It was launched in 1954 by the Calder yard and carried 200 passengers."
    span = pseudo_span("Who built the ship Hesper in 1954?", passage)
    assert span == pseudo_span("Who built the ship Hesper in 1954?", passage)
    start, end = span
    text = passage[start:end]
    assert text and text in passage and len(text.split()) <= 8
    assert "Hesper" not in text  # the question's own words are not the marked span
    assert pseudo_span("Anything?", "") is None


def test_the_repository_variants(tiny_squad: Path, tmp_path: Path) -> None:
    params = load_params(REPO_PARAMS)
    assert build_config(params).evidence == "none"
    for name in ("evidence", "topic-only"):
        sec = build_data_section(params, name)
        assert build_config(params, name).evidence == "span"
        assert sec["out_dir"] != build_data_section(params)["out_dir"]
        train = train_config(params, name)
        assert Path(train.train_file).parent == Path(sec["out_dir"])
        assert train.output_dir != train_config(params).output_dir
    cfg = build_config(params, "topic-only")
    assert cfg.ratios["unanswerable"] == 0
    cfg.size, cfg.val_size, cfg.val_articles = 150, 20, 2
    stats = build_dataset(load_squad(tiny_squad, "train"), cfg, tmp_path / "topic")
    rows = _rows(tmp_path / "topic" / "train.jsonl") + _rows(tmp_path / "topic" / "val.jsonl")
    assert rows and not any(r["category"] == "unanswerable" for r in rows)
    assert {"answerable", "retrieval_miss", "no_context", "false_premise"} <= {r["category"] for r in rows}
    assert stats["train"]["per_category"]["unanswerable"]["made"] == 0


def test_bad_evidence_mode_and_variants_are_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match="evidence must be one of"):
        BuildConfig(evidence="spans")
    params = {"build_data": {"out_dir": "d", "variants": {"no-out": {"evidence": "span"}, "ok": {"out_dir": "e"}}}}
    with pytest.raises(InvalidInputError, match="must set its own out_dir"):
        build_config(params, "no-out")
    with pytest.raises(InvalidInputError, match="unknown build_data variant"):
        build_config(params, "missing")
    params["build_data"]["variants"]["ok"]["made_up"] = 1
    with pytest.raises(InvalidInputError, match="unknown keys"):
        build_config(params, "ok")


def _write_params(tmp_path: Path, src: Path, **build: object) -> Path:
    values = {"source": str(src), "split": "train", "out_dir": str(tmp_path / "data"), "seed": 1}
    values.update({"val_articles": 2, "size": 40, "val_size": 10, **build})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"build_data": values}))
    return path


def test_cli_variant_writes_its_own_folder(tiny_squad: Path, tmp_path: Path, capsys) -> None:
    ev_dir = tmp_path / "data-evidence"
    params = _write_params(tmp_path, tiny_squad, variants={"evidence": {"out_dir": str(ev_dir), "evidence": "span"}})
    assert main(["finetune", "build-data", "--params", str(params), "--variant", "evidence"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["out_dir"] == str(ev_dir) and out["evidence"] == "span"
    assert any(_evidence(r) for r in _rows(ev_dir / "train.jsonl"))
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("build", "argv", "message"),
    [
        ({"evidence": "spans"}, [], "evidence must be one of"),
        ({"variants": {"bare": {"evidence": "span"}}}, ["--variant", "bare"], "must set its own out_dir"),
        ({}, ["--variant", "nope"], "unknown build_data variant"),
    ],
)
def test_cli_bad_evidence_or_variant_is_a_message(tiny_squad: Path, tmp_path: Path, capsys, build, argv, message):
    params = _write_params(tmp_path, tiny_squad, **build)
    assert main(["finetune", "build-data", "--params", str(params), *argv]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()
