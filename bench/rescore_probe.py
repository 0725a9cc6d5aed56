"""Every saved general-knowledge probe, scored again with whole-word matching.

    python bench/rescore_probe.py reports/eval-oracle-*.json

The probe once counted an accepted word anywhere in the answer, so "-18.00 Celsius" counted as 0 °C and
"17" as 7. The evaluation reports keep each probe answer; this scores them with today's
``candor.finetune.probe.score_probe`` and lists the reports whose count changes. Not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, write_json

from candor.finetune.probe import score_probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS / "probe-rescored.json")
    args = ap.parse_args()
    rows = []
    for report in sorted(args.reports):
        run = json.loads(report.read_text(encoding="utf-8"))
        for name, res in (run.get("models") or {}).items():
            probe = res.get("probe") if isinstance(res, dict) else None
            if not probe or "answers" not in probe:
                continue
            now = score_probe([a["answer"] for a in probe["answers"]])
            changed = [
                a["question"]
                for a, b in zip(probe["answers"], now["answers"], strict=True)
                if a["correct"] != b["correct"]
            ]
            rows.append(
                {
                    "report": str(report),
                    "model": name,
                    "saved": probe["correct"],
                    "now": now["correct"],
                    "n": now["n"],
                    "changed": changed,
                }
            )
            print(
                f"{report.stem} {name}: {probe['correct']} -> {now['correct']} / {now['n']}"
                + (f"  {changed}" if changed else "")
            )
    write_json(args.out, {"results": rows})


if __name__ == "__main__":
    main()
