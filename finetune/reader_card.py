"""`candor finetune ship-reader`: copy a trained reader into models/ with a card written from its numbers.

Every figure on the card comes from files the run and the evaluations wrote (summary.json,
data_stats.json, reader.json, report JSONs): nothing is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.model_card import install_folder
from candor.reader import CONFIG_FILE, WEIGHTS_FILE

MAX_SHIPPED_BYTES = 25 * 1024 * 1024


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _report_lines(title: str, report: dict) -> list[str]:
    d, s, extra = report["decision"], report["squad2"], report.get("extra_categories", {})
    ci = d.get("ci95", {}).get("auroc") or [None, None]
    lines = [
        f"## {title}",
        "",
        f"{d['n']} items at threshold {report['threshold']}; AUROC {d['auroc']:.3f}"
        + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else "")
        + f"; hallucination {_pct(d['hallucination_rate'])}, over-refusal {_pct(d['over_refusal'])},"
        f" answered-F1 of the evidence span {_pct(d['answered_f1'])}; {report['ms_per_item']} ms an item.",
        "",
        "| SQuAD 2.0 | n | EM | F1 |",
        "|---|---|---|---|",
        *[f"| {k} | {v['n']} | {100 * v['em']:.1f} | {100 * v['f1']:.1f} |" for k, v in s.items()],
        "",
        "| category | n | refused |",
        "|---|---|---|",
        *[f"| {k} | {v['n']} | {_pct(v['refused_rate'])} |" for k, v in d["per_category"].items()],
        *[f"| {k} (derived) | {v['n']} | {_pct(v['refused_rate'])} |" for k, v in extra.items()],
        "",
    ]
    return lines


def reader_card_text(meta: dict, summary: dict, data: dict, reports: list[tuple[str, dict]]) -> str:
    cfg, val = summary.get("config", {}), meta.get("validation") or {}
    sources = data.get("sources", {})
    kinds: dict[str, int] = {}
    for s in sources.values():
        for k, v in s.get("by_kind", {}).items():
            kinds[k] = kinds.get(k, 0) + v
    located = {k: sum(s.get("offsets", {}).get(k, 0) for s in sources.values()) for k in ("given", "located", "missed")}
    lines = [
        "---",
        "license: apache-2.0",
        "base_model: sentence-transformers/all-MiniLM-L6-v2",
        "tags: [candor, answerability, extractive-qa, squad_v2]",
        "---",
        "",
        "# candor-reader",
        "",
        "Candor's answerability reader: an extractive question-answering model that reads a question and one",
        'passage together, scores every answer span against "no answer" (the SQuAD 2.0 recipe) and gives',
        "P(the passage answers the question) with the best evidence span. A question is as answerable as its",
        "best passage. The API refuses before generating when 1 - P, raised when the best retrieval match is",
        "weak, reaches the threshold (`CANDOR_READER_PATH`, `CANDOR_READER_THRESHOLD`; default: the threshold",
        "below), and shows the evidence in every answer. Made by `candor finetune train-reader` and",
        "`candor finetune ship-reader`.",
        "",
        "## Files",
        "",
        f"`{WEIGHTS_FILE}` holds what training changed (the encoder layers and the span head, float16); the",
        "word embeddings come from the base encoder, the embedding model Candor already installs",
        f"(`{meta.get('base_model')}`). `{CONFIG_FILE}` holds the format, the window sizes and the validation",
        "threshold; `training.json` the run's summary.",
        "",
        "## Data",
        "",
        f"Sources: {', '.join(f'`{k}`' for k in sources)}; validation articles held out:"
        f" {', '.join(data.get('validation', {}).get('articles', []))}.",
        f"{data.get('train_examples', 0):,} training examples ({', '.join(f'{k} {v:,}' for k, v in kinds.items())})"
        f" in {data.get('train_features', 0):,} windows. Answer offsets: {located['given']:,} from the data,"
        f" {located['located']:,} located in the paragraph, {located['missed']:,} not found (dropped).",
        "",
        "## Training",
        "",
        f"- transformers' Trainer: {summary.get('global_step')} steps of batch {cfg.get('batch_size')}"
        f" ({summary.get('epoch')} epochs), learning rate {cfg.get('learning_rate')} with linear warm-up and"
        f" decay, windows of {cfg.get('max_length')} tokens (stride {cfg.get('doc_stride')}), word embeddings"
        f" frozen, float32, encoder seeded from `{cfg.get('init_from')}`;",
        *(
            [
                f"- this invocation resumed from `{summary['resumed_from']}`; a run given more epochs than it"
                " first had goes on along the longer schedule from there;"
            ]
            if summary.get("resumed_from")
            else []
        ),
        f"- {summary.get('features_per_s')} windows/s on one CPU core ({summary.get('torch_threads')} thread),"
        f" peak memory {summary.get('peak_rss_gb')} GB (RSS); final training loss {summary.get('train_loss')}.",
        "",
        "## Validation (held-out train articles, each kind of example)",
        "",
        f"AUROC {val.get('auroc')}; at the minimax threshold {val.get('threshold')}: hallucination"
        f" {_pct(val.get('hallucination_rate'))}, over-refusal {_pct(val.get('over_refusal'))}"
        f" ({val.get('examples')} examples); span F1 on answerable {_pct(val.get('span_f1_answerable'))}.",
        "",
    ]
    int8 = meta.get("int8") or {}
    if int8.get("validation"):  # from `candor finetune quantize-reader`
        v8 = int8["validation"]
        lines += [
            "## int8 (`CANDOR_READER_INT8=true`)",
            "",
            f"{int8.get('scheme', 'int8 weights')}; its own threshold {int8.get('threshold')}, chosen on the same"
            f" {v8.get('examples')} validation examples: AUROC {v8.get('auroc')}, hallucination"
            f" {_pct(v8.get('hallucination_rate'))}, over-refusal {_pct(v8.get('over_refusal'))}.",
            "",
        ]
    for title, report in reports:
        lines += _report_lines(title, report)
    lines += [
        "## Limits",
        "",
        "A 22M-parameter encoder trained on 32 Wikipedia articles: SQuAD 2.0's unanswerable questions are",
        "written to look answerable, and it separates them from answerable ones far from perfectly (the figures",
        "above). It reads passages in windows of the length above. English only. Flags on your own documents",
        "are the way to teach it your domain.",
        "",
    ]
    return "\n".join(lines)


def ship_reader(run_dir: Path, dest: Path, report_paths: list[Path] | None = None) -> Path:
    """Copy ``run_dir/final`` to ``dest`` (atomically) with its card and training summary."""
    run_dir, dest = Path(run_dir), Path(dest)
    src = run_dir / "final"
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (src / f).exists():
            raise NotFoundError(f"{src / f} missing: train the reader to the end first")
    size = (src / WEIGHTS_FILE).stat().st_size
    if size > MAX_SHIPPED_BYTES:
        raise InvalidInputError(f"reader is {size / 1e6:.1f} MB; the shipped one must stay under 25 MB")
    meta = json.loads((src / CONFIG_FILE).read_text())
    summaries = json.loads((run_dir / "summary.json").read_text())["invocations"]
    summary = next(s for s in reversed(summaries) if s.get("validation"))
    data = json.loads((run_dir / "data_stats.json").read_text())
    reports = []
    for path in report_paths or []:
        if not Path(path).exists():
            raise NotFoundError(f"report not found: {path}")
        report = json.loads(Path(path).read_text())
        reports.append((f"The reader alone: {report.get('split', '')} ({Path(path).name})", report))
    return install_folder(
        dest,
        {WEIGHTS_FILE: src / WEIGHTS_FILE},
        {
            CONFIG_FILE: json.dumps(meta, indent=1) + "\n",
            "README.md": reader_card_text(meta, summary, data, reports),
            "training.json": json.dumps({**summary, "data": data}, indent=1) + "\n",
        },
    )
