"""Alembic environment for the answer log.

Candor runs migrations programmatically (``candor.feedback.migrate``), handing
over an open connection inside a transaction: the whole upgrade commits or
rolls back at once, on SQLite too. Used from the ``alembic`` command line
instead (for ``alembic revision --autogenerate`` while developing), it connects
with Candor's settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from candor.feedback.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite's ALTER TABLE is limited
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported: run `candor db upgrade`")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from candor.feedback.db import make_engine
    from candor.settings import get_settings

    engine = make_engine(get_settings())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


_main()
