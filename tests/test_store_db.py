"""Error handling of the write path (unit tests with a fake failing unit of work)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from candor.errors import InvalidInputError, UnavailableError
from candor.feedback.db import make_engine, run_write, safe_url


@pytest.fixture
def engine(settings):
    e = make_engine(settings)
    yield e
    e.dispose()


def _locked() -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))


def test_lock_conflicts_are_retried(engine):
    calls = []

    def work(session):
        calls.append(1)
        if len(calls) < 3:
            raise _locked()
        return "done"

    assert run_write(engine, work) == "done" and len(calls) == 3


def test_persistent_lock_becomes_unavailable(engine):
    calls = []

    def work(session):
        calls.append(1)
        raise _locked()

    with pytest.raises(UnavailableError, match="locked by other writers"):
        run_write(engine, work, attempts=2)
    assert len(calls) == 2


def test_integrity_errors_are_invalid_input_and_not_retried(engine):
    calls = []

    def work(session):
        calls.append(1)
        raise IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("UNIQUE constraint failed: flags.id"))

    with pytest.raises(InvalidInputError, match="UNIQUE"):
        run_write(engine, work)
    assert len(calls) == 1


def test_safe_url_hides_passwords():
    assert "s3cret" not in safe_url("postgresql+psycopg://u:s3cret@h:5432/db")
    assert safe_url("not a url") == "<invalid URL>"
