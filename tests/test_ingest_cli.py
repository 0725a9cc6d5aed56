"""The ingest room's commands, run through the real `candor` entry point (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.ingest import write_corpus

from candor.cli.main import main
from candor.settings import Settings

COMMANDS = [
    ["ingest"],
    ["retrieve"],
    ["collections"],
    ["collections", "list"],
    ["collections", "show"],
    ["collections", "delete"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*cmd, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_ingest_show_retrieve_delete(
    chroma_settings: Settings, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", str(corpus), "-c", "kbase"]) == 0
    out = capsys.readouterr().out
    assert "documents 4 new, 0 changed, 0 unchanged, 0 deleted, 0 failed" in out

    (corpus / "bad.txt").write_bytes(b"\x00\x00binary")
    assert main(["ingest", str(corpus), "-c", "kbase", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert (report["unchanged"], report["failed"], report["ok"]) == (4, 1, False)
    assert report["failures"] == [{"where": "bad.txt", "reason": "binary file (contains NUL bytes), not text"}]
    assert "1 input(s) failed; the rest was ingested" in captured.err

    assert main(["collections", "list"]) == 0
    assert capsys.readouterr().out.startswith("kbase\t4 documents\t")
    assert main(["collections", "show", "kbase", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "collection kbase: 4 documents" in out and "verify: ok" in out and "chunk_size: 254" in out

    assert main(["retrieve", "Which plague struck Europe in 1347?", "-c", "kbase", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1] score ") and "guide/plague.html (Black Death)" in out.splitlines()[0]
    assert main(["retrieve", "plague", "-c", "kbase", "-k", "1", "--json"]) == 0
    (chunk,) = json.loads(capsys.readouterr().out)
    assert set(chunk) == {"chunk_id", "doc_id", "text", "score", "source", "title", "metadata"}

    assert main(["collections", "delete", "kbase", "--yes"]) == 0
    assert main(["collections", "list"]) == 0
    assert "no collections" in capsys.readouterr().out


@pytest.mark.slow
def test_user_errors_exit_non_zero_without_traceback(
    embedded_settings: Settings, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", str(corpus / "missing"), "-c", "kbase"]) == 2
    assert main(["retrieve", "q", "-c", "nothing"]) == 2
    assert main(["collections", "show", "bad name"]) == 2
    assert main(["collections", "delete", "nothing", "--yes"]) == 2
    assert main(["retrieve", "   ", "-c", "kbase"]) == 2
    err = capsys.readouterr().err
    assert "no such file or directory" in err
    assert "no collection named 'nothing'" in err
    assert "invalid collection name 'bad name'" in err
    assert "the query is empty" in err
    assert "Traceback" not in err


def test_unreachable_chroma_server(settings: Settings, monkeypatch, capsys, corpus: Path) -> None:
    from candor.settings import get_settings

    monkeypatch.setenv("CANDOR_CHROMA_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    assert main(["collections", "list"]) == 4
    assert main(["ingest", str(corpus)]) == 4
    err = capsys.readouterr().err
    assert "Chroma at http://127.0.0.1:9 is unreachable" in err and "Traceback" not in err


@pytest.mark.slow
def test_squad_paragraphs_ingest_as_is_and_retrieve(
    embedded_settings: Settings, squad_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A slice of the shared SQuAD paragraphs file, bytes unchanged, ingests and answers by doc_id."""
    source = squad_dir / "train.paragraphs.jsonl"
    lines = source.read_bytes().splitlines(keepends=True)[:40]
    sliced = write_corpus(tmp_path / "squad", {"train.paragraphs.jsonl": b"".join(lines)})
    assert main(["ingest", str(sliced), "-c", "squad", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["new"], report["failed"]) == (40, 0)
    assert report["chunks_added"] >= 40

    from candor.ingest.retriever import Retriever

    doc_ids = {json.loads(line)["doc_id"] for line in lines}
    questions = [
        q
        for q in map(json.loads, (squad_dir / "train.questions.jsonl").read_text().splitlines())
        if q["doc_id"] in doc_ids and not q["is_impossible"]
    ][:40]
    retriever = Retriever(embedded_settings)
    hits = [q["doc_id"] in {c.doc_id for c in retriever.retrieve(q["question"], "squad", 4)} for q in questions]
    assert len(questions) == 40
    assert sum(hits) / len(hits) >= 0.6  # recall@4 by doc_id on a 40-paragraph slice
    first = retriever.retrieve(questions[0]["question"], "squad", 1)[0]
    assert first.source.startswith("train.paragraphs.jsonl#") and first.title
