"""`candor retrain` plumbing: the lock, the workspace, DVC running the first stages, early stops, swap errors."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fixtures.core import REPO_ROOT, serving
from fixtures.loop import write_adapter
from fixtures.store import answer_record

from candor.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from candor.retrain.adapters import AdapterRegistry
from candor.retrain.loop_params import LoopPaths, read_params
from candor.retrain.run import retrain, run_dvc, run_lock, settings_env
from candor.retrain.workspace import make_workspace


def test_two_runs_never_overlap(tmp_path) -> None:
    lock = tmp_path / "adapters" / ".retrain.lock"
    with run_lock(lock), pytest.raises(ConflictError, match="another retraining run"), run_lock(lock):
        pass
    with run_lock(lock):  # released: the next run starts
        pass


def test_settings_travel_to_dvc_stages_as_absolute_env(settings, monkeypatch) -> None:
    from candor.settings import load_settings

    env = settings_env(settings)
    assert Path(env["CANDOR_DATA_DIR"]).is_absolute()
    assert env["CANDOR_DATABASE_URL"].startswith("sqlite:///")
    for key, value in env.items():  # as a DVC stage's process reads them: from its environment
        monkeypatch.setenv(key, value)
    again = load_settings()
    assert again.data_dir == settings.data_dir.resolve() and again.max_new_tokens == settings.max_new_tokens
    assert again.stop_sequences == settings.stop_sequences == ["\n\n", "\nQuestion:"]  # a list travels as JSON


def test_workspace_merges_the_small_profile(tmp_path) -> None:
    ws = make_workspace(tmp_path / "ws", REPO_ROOT, "small")
    params = read_params(ws / "params.yaml")
    small = read_params(REPO_ROOT / "params.small.yaml")
    assert params["loop"]["train"]["num_train_epochs"] == small["loop"]["train"]["num_train_epochs"]
    assert (
        params["loop"]["train"]["distill_lambda"]
        == read_params(REPO_ROOT / "params.yaml")["loop"]["train"]["distill_lambda"]
    )
    assert params["loop"]["eval"]["seed"] == read_params(REPO_ROOT / "params.yaml")["loop"]["eval"]["seed"]
    assert "source" not in params["build_data"]  # the base data comes from CANDOR_DATA_SOURCE
    assert Path(params["loop"]["code_dir"]) == REPO_ROOT
    assert (ws / "dvc.yaml").read_text() == (REPO_ROOT / "dvc.yaml").read_text()
    assert "analytics = false" in (ws / ".dvc" / "config").read_text()


def test_workspace_merges_several_profiles_in_order(tmp_path) -> None:
    """``small,extra``: the small profile, then a base model's own loop overrides on top of it."""
    import shutil

    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml", "params.small.yaml"):
        shutil.copyfile(REPO_ROOT / name, project / name)
    (project / "params.extra.yaml").write_text("loop:\n  train:\n    learning_rate: 1.0e-5\n", encoding="utf-8")
    params = read_params(make_workspace(tmp_path / "ws", project, "small,extra") / "params.yaml")
    small = read_params(REPO_ROOT / "params.small.yaml")
    assert params["loop"]["train"]["learning_rate"] == 1.0e-5 != small["loop"]["train"]["learning_rate"]
    assert params["loop"]["train"]["num_train_epochs"] == small["loop"]["train"]["num_train_epochs"]
    with pytest.raises(NotFoundError, match="no profile 'nope'"):
        make_workspace(tmp_path / "ws2", project, "small,nope")
    # the repository's own model-profile file merges cleanly after the small profile
    assert read_params(make_workspace(tmp_path / "ws3", REPO_ROOT, "small,gemma3-270m") / "params.yaml")["loop"]


def _store_with_flags(settings):
    from candor.feedback.store import AnswerStore

    store = AnswerStore(settings)
    store.migrate()
    a1 = store.log_answer(answer_record(question="Who founded the Normans?", answer="Charlemagne."))
    a2 = store.log_answer(answer_record(question="When were the Normans founded?", answer="In 1066."))
    untrusted, _ = store.create_key("someone", "user", None, trusted=False)
    f1 = store.add_feedback(a1, "hallucination", correction="Rollo")  # supported by the logged context
    f2 = store.add_feedback(a2, "should_have_refused")
    store.add_feedback(a2, "correct", api_key_id=untrusted)  # pending review: never exported
    store.close()
    return f1, f2


