"""`AnswerStore`: the one object the API, the answer core, the CLI and the retraining loop use.

It owns an engine (SQLite under the data directory by default, Postgres by
``CANDOR_DATABASE_URL``) and runs each call in its own short transaction:
reads in a plain transaction, writes in a write transaction (``BEGIN
IMMEDIATE`` on SQLite) that is retried on lock conflicts. It returns pydantic
models from ``schemas.py``, never ORM objects, and raises only CandorErrors:
``NotFoundError`` for unknown ids, ``InvalidInputError`` for bad input,
``ConflictError`` for a duplicate answer id, ``UnavailableError`` when the
database cannot be reached or has no schema. Thread-safe; one per process.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from candor.errors import InvalidInputError, UnavailableError
from candor.feedback import answers as _answers
from candor.feedback import export as _export
from candor.feedback import flags as _flags
from candor.feedback import keys as _keys
from candor.feedback import migrate as _migrate
from candor.feedback import retention as _retention
from candor.feedback import stats as _stats
from candor.feedback import thresholds as _thresholds
from candor.feedback.db import DATABASE_DOWN, make_engine, read_session, run_write, safe_url, translate
from candor.feedback.ids import new_id
from candor.feedback.schemas import (
    AdapterStats,
    ApiKey,
    ErasureResult,
    Flag,
    NewAnswer,
    NewFailure,
    PurgeResult,
    ReviewStatus,
    Verdict,
)
from candor.feedback.thresholds import CollectionThreshold
from candor.jsonl import write_jsonl
from candor.settings import Settings


def _aware(at: datetime | None, what: str) -> datetime | None:
    if at is not None and at.tzinfo is None:
        raise InvalidInputError(f"{what} must carry a time zone (UTC)")
    return at


def _reads(fn: Any, *, write: bool = False, times: tuple[str, ...] = ()) -> Any:
    """A store method for ``fn(session, ...)`` of ``answers`` or ``flags``: the same arguments and docstring
    (``inspect.signature`` shows them), run in a read session or, with ``write``, in one write transaction.
    ``times``: datetime arguments that must carry a time zone."""

    @functools.wraps(fn)
    def method(self: AnswerStore, *args: Any, **kwargs: Any) -> Any:
        for name in times:
            _aware(kwargs.get(name), name)
        return (self._write if write else self._read)(fn, *args, **kwargs)

    return method


class AnswerStore:
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings)
        self._schema_ok = False
        self._schema_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return safe_url(self.engine.url)

    # --- schema and health --------------------------------------------------
    def migrate(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Upgrade the schema (idempotent; safe from several processes at once)."""
        try:
            result = _migrate.upgrade(self.engine, revision)
        except SQLAlchemyError as exc:
            raise translate(exc, self.engine) from exc
        if revision == "head":
            self._schema_ok = True
        return result

    def downgrade(self, revision: str) -> tuple[str | None, str | None]:
        """Downgrade the schema (to roll back a release); 'base' drops every table and its data."""
        try:
            result = _migrate.downgrade(self.engine, revision)
        except SQLAlchemyError as exc:
            raise translate(exc, self.engine) from exc
        self._schema_ok = False
        return result

    def schema_revision(self) -> tuple[str | None, str | None]:
        """(the database's revision, the code's head revision)."""
        try:
            return _migrate.current_revision(self.engine), _migrate.head_revision()
        except SQLAlchemyError as exc:
            raise translate(exc, self.engine) from exc

    def _ready(self) -> None:
        if self._schema_ok:
            return
        with self._schema_lock:
            if self._schema_ok:
                return
            if self.settings.database_auto_migrate:
                self.migrate()
                return
            current, head = self.schema_revision()
            if current != head:
                raise UnavailableError(
                    f"the answer log at {self.url} is at schema {current or 'none'}, this Candor needs "
                    f"{head}: run `candor db upgrade`",
                    public=DATABASE_DOWN,
                )
            self._schema_ok = True

    def ping(self) -> None:
        """Raise UnavailableError unless the database answers (for /readyz)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise translate(exc, self.engine) from exc

    def close(self) -> None:
        self.engine.dispose()

    def _read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._ready()
        with read_session(self.engine) as session:
            return fn(session, *args, **kwargs)

    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._ready()
        return run_write(self.engine, lambda session: fn(session, *args, **kwargs))

    # --- answers --------------------------------------------------------------
    @staticmethod
    def new_answer_id() -> str:
        """An id to hand out before the answer is logged (e.g. in a stream's first event)."""
        return new_id()

    def log_answer(self, record: NewAnswer | Mapping[str, Any]) -> str:
        """Log an answer or refusal with its chunks, in one transaction; returns its id."""
        rec = _answers.coerce(record, NewAnswer)
        return self._write(_answers.log_answer, rec)

    def log_failure(self, record: NewFailure | Mapping[str, Any]) -> str:
        """Log a question that got no answer (status 'failed' and the error); returns its id."""
        rec = _answers.coerce(record, NewFailure)
        return self._write(_answers.log_failure, rec)

    # the answer log's and the flags' queries, with their own arguments (less the session)
    get_answer = _reads(_answers.get_answer)
    list_answers = _reads(_answers.list_answers, times=("since", "until"))

    # --- flags -----------------------------------------------------------------
    add_feedback = _reads(_flags.add_feedback, write=True)
    get_flag = _reads(_flags.get_flag)
    list_flags = _reads(_flags.list_flags, times=("since",))

    def review_flags(
        self,
        flag_ids: Sequence[str],
        status: str | ReviewStatus,
        reviewer: str | None = None,
        note: str | None = None,
    ) -> list[Flag]:
        """Approve or reject flags (pending ones from untrusted keys, or revisit any)."""
        return self._write(_flags.review_flags, list(flag_ids), status, reviewer=reviewer, note=note)

    # --- export ----------------------------------------------------------------
    def export_flags(
        self,
        *,
        review_statuses: Sequence[str | ReviewStatus] = (ReviewStatus.APPROVED,),
        verdicts: Sequence[str | Verdict] | None = None,
        collections: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Flag rows for retraining in flag-id order, fetched in batches (short transactions).

        Only approved flags by default: pending flags from untrusted keys must
        not reach training before a review.
        """
        statuses = [_flags.parse_review_status(s) for s in review_statuses]
        _aware(since, "since")
        _aware(until, "until")
        after = None
        while True:
            batch = self._read(
                _export.export_batch,
                after=after,
                review_statuses=statuses,
                verdicts=verdicts,
                collections=collections,
                since=since,
                until=until,
            )
            yield from batch
            if len(batch) < _export.BATCH:
                return
            after = batch[-1]["flag_id"]

    def write_export(self, path: Path, **filters: Any) -> int:
        """Write ``export_flags(**filters)`` to ``path`` as JSONL, atomically; returns the row count."""
        return write_jsonl(path, self.export_flags(**filters), compact=True, private=True)

    # --- retention and erasure -----------------------------------------------------
    def count_older_than(self, age: timedelta) -> PurgeResult:
        answers, flags = self._read(_retention.count_older, datetime.now(UTC) - age)
        return PurgeResult(answers=answers, flags=flags)

    def purge_older_than(self, age: timedelta) -> PurgeResult:
        """Delete answers (with their chunks and flags) older than ``age``."""
        if age <= timedelta(0):
            raise InvalidInputError("the retention period must be positive")
        cutoff = datetime.now(UTC) - age
        total_a = total_f = 0
        while True:
            a, f = self._write(_retention.purge_batch, cutoff)
            total_a, total_f = total_a + a, total_f + f
            if a < _retention.BATCH:
                return PurgeResult(answers=total_a, flags=total_f)

    def erase_key(self, key_id: str) -> ErasureResult:
        """Erase everything a key produced (its answers, its flags, flags on its answers); revoke it.

        The key is revoked first so nothing new arrives while its data goes.
        The key row itself stays (revoked) so its id still resolves in audits.
        """
        key = self._write(_keys.revoke_key, key_id)
        flags = 0
        while True:
            n = self._write(_retention.erase_flags_batch, key_id)
            flags += n
            if n < _retention.BATCH:
                break
        answers = 0
        while True:
            a, f = self._write(_retention.erase_answers_batch, key_id)
            answers, flags = answers + a, flags + f
            if a < _retention.BATCH:
                break
        return ErasureResult(key_id=key.id, answers=answers, flags=flags, key_revoked=key.revoked_at is not None)

    # --- per-collection thresholds (``candor calibrate``) ---------------------------
    def get_collection_threshold(self, collection: str) -> CollectionThreshold | None:
        """The collection's calibrated threshold, or None (one primary-key read)."""
        return self._read(_thresholds.get_threshold, collection)

    def list_collection_thresholds(self) -> list[CollectionThreshold]:
        return self._read(_thresholds.list_thresholds)

    def set_collection_threshold(self, value: CollectionThreshold) -> CollectionThreshold:
        """Insert or replace the collection's calibrated threshold."""
        return self._write(_thresholds.set_threshold, value)

    def clear_collection_threshold(self, collection: str) -> bool:
        return self._write(_thresholds.clear_threshold, collection)

    # --- metrics ------------------------------------------------------------------
    def adapter_stats(self, since: datetime | None = None) -> list[AdapterStats]:
        """Answers, refusals, failures and flags per adapter version."""
        return self._read(_stats.adapter_stats, since=_aware(since, "since"))

    # --- API keys -----------------------------------------------------------------
    def create_key(
        self, name: str, role: str = "user", collections: Sequence[str] | None = None, trusted: bool = False
    ) -> tuple[str, str]:
        """Create a key; returns (key_id, secret). The secret is not stored and cannot be shown again."""
        key, secret = self._write(_keys.create_key, name, role, collections, trusted)
        return key.id, secret

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key for a presented secret, or None."""
        return self._read(_keys.authenticate, secret)

    def get_key(self, key_id: str) -> ApiKey:
        return self._read(lambda s: _keys.key_out(_keys.get_key(s, key_id)))

    def revoke_key(self, key_id: str) -> ApiKey:
        return self._write(_keys.revoke_key, key_id)

    def list_keys(self, include_revoked: bool = True) -> list[ApiKey]:
        return self._read(_keys.list_keys, include_revoked=include_revoked)
