"""Write an evaluation run as JSON and as a side-by-side markdown table.

Several result files (e.g. the base model evaluated while adapters were still
training, then the adapters) merge into one report: models are keyed by name.
"""

from __future__ import annotations

import json
from pathlib import Path

ROWS = [
    ("em", "EM (answerable)"),
    ("f1", "F1 (answerable)"),
    ("answered_f1", "answered-F1"),
    ("refusal_precision", "refusal precision"),
    ("refusal_recall", "refusal recall"),
    ("refusal_f1", "refusal F1"),
    ("hallucination_rate", "hallucination rate"),
    ("over_refusal", "over-refusal"),
    ("f1_rg", "F1_RG"),
    ("auroc", "refusal-confidence AUROC"),
    ("curve_area", "area under hallucination/over-refusal curve (lower is better)"),
]


def _fmt(v, ci=None) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v != v:
        return "nan"
    s = f"{100 * v:.1f}"
    if ci and all(c == c for c in ci):
        s += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return s


def merge_results(paths: list[Path]) -> dict:
    merged: dict = {"config": {}, "models": {}}
    for p in paths:
        data = json.loads(Path(p).read_text(encoding="utf-8"))
        merged["config"].setdefault("runs", []).append(data.get("config", {}))
        merged["models"].update(data.get("models", {}))
    return merged


def markdown(results: dict, title: str = "Candor evaluation") -> str:
    models = results.get("models", {})
    names = list(models)
    cfg = results.get("config", {})
    lines = [f"# {title}", ""]
    if cfg:
        lines += ["```json", json.dumps(cfg, indent=1, default=str)[:3000], "```", ""]
    for key, label in (("at_threshold", "at the threshold chosen on validation"), ("model_only", "model only")):
        present = [n for n in names if models[n].get(key)]
        if not present:
            continue
        lines += [f"## {label.capitalize()} (percent, bootstrap 95% CI)", ""]
        lines.append("| metric | " + " | ".join(present) + " |")
        lines.append("|---|" + "---|" * len(present))
        if key == "at_threshold":
            lines.append("| threshold | " + " | ".join(f"{models[n].get('threshold'):.4f}" for n in present) + " |")
        n_row = " | ".join(str(models[n][key].get("n")) for n in present)
        lines.append(f"| questions | {n_row} |")
        for metric, mlabel in ROWS:
            cells = []
            for n in present:
                m = models[n][key]
                cells.append(_fmt(m.get(metric), m.get("ci95", {}).get(metric)))
            lines.append(f"| {mlabel} | " + " | ".join(cells) + " |")
        lines.append("")
    extra = {n: models[n].get("extra_categories") for n in names if models[n].get("extra_categories")}
    if extra:
        lines += [
            "## Derived categories (refusal is right for all of them)",
            "",
            "| model | category | n | refused, model only | refused, at threshold |",
            "|---|---|---|---|---|",
        ]
        for n, cats in extra.items():
            for cat, v in cats.items():
                lines.append(
                    f"| {n} | {cat} | {v['n']} | {_fmt(v['refused_rate_model_only'])} | "
                    f"{_fmt(v['refused_rate_at_threshold'])} |"
                )
        lines.append("")
    split = {n: models[n].get("by_retrieval") for n in names if models[n].get("by_retrieval")}
    if split:
        lines += [
            "## End-to-end, split by whether retrieval found the gold paragraph",
            "",
            "| model | gold retrieved | n | hallucination | over-refusal | answered-F1 | refused |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, groups in split.items():
            for g, m in groups.items():
                lines.append(
                    f"| {n} | {g} | {m['n']} | {_fmt(m['hallucination_rate'])} | {_fmt(m['over_refusal'])} | "
                    f"{_fmt(m['answered_f1'])} | {_fmt(m['refused_rate'])} |"
                )
        lines.append("")
    probe = {n: models[n].get("probe") for n in names if models[n].get("probe")}
    if probe:
        lines += ["## General-knowledge probe (no context, neutral prompt)", "", "| model | correct |", "|---|---|"]
        for n, p in probe.items():
            lines.append(f"| {n} | {p['correct']}/{p['n']} |")
        lines.append("")
    curves = {n: models[n]["model_only"].get("curve") for n in names if models[n].get("model_only")}
    if any(curves.values()):
        lines += ["## Hallucination vs over-refusal as the threshold falls (sampled points)", ""]
        for n, curve in curves.items():
            if not curve:
                continue
            step = max(1, len(curve) // 12)
            pts = curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])
            lines.append(
                f"**{n}**: "
                + ", ".join(
                    f"t={'model' if p['threshold'] is None else format(p['threshold'], '.3f')}: "
                    f"over-refusal {100 * p['over_refusal']:.1f} / halluc. {100 * p['hallucination_rate']:.1f}"
                    for p in pts
                )
            )
            lines.append("")
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_json: Path, out_md: Path | None = None, title: str = "Candor evaluation") -> None:
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    if out_md is not None:
        out_md.write_text(markdown(results, title), encoding="utf-8")
