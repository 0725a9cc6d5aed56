"""CANDOR_DATA_SOURCE: the SQuAD 2.0 base data wherever a user keeps it, for the loop, the commands and the benchmarks.

The data here is the tests' own SQuAD split rewritten as the official SQuAD v2 JSON
(``train-v2.0.json``, ``dev-v2.0.json``) in a temporary folder, with every article renamed, so a
result that holds a renamed article can only have come from that folder; the repository layout's
``../shared`` is pointed at a folder that does not exist.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fixtures.core import REPO_ROOT
from fixtures.loop import flag_row

import candor.data_source as data_source
from candor.cli.main import main
from candor.data_source import data_split, resolve_data_source, split_files
from candor.finetune.squad import load_squad
from candor.jsonl import write_jsonl
from candor.retrain.loop_params import LoopPaths, read_params
from candor.retrain.loop_stages import export_base_data
from candor.retrain.run import run_dvc
from candor.settings import SettingsError, get_settings

PREFIX = "Elsewhere "  # every article of the temporary data is renamed with it


def write_official(squad_dir: Path, split: str, dest: Path, articles: int | None = None) -> Path:
    """``split`` of the tests' JSONL folder as an official SQuAD v2 JSON file, articles renamed."""
    corpus = load_squad(squad_dir, split)
    by_article: dict[str, list] = {}
    for p in corpus.paragraphs.values():
        by_article.setdefault(p.title, []).append(p)
    questions: dict[str, list] = {}
    for q in corpus.questions:
        questions.setdefault(q.doc_id, []).append(q)
    data = []
    for title in sorted(by_article)[:articles]:
        paragraphs = []
        for p in by_article[title]:
            qas = [
                {
                    "id": q.id,
                    "question": q.question,
                    "answers": [{"text": a, "answer_start": max(p.text.find(a), 0)} for a in q.answers],
                    "is_impossible": q.is_impossible,
                }
                for q in questions.get(p.doc_id, [])
            ]
            paragraphs.append({"context": p.text, "qas": qas})
        data.append({"title": PREFIX + title, "paragraphs": paragraphs})
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{split}-v2.0.json"
    out.write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")
    return out


@pytest.fixture
def elsewhere(settings, squad_dir, tmp_path, monkeypatch) -> Path:
    """A folder of official SQuAD files outside the repository layout; CANDOR_DATA_SOURCE names it."""
    folder = tmp_path / "my squad data"
    write_official(squad_dir, "train", folder)
    write_official(squad_dir, "dev", folder, articles=2)
    monkeypatch.setattr(data_source, "REPO_LAYOUT_SOURCE", tmp_path / "no-shared" / "data" / "squad2")
    monkeypatch.setenv("CANDOR_DATA_SOURCE", str(folder))
    get_settings.cache_clear()
    return folder


@pytest.fixture
def nothing(settings, tmp_path, monkeypatch) -> None:
    """No CANDOR_DATA_SOURCE and no ../shared: a fresh install."""
    monkeypatch.delenv("CANDOR_DATA_SOURCE", raising=False)
    monkeypatch.setattr(data_source, "REPO_LAYOUT_SOURCE", tmp_path / "no-shared" / "data" / "squad2")
    get_settings.cache_clear()


def test_explicit_path_then_the_setting_then_the_repository_layout(settings, tmp_path, monkeypatch) -> None:
    layout, configured, explicit = (tmp_path / n for n in ("layout", "configured", "explicit"))
    for folder in (layout, configured, explicit):
        folder.mkdir()
    monkeypatch.setattr(data_source, "REPO_LAYOUT_SOURCE", layout)
    monkeypatch.delenv("CANDOR_DATA_SOURCE")
    get_settings.cache_clear()
    assert resolve_data_source() == layout
    monkeypatch.setenv("CANDOR_DATA_SOURCE", str(configured))
    get_settings.cache_clear()
    assert resolve_data_source() == configured
    assert resolve_data_source(explicit) == explicit
    monkeypatch.setenv("CANDOR_DATA_SOURCE", "  ")  # blank: unset
    get_settings.cache_clear()
    assert get_settings().data_source is None and resolve_data_source() == layout


def test_missing_data_names_the_setting_and_the_official_files(nothing, tmp_path, monkeypatch) -> None:
    with pytest.raises(SettingsError) as err:
        resolve_data_source()
    assert "CANDOR_DATA_SOURCE is not set" in str(err.value)
    assert "train-v2.0.json" in str(err.value) and data_source.OFFICIAL_URL in str(err.value)
    monkeypatch.setenv("CANDOR_DATA_SOURCE", str(tmp_path / "gone"))
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"CANDOR_DATA_SOURCE=.*gone does not exist"):
        resolve_data_source()
    with pytest.raises(SettingsError, match="SQuAD data not found at .*elsewhere"):
        resolve_data_source(tmp_path / "elsewhere")


