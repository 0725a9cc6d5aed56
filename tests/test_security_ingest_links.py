"""`candor ingest DIR` never follows a symbolic link out of DIR unless told to.

A shared or uploaded corpus folder could otherwise pull any file the ingest user can read
(keys, .env, /etc/passwd) into a collection, where every key allowed on it retrieves and
cites it. Real Chroma (embedded) and the real embedder, through the `candor` entry point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixtures.ingest import write_corpus

from candor.cli.main import main
from candor.settings import Settings

SECRET = "CANDOR_SECRET_TOKEN=hunter2-the-launch-codes-for-the-ingest-user"


def _corpus_with_links(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secrets.txt").write_text(SECRET + "\n", encoding="utf-8")
    (outside / "more").mkdir()
    (outside / "more" / "keys.md").write_text("# Keys\n\n" + SECRET + "\n", encoding="utf-8")
    root = write_corpus(
        tmp_path / "corpus",
        {
            "oxygen.md": "# Oxygen\n\nOxygen is a chemical element with symbol O and atomic number 8.",
            "sub/primes.txt": "A prime number is a natural number greater than 1 with no other divisors.",
        },
    )
    os.symlink(outside / "secrets.txt", root / "sub" / "link.txt")  # a file link out of the root
    os.symlink(outside / "more", root / "linked-dir")  # a folder link out of the root
    os.symlink(root / "oxygen.md", root / "sub" / "again.md")  # a link that stays inside
    return root


def _ingest_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["ingest", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_links_out_of_the_ingest_folder_are_failures_not_documents(
    embedded_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _corpus_with_links(tmp_path)
    code, report = _ingest_json([str(root), "-c", "linked"], capsys)
    assert code == 1 and report["ok"] is False
    failures = {f["where"]: f["reason"] for f in report["failures"]}
    assert set(failures) == {"sub/link.txt", "linked-dir"}, failures
    assert "symbolic link to a file outside the ingest folder" in failures["sub/link.txt"]
    assert "symbolic link to a directory outside the ingest folder" in failures["linked-dir"]
    assert all("--follow-links" in reason for reason in failures.values())
    assert report["new"] == 3  # oxygen.md, sub/primes.txt and the inside link sub/again.md

    assert main(["retrieve", "launch codes secret token", "-c", "linked", "-k", "10", "--json"]) == 0
    chunks = json.loads(capsys.readouterr().out)
    assert chunks and not any("hunter2" in c["text"] for c in chunks), chunks
    assert {c["doc_id"] for c in chunks} == {"oxygen.md", "sub/primes.txt", "sub/again.md"}


@pytest.mark.slow
def test_follow_links_reads_them_on_purpose(
    embedded_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _corpus_with_links(tmp_path)
    code, report = _ingest_json([str(root), "-c", "linked", "--follow-links"], capsys)
    assert code == 0 and report["ok"] is True and report["failures"] == [], report
    assert report["new"] == 5
    assert main(["retrieve", "launch codes secret token", "-c", "linked", "-k", "2", "--json"]) == 0
    docs = {c["doc_id"] for c in json.loads(capsys.readouterr().out)}
    assert docs == {"sub/link.txt", "linked-dir/keys.md"}


def test_a_link_cycle_with_follow_links_ends(tmp_path: Path) -> None:
    from candor.ingest.loaders import load_paths

    root = write_corpus(tmp_path / "corpus", {"a/note.txt": "A short note about cycles."})
    os.symlink(root, root / "a" / "up")  # a/up -> the root itself
    result = load_paths([root], follow_links=True)
    assert [d.doc_id for d in result.documents] == ["a/note.txt"] and not result.failures
