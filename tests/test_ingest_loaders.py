"""Loaders: every format, and every kind of bad input reported per file with its reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixtures.ingest import make_pdf, write_corpus

from candor.errors import InvalidInputError
from candor.ingest.documents import documents_from_records
from candor.ingest.loaders import load_paths


def _by_id(result):
    return {d.doc_id: d for d in result.documents}


def test_formats_give_text_titles_and_relative_ids(corpus: Path) -> None:
    (corpus / "report.pdf").write_bytes(make_pdf("Quarterly revenue grew by twelve percent.", title="Q3 report"))
    (corpus / "api.htm").write_text("<h1>API</h1><p>Call POST <code>/v1/chat</code>. It<br>answers.</p><p>Next</p>")
    result = load_paths([corpus])
    docs = _by_id(result)
    assert set(docs) == {"oxygen.md", "primes.txt", "guide/fresno.md", "guide/plague.html", "report.pdf", "api.htm"}
    assert docs["api.htm"].text == "API\n\nCall POST /v1/chat. It answers.\n\nNext"  # inline stays inline
    assert not result.failures
    assert docs["oxygen.md"].title == "Oxygen"
    assert docs["primes.txt"].title == "primes"  # no heading: the file name
    html = docs["guide/plague.html"]
    assert html.title == "Black Death"
    assert "bubonic plague" in html.text
    assert "SCRIPT-TEXT" not in html.text and "color:red" not in html.text
    pdf = docs["report.pdf"]
    assert "revenue grew by twelve percent" in pdf.text
    assert pdf.title == "Q3 report"
    assert pdf.source == "report.pdf" and pdf.file == "report.pdf"


def test_jsonl_ids_titles_metadata_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"doc_id": "a#0", "title": "A", "text": "alpha text"}),
        json.dumps({"id": 7, "text": "seven", "lang": "en", "tags": ["x", "y"], "score": 0.5, "none": None}),
        "",
        "{not json",
        json.dumps({"id": "no-text"}),
        json.dumps({"text": "no id"}),
        json.dumps({"id": "empty", "text": "   "}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "a#0", "text": "duplicate"}),
        json.dumps({"id": "r", "text": "reserved", "candor_source": "x"}),
    ]
    path = tmp_path / "docs.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "bad-utf8", "text": "\xff\xfe"}\n')
    result = load_paths([path])
    docs = _by_id(result)
    assert set(docs) == {"a#0", "7"}
    assert docs["a#0"].title == "A" and docs["a#0"].source == "docs.jsonl#a#0"
    assert docs["7"].metadata == {"lang": "en", "tags": '["x", "y"]', "score": 0.5}
    reasons = {f.where: f.reason for f in result.failures}
    assert reasons == {
        "docs.jsonl:4": reasons["docs.jsonl:4"],
        "docs.jsonl:5": "missing 'text'",
        "docs.jsonl:6": "missing 'id' (or 'doc_id')",
        "docs.jsonl:7": "'text' is empty",
        "docs.jsonl:8": "expected a JSON object, got list",
        "docs.jsonl:9": "duplicate id 'a#0' in this file",
        "docs.jsonl:10": "metadata key 'candor_source' is reserved",
        "docs.jsonl:11": reasons["docs.jsonl:11"],
    }
    assert reasons["docs.jsonl:4"].startswith("invalid JSON")
    assert "UTF-8" in reasons["docs.jsonl:11"]
    assert result.failed_files == {"docs.jsonl"}


def test_squad_paragraphs_load_as_is(squad_dir: Path) -> None:
    result = load_paths([squad_dir / "dev.paragraphs.jsonl"])
    assert not result.failures
    assert len(result.documents) == 164
    first = result.documents[0]
    assert first.doc_id == "Normans#0" and first.title == "Normans"
    assert first.metadata == {}


def test_bad_files_are_reported_and_the_rest_loads(tmp_path: Path) -> None:
    root = write_corpus(
        tmp_path / "c",
        {
            "good.md": "# Good\n\nUseful content.",
            "binary.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "empty.md": "",
            "blank.txt": "  \n\t\n",
            "latin1.txt": "caf\xe9 cr\xe8me".encode("latin-1"),
            "broken.pdf": b"%PDF-1.4\nthis is not really a pdf",
            "textless.pdf": make_pdf(""),
            "blank.jsonl": "\n\n",
            "image.png": b"\x89PNG",
            ".hidden.md": "# hidden",
        },
    )
    os.symlink("loop.md", root / "loop.md")  # a file nobody can read (even root): ELOOP
    result = load_paths([root])
    assert [d.doc_id for d in result.documents] == ["good.md"]
    reasons = {f.where: f.reason for f in result.failures}
    assert reasons["binary.txt"] == "binary file (contains NUL bytes), not text"
    assert reasons["empty.md"] == "empty file"
    assert reasons["blank.txt"] == "empty file"
    assert reasons["latin1.txt"] == "not valid UTF-8 (byte 0xe9 at offset 3)"
    assert reasons["broken.pdf"].startswith("not a readable PDF")
    assert reasons["textless.pdf"] == "PDF has no extractable text (scanned images?)"
    assert reasons["blank.jsonl"] == "empty file"
    assert reasons["loop.md"].startswith("cannot read:")
    assert set(reasons) == {
        "binary.txt",
        "empty.md",
        "blank.txt",
        "latin1.txt",
        "broken.pdf",
        "textless.pdf",
        "blank.jsonl",
        "loop.md",
    }
    assert result.skipped == ["image.png"]  # unsupported types inside a directory are skipped, hidden files too


def test_usage_errors_are_raised_before_loading(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file or directory"):
        load_paths([tmp_path / "missing"])
    (tmp_path / "x.docx").write_bytes(b"PK")
    with pytest.raises(InvalidInputError, match="unsupported file type '.docx'"):
        load_paths([tmp_path / "x.docx"])
    with pytest.raises(InvalidInputError, match="no input paths"):
        load_paths([])


def test_duplicate_ids_across_inputs_fail_the_later_one(tmp_path: Path) -> None:
    a = write_corpus(tmp_path / "a", {"same.md": "first"})
    b = write_corpus(tmp_path / "b", {"same.md": "second"})
    result = load_paths([a, b])
    assert [d.text for d in result.documents] == ["first"]
    assert len(result.failures) == 1 and "duplicate document id 'same.md'" in result.failures[0].reason


def test_content_hash_ignores_mtime_but_not_content(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "c", {"a.md": "# A\n\nsome text"})
    before = load_paths([root]).documents[0].content_hash
    os.utime(root / "a.md", (1_000_000, 1_000_000))
    assert load_paths([root]).documents[0].content_hash == before
    (root / "a.md").write_text("# A\n\nsome other text")
    assert load_paths([root]).documents[0].content_hash != before


def test_posted_documents_are_validated_all_or_nothing() -> None:
    docs = documents_from_records([{"id": "x", "text": "hello", "title": "T", "metadata": {"k": 1}}])
    assert docs[0].source == "api#x" and docs[0].file is None and docs[0].metadata == {"k": 1}
    with pytest.raises(InvalidInputError) as err:
        documents_from_records([{"id": "x", "text": "a"}, {"id": "x", "text": "b"}, {"text": "c"}])
    assert "document 1: duplicate id 'x'" in str(err.value)
    assert "document 2: missing 'id'" in str(err.value)
