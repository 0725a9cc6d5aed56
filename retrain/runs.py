"""The retraining runs' record: one JSON line per `candor retrain` run, beside the adapter registry.

`candor retrain` appends a line when a run ends, whatever its outcome (promoted, rejected by the gate,
nothing to do, failed): when it started and ended, its status, the gate's decision (verdict, reasons,
candidate and baseline versions) and the error of a failed run. The API's review routes
(``GET /v1/retrain/runs``) and the chat page's review tab read it newest first. A run that found another
one holding the lock never started and is not recorded.
"""

from __future__ import annotations

import fcntl
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from candor.retrain.adapters import AdapterRegistry
from candor.settings import Settings

RUNS_FILE = "runs.jsonl"
MAX_READ = 200


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def runs_path(settings: Settings) -> Path:
    return AdapterRegistry.for_settings(settings).root / RUNS_FILE


def record_run(
    settings: Settings, summary: dict[str, Any], started_at: str, error: BaseException | None = None
) -> dict[str, Any]:
    """Append one run to the record and return the line written."""
    decision = summary.get("decision") or None
    record = {
        "started_at": started_at,
        "finished_at": now_iso(),
        "status": "failed" if error is not None else summary.get("status", "unknown"),
        "exported_flags": summary.get("exported_flags"),
        "pairs": summary.get("pairs"),
        "decision": decision,
        "serving": (summary.get("serving") or {}).get("version"),
        "health": (summary.get("health") or {}).get("status"),
        "error": None if error is None else f"{type(error).__name__}: {error}",
    }
    path = runs_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return record


def read_runs(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The last ``limit`` runs, newest first (a damaged line is skipped, not fatal)."""
    path = runs_path(settings)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()[-max(1, min(limit, MAX_READ)) :]
    runs = []
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            runs.append(row)
    return runs
