"""Alembic migrations of the answer log; run them with `candor db upgrade` or AnswerStore.migrate()."""