def test_a_folder_of_official_files_serves_each_split(elsewhere) -> None:
    assert data_split("train") == elsewhere / "train-v2.0.json"
    assert data_split("dev") == elsewhere / "dev-v2.0.json"
    dev = load_squad(data_split("dev"), "dev")
    assert len(dev.articles()) == 2 and all(a.startswith(PREFIX) for a in dev.articles())
    with pytest.raises(SettingsError, match="no 'test' split.*test-v2.0.json"):
        split_files(data_split("test"), "test")


def test_commands_without_data_fail_with_the_setting_named_not_a_traceback(nothing, tmp_path, capsys) -> None:
    from candor.retrain.workspace import make_workspace

    out = tmp_path / "out"
    assert main(["finetune", "build-data", "--params", str(REPO_ROOT / "params.yaml"), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "CANDOR_DATA_SOURCE" in err and "Traceback" not in err and not out.exists()

    ws = make_workspace(tmp_path / "ws", REPO_ROOT, "small")
    assert main(["retrain", "--workspace", str(ws), "--no-swap"]) == 2
    err = capsys.readouterr().err
    assert "CANDOR_DATA_SOURCE" in err and "train-v2.0.json" in err and "Traceback" not in err
    assert not (ws / "var" / "loop" / "inputs" / "flags.jsonl").exists()  # stopped before exporting


def test_the_loop_prepare_stage_reads_data_outside_the_repository_layout(elsewhere, settings, tmp_path) -> None:
    """DVC runs screen, pairs and prepare (real `candor loop` commands) on the data CANDOR_DATA_SOURCE names."""
    from candor.retrain.workspace import make_workspace

    s = get_settings()
    ws = make_workspace(tmp_path / "ws", REPO_ROOT, "small")
    params = read_params(ws / "params.yaml")
    assert "source" not in params["build_data"]
    paths = LoopPaths(ws / "var" / "loop")
    write_jsonl(paths.export, [flag_row("f1")])
    manifest = export_base_data(params, paths, s, ws)
    assert manifest["path"] == str((elsewhere / "train-v2.0.json").resolve())
    assert list(manifest["sha256"]) == ["train-v2.0.json"]

    run_dvc(["repro", "prepare"], ws, s)
    rows = [json.loads(line) for line in paths.train_data.read_text().splitlines()]
    base = [r for r in rows if r["source"] == "base"]
    stats = json.loads(paths.mix_stats.read_text())
    assert stats["base_rows"] == len(base) >= 24  # the small profile's floor
    assert {r["article"] for r in base} and all(r["article"].startswith(PREFIX) for r in base)
    lock = (ws / "dvc.lock").read_text()
    assert "inputs/base_data.json" in lock and "squad2" not in lock

    # the data changes where it lives: the manifest changes, so DVC runs prepare again
    before = paths.train_data.read_text()
    (elsewhere / "train-v2.0.json").write_text(
        (elsewhere / "train-v2.0.json").read_text().replace(PREFIX, "Moved "), encoding="utf-8"
    )
    export_base_data(params, paths, s, ws)
    run_dvc(["repro", "prepare"], ws, s)
    after = paths.train_data.read_text()
    moved = [json.loads(line) for line in after.splitlines() if '"base"' in line]
    assert after != before and moved and all(r["article"].startswith("Moved ") for r in moved if r["source"] == "base")


def test_a_benchmark_reads_data_outside_the_repository_layout(elsewhere, tmp_path) -> None:
    """bench_generation (whose prompts bench_llamacpp uses) and bench_verifier load the official files."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import bench_generation
        import bench_verifier
        import common
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    dev = load_squad(elsewhere / "dev-v2.0.json")
    assert bench_generation.paragraph_texts() == [p.text for p in dev.paragraphs.values()]
    sets = bench_verifier.question_sets(4, 2)
    texts = {p.text for p in dev.paragraphs.values()}
    assert len(sets) == 4 and all(q and all(t in texts for t in passages) for q, passages in sets)
    jsonl = common.squad_paragraphs_jsonl("dev", tmp_path / "bench")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert jsonl.parent == tmp_path / "bench" and all(r["title"].startswith(PREFIX) for r in rows)


def test_a_benchmark_without_data_exits_with_the_message(nothing) -> None:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import common
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    with pytest.raises(SystemExit, match="CANDOR_DATA_SOURCE"):
        common.squad_paragraphs("dev")