def test_dvc_runs_screening_and_pairs_from_the_export(settings, tmp_path) -> None:
    from candor.retrain.loop_stages import export_inputs

    f1, f2 = _store_with_flags(settings)
    ws = make_workspace(tmp_path / "ws", REPO_ROOT, "small")
    paths = LoopPaths(ws / "var" / "loop")
    exported = export_inputs(settings, paths)
    assert exported["flags"] == 2 and exported["baseline"]["version"] is None
    run_dvc(["repro", "build_pairs"], ws, settings)
    pairs = [json.loads(line) for line in paths.pairs.read_text().splitlines()]
    assert [(p["flag_id"], p["category"], p["answer"]) for p in pairs] == [
        (f1.id, "feedback_qa", "Rollo"),
        (f2.id, "feedback_refusal", "I don't know based on the provided documents."),
    ]
    assert json.loads(paths.screening.read_text())["kept"] == 2
    assert len(paths.regression.read_text().splitlines()) == 2
    lock = (ws / "dvc.lock").read_text()
    run_dvc(["repro", "build_pairs"], ws, settings)  # nothing changed: nothing reruns
    assert (ws / "dvc.lock").read_text() == lock


def test_retrain_stops_without_flags_or_without_new_ones(settings, tmp_path) -> None:
    ws = make_workspace(tmp_path / "ws", REPO_ROOT, "small")
    assert retrain(settings, ws, swap=False, echo=lambda s: None)["status"] == "no_flags"
    f1, f2 = _store_with_flags(settings)
    reg = AdapterRegistry.for_settings(settings)
    seen = reg.register(write_adapter(tmp_path / "a", b"a"), flag_ids=[f1.id], info={"flags_seen": [f2.id]})
    reg.promote(seen.version)
    out = retrain(settings, ws, swap=False, echo=lambda s: None)
    assert out["status"] == "no_new_flags" and out["exported_flags"] == 2
    with run_lock(reg.root / ".retrain.lock"), pytest.raises(ConflictError):
        retrain(settings, ws, swap=False, echo=lambda s: None)
    from candor.retrain.runs import read_runs

    runs = read_runs(settings)  # newest first; the run locked out never started and is not recorded
    assert [r["status"] for r in runs] == ["no_new_flags", "no_flags"]
    assert runs[0]["exported_flags"] == 2 and runs[0]["started_at"] <= runs[0]["finished_at"]


# --- hot swap error handling (a stand-in server: only the failure modes are under test) -----------


class _NoAdmin(BaseHTTPRequestHandler):
    """Answers like real TGI would for an admin route it does not have."""

    def do_GET(self):  # noqa: N802
        self.send_response(404)
        self.end_headers()

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def tgi_like_url():
    with serving(_NoAdmin) as server:
        yield f"http://127.0.0.1:{server.server_port}"


def test_swap_explains_a_server_without_runtime_adapters(settings, tmp_path, tgi_like_url) -> None:
    from candor.retrain.hot_swap import hot_swap

    reg = AdapterRegistry.for_settings(settings)
    reg.promote(reg.register(write_adapter(tmp_path / "a", b"a")).version)
    s = settings.model_copy(update={"llm_url": tgi_like_url})
    with pytest.raises(UnavailableError, match="LORA_ADAPTERS"):
        hot_swap(s, reg)
    assert reg.serving() is None


def test_swap_fails_cleanly_when_the_server_is_down_or_nothing_is_current(settings, tmp_path) -> None:
    from candor.retrain.hot_swap import hot_swap

    reg = AdapterRegistry.for_settings(settings)
    with pytest.raises(InvalidInputError, match="no adapter is current"):
        hot_swap(settings, reg)
    reg.promote(reg.register(write_adapter(tmp_path / "a", b"a")).version)
    s = settings.model_copy(update={"llm_url": "http://127.0.0.1:9"})
    with pytest.raises(UnavailableError, match="unreachable"):
        hot_swap(s, reg)
    assert reg.serving() is None


def test_retrain_cli_reports_and_exits_cleanly(settings, tmp_path, capsys) -> None:
    from candor.cli.main import main

    ws = make_workspace(tmp_path / "ws", REPO_ROOT, "small")
    assert main(["retrain", "--workspace", str(ws), "--no-swap"]) == 0
    assert "retrain: no_flags" in capsys.readouterr().out
    reg = AdapterRegistry.for_settings(settings)
    with run_lock(reg.root / ".retrain.lock"):
        assert main(["retrain", "--workspace", str(ws)]) == 3
    assert "another retraining run" in capsys.readouterr().err
    assert main(["retrain", "--workspace", str(tmp_path / "nowhere")]) == 2
    assert "params file not found" in capsys.readouterr().err


def test_the_pipeline_is_declared_offline_and_thin() -> None:
    import configparser

    import yaml

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [
        "export_feedback", "build_pairs", "prepare", "train", "evaluate", "promote",
        "reader_labels", "reader_train", "reader_evaluate", "reader_promote",
    ]  # fmt: skip
    assert all(s["cmd"].startswith("candor loop ") for s in stages.values())
    assert all(s.get("deps") and s.get("outs") and s.get("params") for s in stages.values())
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    core = config["core"]
    assert core["analytics"] == "false" and core["check_update"] == "false"
    assert not Path(core["site_cache_dir"]).is_absolute()  # inside the project, not /var/tmp/dvc
