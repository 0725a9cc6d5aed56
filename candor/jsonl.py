"""JSON Lines and JSON files in and out: the one place Candor reads and writes them.

Reading: a bad line is an ``InvalidInputError`` naming the file and the line number, so a user can find
and fix it. Blank lines are skipped. Writing is atomic (a temporary file in the same folder, fsync,
rename: a reader never sees half a file) and byte-stable (sorted keys, UTF-8 kept), so DVC sees a
change only when the content changed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError


def json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of ``path``."""
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InvalidInputError(f"{path}:{n}: expected a JSON object")
            yield n, row


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: strict JSON has neither (DVC and strict
    parsers reject them; an undefined metric, e.g. the AUROC of a set with one kind of question, is null)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSONL file this project wrote (no per-line checks: see ``json_objects``)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def dumps(row: Any, *, sort_keys: bool = True, compact: bool = False) -> str:
    """One JSONL line (without its newline). ``compact``: no spaces after the separators."""
    separators = (",", ":") if compact else None
    return json.dumps(row, ensure_ascii=False, sort_keys=sort_keys, separators=separators)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, write: Any, private: bool = False) -> Any:
    """``private``: readable by the owner only (0600); else the mode a plain ``open`` would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if not private:
            os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            result = write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def write_jsonl(
    path: Path, rows: Iterable[Any], *, sort_keys: bool = True, compact: bool = False, private: bool = False
) -> int:
    """Write ``rows`` to ``path``, one JSON value a line, atomically; returns how many. ``private``: mode 0600
    (the flag export: users' questions and answers)."""

    def write(fh: Any) -> int:
        n = 0
        for row in rows:
            fh.write(dumps(row, sort_keys=sort_keys, compact=compact) + "\n")
            n += 1
        return n

    return _write_atomic(path, write, private)


def write_json(path: Path, obj: Any) -> None:
    """One JSON document (indented, sorted keys), atomically."""
    _write_atomic(path, lambda fh: fh.write(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n"))
