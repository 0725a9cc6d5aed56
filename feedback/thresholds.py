"""Per-collection refusal thresholds in the answer store (table ``collection_thresholds``, migration 0004).

Why the answer store and not the reader registry: the threshold belongs to a *collection* and is
calibrated from that collection's reviewed flags, which live here; every API replica reads the same
database (PostgreSQL at scale), while the registry is a folder on the machine that trains. The row names
the reader version it was calibrated on, so a new reader never inherits a threshold chosen for another
(``candor.decision.resolve_threshold`` falls back to the reader's validation threshold then).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from candor.decision import threshold_source
from candor.errors import InvalidInputError
from candor.feedback.models import CollectionThresholdRow

SOURCES = ("calibration", "loop")


@dataclass(frozen=True)
class CollectionThreshold:
    collection: str
    layer: str
    model: str  # the answerability model (folder @ weights digest, as the answer log names it) it holds for
    threshold: float
    source: str  # calibration (candor calibrate) | loop (candor retrain)
    flags: int
    over_refusal: float  # on the calibration flags, at this threshold
    hallucination_rate: float
    detail: dict[str, Any]
    created_at: datetime
    created_by: str | None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["created_at"] = self.created_at.isoformat().replace("+00:00", "Z")
        return out


def _out(row: CollectionThresholdRow) -> CollectionThreshold:
    return CollectionThreshold(
        row.collection,
        row.layer,
        row.model,
        row.threshold,
        row.source,
        row.flags,
        row.over_refusal,
        row.hallucination_rate,
        dict(row.detail or {}),
        row.created_at,
        row.created_by,
    )


def get_threshold(session: Session, collection: str) -> CollectionThreshold | None:
    row = session.get(CollectionThresholdRow, collection)
    return _out(row) if row is not None else None


def list_thresholds(session: Session) -> list[CollectionThreshold]:
    rows = session.execute(select(CollectionThresholdRow).order_by(CollectionThresholdRow.collection)).scalars()
    return [_out(r) for r in rows]


def set_threshold(session: Session, value: CollectionThreshold) -> CollectionThreshold:
    """Insert or replace a collection's threshold."""
    if not 0.0 <= value.threshold <= 1.0:
        raise InvalidInputError(f"a threshold is between 0 and 1, not {value.threshold}")
    if value.source not in SOURCES:
        raise InvalidInputError(f"threshold source must be one of {SOURCES}, not {value.source!r}")
    row = session.get(CollectionThresholdRow, value.collection) or CollectionThresholdRow(collection=value.collection)
    for name, v in value.__dict__.items():
        setattr(row, name, v)
    if row.created_at is None:
        row.created_at = datetime.now(UTC)
    session.add(row)
    session.flush()
    return _out(row)


def clear_threshold(session: Session, collection: str) -> bool:
    row = session.get(CollectionThresholdRow, collection)
    if row is None:
        return False
    session.delete(row)
    return True


def effective_threshold(
    settings: Any, layer: str, model: str, stored: float | None, record: CollectionThreshold | None
) -> dict[str, Any]:
    """What a collection's answerability layer applies and why: the threshold, its source (``calibration``,
    ``setting``, ``validation``), and the calibration on record (when, from how many flags, the trade-off
    chosen), which holds only for the model it was calibrated on."""
    applies = record is not None and record.model == model and record.layer == layer
    value, source = threshold_source(settings, layer, stored, record.threshold if applies else None)
    out: dict[str, Any] = {
        "layer": layer,
        "model": model,
        "threshold": value,
        "source": source,
        "validation_threshold": stored,
        "calibration": None,
    }
    if record is not None:
        d = record.detail or {}
        out["calibration"] = {
            "threshold": record.threshold,
            "applies": applies,
            "model": record.model,
            "source": record.source,
            "at": record.to_dict()["created_at"],
            "by": record.created_by,
            "flags": record.flags,
            "over_refusal": record.over_refusal,
            "hallucination_rate": record.hallucination_rate,
            "before": d.get("before"),
            "target": d.get("target"),
            "meets_target": d.get("meets_target"),
        }
        if not applies:
            out["calibration"]["note"] = (
                f"calibrated for {record.model}, not the {model} serving now: the model's own threshold applies "
                "until `candor calibrate` runs again"
            )
    return out
