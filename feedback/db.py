"""Engine, sessions and error translation for the answer log.

SQLite (the default, a file under the data directory) is tuned for many
writer processes: WAL so readers never block the writer, a busy timeout so a
writer waits for the lock instead of failing, foreign keys on, and
``BEGIN IMMEDIATE`` for write transactions so two writers never both read and
then deadlock on the upgrade to a write lock (which SQLite reports as
"database is locked" at once, whatever the timeout). Postgres (by URL, psycopg 3)
needs none of that. Every database error that reaches a caller becomes a
``CandorError`` with a message a person can act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from candor.errors import CandorError, InvalidInputError, UnavailableError
from candor.settings import Settings

T = TypeVar("T")
_WRITE = "candor_write"
DATABASE_DOWN = "the answer log database is unavailable; try again shortly"


def safe_url(url: str | URL) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def make_engine(settings: Settings) -> Engine:
    """An engine for ``settings.resolved_database_url`` with Candor's per-backend tuning."""
    raw = settings.resolved_database_url
    try:
        url = make_url(raw)
    except ArgumentError:
        raise InvalidInputError(
            f"CANDOR_DATABASE_URL is not a database URL: {raw!r} (e.g. postgresql+psycopg://user:pass@host:5432/candor)"
        ) from None
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, settings)
    if url.get_backend_name() == "postgresql":
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")  # the driver we ship
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_timeout=settings.db_busy_timeout_ms / 1000,
            connect_args={"connect_timeout": max(1, int(settings.db_connect_timeout_s))},
        )
    raise InvalidInputError(
        f"unsupported answer-log database {url.get_backend_name()!r}: use sqlite:/// or postgresql+psycopg://"
    )


def _sqlite_engine(url: URL, settings: Settings) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        path = Path(url.database)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(
                f"cannot create the answer log folder {path.parent}: {exc}", public=DATABASE_DOWN
            ) from None
    busy_ms = settings.db_busy_timeout_ms
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=busy_ms / 1000,
        connect_args={"timeout": busy_ms / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses no committed page
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def translate(exc: SQLAlchemyError, engine: Engine) -> CandorError:
    """A database exception as the error a person should see."""
    where = safe_url(engine.url)
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    low = detail.lower()
    if "no such table" in low or ("relation" in low and "does not exist" in low):
        return UnavailableError(
            f"the answer log at {where} has no tables (or an old schema): run `candor db upgrade`",
            public=DATABASE_DOWN,
        )
    if "database is locked" in low or "database is busy" in low:
        return UnavailableError(
            f"the answer log at {where} stayed locked by other writers longer than the busy "
            "timeout (CANDOR_DB_BUSY_TIMEOUT_MS); try again",
            public="the answer log database is busy; try again shortly",
        )
    if isinstance(exc, IntegrityError):
        return InvalidInputError(f"the answer log refused the change: {detail}")
    if isinstance(exc, DataError):
        # The value, not the database, is the problem (a NUL in text on Postgres, a number out of
        # range): the caller's input error, never an outage to retry.
        return InvalidInputError(f"the answer log cannot store this value: {detail}")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return UnavailableError(f"lost the connection to the answer log at {where}: {detail}", public=DATABASE_DOWN)
    return UnavailableError(f"cannot use the answer log database at {where}: {detail}", public=DATABASE_DOWN)


def _retryable(exc: SQLAlchemyError) -> bool:
    low = str(getattr(exc, "orig", exc)).lower()
    return any(s in low for s in ("database is locked", "deadlock detected", "could not serialize", "database is busy"))


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A short read-only transaction; database errors become CandorErrors."""
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except CandorError:
        raise
    except SQLAlchemyError as exc:
        raise translate(exc, engine) from exc


def run_write(engine: Engine, work: Callable[[Session], T], attempts: int = 4) -> T:
    """Run ``work`` in one write transaction (BEGIN IMMEDIATE on SQLite), retried on lock conflicts.

    ``work`` must be safe to run again from scratch: everything it did is
    rolled back before a retry.
    """
    write_engine = engine.execution_options(**{_WRITE: True})
    for attempt in range(1, attempts + 1):
        try:
            with Session(write_engine, expire_on_commit=False) as session, session.begin():
                return work(session)
        except CandorError:
            raise
        except SQLAlchemyError as exc:
            if attempt < attempts and _retryable(exc):
                time.sleep(0.05 * attempt)
                continue
            raise translate(exc, engine) from exc
    raise AssertionError("unreachable")  # pragma: no cover
