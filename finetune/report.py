"""Write an evaluation run as JSON and as a side-by-side markdown table.

Several result files (e.g. the base model evaluated while adapters were still
training, then the adapters) merge into one report: models are keyed by name.
"""

from __future__ import annotations

import json
from pathlib import Path

from candor.jsonl import json_safe

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
    if ci and all(c is not None and c == c for c in ci):
        s += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return s


def _grouped_rate_table(models: dict, field: str, heading: str, columns: list[str], rates: list[str]) -> list[str]:
    """Markdown section with one row per (model, group) of ``models[*][field]``: the group's
    size, then each of ``rates`` as a percentage. ``columns`` names the group column, then the
    rate columns. Empty when no model has ``field``."""
    per_model = {n: m.get(field) for n, m in models.items() if m.get(field)}
    if not per_model:
        return []
    header = ["model", columns[0], "n", *columns[1:]]
    lines = [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n, groups in per_model.items():
        for group, v in groups.items():
            cells = [n, group, str(v["n"]), *(_fmt(v[r]) for r in rates)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


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
    sections = (
        ("at_threshold", "at the threshold chosen on validation"),
        ("first_token_at_threshold", "the first-token signal at its own threshold, for comparison"),
        ("model_only", "model only"),
    )
    for key, label in sections:
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
    lines += _grouped_rate_table(
        models,
        "extra_categories",
        "Derived categories (refusal is right for all of them)",
        ["category", "refused, model only", "refused, at threshold"],
        ["refused_rate_model_only", "refused_rate_at_threshold"],
    )
    lines += _grouped_rate_table(
        models,
        "by_retrieval",
        "End-to-end, split by whether retrieval found the gold paragraph",
        ["gold retrieved", "hallucination", "over-refusal", "answered-F1", "refused"],
        ["hallucination_rate", "over_refusal", "answered_f1", "refused_rate"],
    )
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
    out_json.write_text(json.dumps(json_safe(results), indent=1, default=str, allow_nan=False) + "\n", encoding="utf-8")
    if out_md is not None:
        out_md.write_text(markdown(results, title), encoding="utf-8")
