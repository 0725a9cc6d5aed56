"""Screen exported flags before they can train anything (OWASP LLM04: data and model poisoning).

Flags are user input that becomes training data, so each run accepts only:

1. approved flags: trusted keys' flags are approved when given, untrusted keys'
   only after ``candor feedback review`` (the export holds approved flags by
   default; this check also catches an export made with ``--include-pending``);
2. at most ``max_flags_per_key`` flags per API key per run, oldest first (one
   shared slot for flags given without a key), so no single key can dominate
   a run however many answers it flags;
3. one flag per (prompt, target): the same question over the same context
   asking for the same thing counts once, whoever sent it;
4. no contradictions: when the same prompt is flagged with targets that
   disagree (refuse vs. answer, or two different answers), none of them
   trains and the set is listed for a person to settle (``drop_conflicts``).
   A "correct" flag is a target too (keep this answer), so flagging a
   confirmed answer as a hallucination cannot quietly turn it into a refusal.

Everything dropped is reported with its reason; the report goes next to the
screened file and into the adapter's lineage. Pure Python.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError
from candor.jsonl import json_objects
from candor.prompts import normalize_text
from candor.retrain.loop_params import PoisoningParams
from candor.retrain.pairs import flag_target

NO_KEY = "(no key)"
REQUIRED_FIELDS = ("flag_id", "verdict", "question", "contexts", "review_status")
VERDICTS = ("hallucination", "should_have_refused", "wrong_refusal", "correct")


def read_flags(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``candor feedback export`` file, checked for the fields the loop needs."""
    rows = []
    for n, row in json_objects(path):
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise InvalidInputError(f"{path}:{n}: missing {missing} (is this a `candor feedback export` file?)")
        if row["verdict"] not in VERDICTS:
            raise InvalidInputError(f"{path}:{n}: unknown verdict {row['verdict']!r}")
        rows.append(row)
    return rows


def flagger(row: dict[str, Any]) -> str:
    return row.get("api_key_id") or NO_KEY


def prompt_key(row: dict[str, Any]) -> str:
    """Identity of the prompt the model saw: question, kept history and context texts, normalised."""
    parts = [
        normalize_text(row["question"]),
        [normalize_text(t.get("content", "")) for t in row.get("history") or []],
        [normalize_text(c.get("text") or "") for c in row["contexts"]],
    ]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def _consistent(targets: Iterable[tuple[str, str | None]]) -> bool:
    """Targets agree: all refuse, or all answer with at most one known answer text."""
    targets = list(targets)
    kinds = {t[0] for t in targets}
    if len(kinds) > 1:
        return False
    texts = {t[1] for t in targets if t[1] is not None}
    return len(texts) <= 1


@dataclass
class Screened:
    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {flag_id, reason, detail}
    conflicts: list[list[str]] = field(default_factory=list)
    per_key: dict[str, dict[str, int]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "input": len(self.kept) + len(self.dropped),
            "kept": len(self.kept),
            "kept_flag_ids": [r["flag_id"] for r in self.kept],
            "dropped_by_reason": dict(sorted(Counter(d["reason"] for d in self.dropped).items())),
            "dropped": self.dropped,
            "conflicts": self.conflicts,
            "per_key": self.per_key,
        }


def screen_flags(rows: Sequence[dict[str, Any]], params: PoisoningParams, min_recall: float = 0.8) -> Screened:
    """Apply the four rules above, in that order; deterministic for the same rows.

    Targets are compared as the pairs builder will read them (``flag_target``,
    with the same ``min_recall``): a hallucination flag with an unsupported
    correction and one without a correction both ask for a refusal.
    """

    def target(row: dict[str, Any]) -> tuple[str, str | None]:
        return flag_target(row, min_recall).key

    rows = sorted(rows, key=lambda r: r["flag_id"])
    dropped: list[dict[str, Any]] = []
    per_key: dict[str, dict[str, int]] = defaultdict(lambda: {"seen": 0, "kept": 0})

    approved = []
    for r in rows:
        per_key[flagger(r)]["seen"] += 1
        if r["review_status"] != "approved":
            dropped.append({"flag_id": r["flag_id"], "reason": "not_approved", "detail": r["review_status"]})
        else:
            approved.append(r)

    capped, used = [], Counter()
    for r in approved:
        who = flagger(r)
        if used[who] >= params.max_flags_per_key:
            dropped.append({"flag_id": r["flag_id"], "reason": "over_key_cap", "detail": who})
            continue
        used[who] += 1
        capped.append(r)

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in capped:
        groups[prompt_key(r)].append(r)
    kept, conflicts = [], []
    for members in groups.values():
        if params.drop_conflicts and not _consistent(target(m) for m in members):
            ids = [m["flag_id"] for m in members]
            conflicts.append(ids)
            for m in members:
                dropped.append({"flag_id": m["flag_id"], "reason": "conflict", "detail": ",".join(ids)})
            continue
        seen: dict[tuple[str, str | None], str] = {}
        for m in members:
            t = target(m)
            if t in seen:
                dropped.append({"flag_id": m["flag_id"], "reason": "duplicate", "detail": seen[t]})
                continue
            seen[t] = m["flag_id"]
            kept.append(m)
    kept.sort(key=lambda r: r["flag_id"])
    for r in kept:
        per_key[flagger(r)]["kept"] += 1
    dropped.sort(key=lambda d: d["flag_id"])
    return Screened(kept, dropped, sorted(conflicts), dict(sorted(per_key.items())))
