"""Schema migrations, run from Python (no alembic.ini): `candor db upgrade`, AnswerStore.migrate().

The upgrade runs in one transaction on a write connection: on SQLite that is
``BEGIN IMMEDIATE`` and on Postgres an advisory lock, so four API workers
starting at once migrate once and the other three find the schema at head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_PG_LOCK_KEY = 0x43414E44  # "CAND": any constant shared by all Candor processes


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _run(engine: Engine, step: Callable[[Config, str], None], revision: str) -> tuple[str | None, str | None]:
    write = engine.execution_options(candor_write=True)
    with write.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying it and dropping the original; with foreign keys on, that
            # DROP deletes the rows and cascades to answer_chunks and flags. The pragma only takes
            # effect outside a transaction, so it is set on the raw (autocommit) connection first.
            _sqlite_pragma(conn, "PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
                before = MigrationContext.configure(conn).get_current_revision()
                step(alembic_config(conn), revision)
                after = MigrationContext.configure(conn).get_current_revision()
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:  # raising rolls the whole migration back
                        raise RuntimeError(f"migration to {revision} left {len(broken)} dangling references")
        finally:
            if sqlite:
                _sqlite_pragma(conn, "PRAGMA foreign_keys = ON")
    return before, after


def _sqlite_pragma(conn: Connection, statement: str) -> None:
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(statement)
    finally:
        cur.close()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to ``revision``; returns (revision before, revision after)."""
    return _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Downgrade to ``revision`` ('base' drops every table: the data goes with it)."""
    return _run(engine, command.downgrade, revision)
