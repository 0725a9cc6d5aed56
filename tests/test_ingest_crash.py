"""SIGKILL mid-ingest, then run again: the collection equals its manifest (no duplicates, no orphans).

The ingest runs as a real `candor ingest` process. A test-only hook
(CANDOR_TEST_PAUSE_BEFORE_COMMIT=2:MARKER) makes it stop right after batch 2's
chunks reached Chroma and before the manifest recorded them; the test then
sends SIGKILL and proves where the kill landed by counting: batch 1 committed,
batch 2's chunks present in Chroma but unaccounted for by the manifest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.ingest import write_corpus

from candor.cli.main import main
from candor.ingest import store
from candor.ingest.collections import describe_collection, verify_collection
from candor.ingest.pipeline import ingest_paths
from candor.settings import Settings

pytestmark = pytest.mark.slow

PAUSE_TIMEOUT_S = 300.0
FILES = {
    f"{name}.md": f"# {name.title()}\n\n{text}"
    for name, text in [
        ("alpha", "Alpha is the first letter of the Greek alphabet."),
        ("beta", "Beta particles are high-energy electrons emitted in radioactive decay."),
        ("gamma", "Gamma rays are penetrating electromagnetic radiation of short wavelength."),
        ("delta", "A river delta forms where a river meets slower water and drops its sediment."),
        ("epsilon", "In calculus, epsilon often names an arbitrarily small positive quantity."),
        ("zeta", "The Riemann zeta function is central to the distribution of prime numbers."),
    ]
}


def _kill_mid_ingest(corpus: Path, tmp_path: Path, batch: int = 2) -> dict:
    """Run `candor ingest` in a subprocess, SIGKILL it at the hook; returns what the hook reported."""
    marker = tmp_path / "paused.json"
    env = {
        **os.environ,
        "CANDOR_INGEST_BATCH_DOCS": "2",
        "CANDOR_TEST_PAUSE_BEFORE_COMMIT": f"{batch}:{marker}",
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    cmd = [sys.executable, "-m", "candor.cli.main", "ingest", str(corpus), "-c", "docs", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"ingest ended before the hook (rc {proc.returncode}): {proc.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("ingest did not reach the hook in time")
            time.sleep(0.1)
        time.sleep(0.2)  # let the marker's writer finish its write
        info = json.loads(marker.read_text())
        assert info["pid"] == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return info


def _assert_kill_landed_between_chunks_and_manifest(s: Settings, info: dict) -> None:
    check = verify_collection(s, "docs")
    assert info["chunks_written"] > 0
    assert len(check.orphans) == info["chunks_written"]  # batch 2's chunks are in Chroma ...
    assert check.pending == 2  # ... noted as pending ...
    assert describe_collection(s, "docs").documents == 2  # ... and only batch 1 is in the manifest
    assert not check.missing


def test_sigkill_then_the_same_command_again(chroma_settings: Settings, tmp_path: Path) -> None:
    s = chroma_settings
    corpus = write_corpus(tmp_path / "corpus", FILES)
    info = _kill_mid_ingest(corpus, tmp_path)
    _assert_kill_landed_between_chunks_and_manifest(s, info)

    assert main(["ingest", str(corpus), "-c", "docs", "--no-progress"]) == 0
    check = verify_collection(s, "docs")
    assert check.ok, (check.orphans, check.missing, check.pending)
    assert describe_collection(s, "docs").documents == 6

    # exactly what an uninterrupted ingest produces: same chunk ids, no duplicates
    ingest_paths(s, [corpus], "clean")
    crashed = [cid for cid, _ in store.iter_ids(store.get_collection(s, "docs"), metadata=False)]
    clean = [cid for cid, _ in store.iter_ids(store.get_collection(s, "clean"), metadata=False)]
    assert len(crashed) == len(set(crashed))
    assert sorted(crashed) == sorted(clean)


def test_sigkill_then_the_half_written_documents_vanish(embedded_settings: Settings, tmp_path: Path) -> None:
    s = embedded_settings
    corpus = write_corpus(tmp_path / "corpus", FILES)
    info = _kill_mid_ingest(corpus, tmp_path)
    _assert_kill_landed_between_chunks_and_manifest(s, info)
    # batch 2 was delta.md and epsilon.md (sorted order, 2 per batch): both disappear before the rerun
    (corpus / "delta.md").unlink()
    (corpus / "epsilon.md").unlink()
    report = ingest_paths(s, [corpus], "docs")
    assert report.recovered == 2
    check = verify_collection(s, "docs")
    assert check.ok, (check.orphans, check.missing, check.pending)
    doc_ids = {m["doc_id"] for _, m in store.iter_ids(store.get_collection(s, "docs"))}
    assert doc_ids == {"alpha.md", "beta.md", "gamma.md", "zeta.md"}
