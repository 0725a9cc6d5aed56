"""Schema migrations, database errors, and what the wheel must ship."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fixtures.core import REPO_ROOT
from fixtures.store import answer_record

from candor.errors import InvalidInputError, UnavailableError
from candor.feedback.migrate import MIGRATIONS_DIR, head_revision
from candor.feedback.models import Base
from candor.feedback.store import AnswerStore


def test_migrated_schema_matches_the_models(store):
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == [], f"models.py and the migrations differ: add a migration: {diffs}"


def test_downgrade_and_upgrade_again(store):
    store.log_answer(answer_record())
    head = head_revision()
    assert store.downgrade("base") == (head, None)
    assert store.schema_revision() == (None, head)
    assert store.migrate() == (None, head)
    assert store.list_answers().items == []


def test_verifier_refusals_are_logged_and_survive_a_downgrade(store):
    """0002 lets the verifier be a refusal layer; going back to 0001 keeps the row as a threshold refusal.
    Neither direction may lose an answer's chunks or its flags (SQLite rebuilds the table to alter it)."""
    rec = answer_record(refused=True, refusal_layer="verifier", answer="I don't know based on the provided documents.")
    answer_id = store.log_answer(rec)
    flag = store.add_feedback(answer_id, "correct")
    n_chunks = len(rec["chunks"])
    assert n_chunks > 0 and len(store.get_answer(answer_id).chunks) == n_chunks
    assert store.get_answer(answer_id).refusal_layer == "verifier"
    assert store.downgrade("0001") == (head_revision(), "0001")
    assert len(store.get_answer(answer_id).chunks) == n_chunks
    assert store.get_flag(flag.id).answer_id == answer_id
    store.migrate()
    after = store.get_answer(answer_id)
    assert after.refusal_layer == "threshold" and len(after.chunks) == n_chunks
    assert store.get_flag(flag.id).answer_id == answer_id


def test_first_use_migrates_by_default(store_settings):
    store = AnswerStore(store_settings)
    try:
        assert store.schema_revision() == (None, head_revision())
        assert store.list_answers().items == []  # no explicit migrate()
        assert store.schema_revision() == (head_revision(), head_revision())
    finally:
        store.close()


def test_without_auto_migrate_an_empty_database_says_what_to_run(store_settings):
    store = AnswerStore(store_settings.model_copy(update={"database_auto_migrate": False}))
    try:
        with pytest.raises(UnavailableError, match="run `candor db upgrade`"):
            store.list_answers()
        store.migrate()
        assert store.list_answers().items == []
    finally:
        store.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgres_is_unavailable_with_a_clear_message(settings):
    url = f"postgresql+psycopg://candor:s3cret@127.0.0.1:{_closed_port()}/candor"
    store = AnswerStore(settings.model_copy(update={"database_url": url, "db_connect_timeout_s": 2}))
    try:
        with pytest.raises(UnavailableError, match="127.0.0.1") as err:
            store.ping()
        assert "s3cret" not in str(err.value)
        with pytest.raises(UnavailableError, match="cannot use the answer log"):
            store.log_answer(answer_record())
    finally:
        store.close()


def test_unusable_sqlite_path_is_unavailable(settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UnavailableError, match="cannot create"):
        AnswerStore(settings.model_copy(update={"database_url": f"sqlite:///{blocker}/sub/candor.db"}))


@pytest.mark.parametrize("url", ["not a url", "mysql://u@h/db"])
def test_bad_database_url_is_invalid_input(settings, url):
    with pytest.raises(InvalidInputError):
        AnswerStore(settings.model_copy(update={"database_url": url}))


def test_default_database_is_sqlite_under_the_data_dir(settings):
    store = AnswerStore(settings)
    try:
        store.migrate()
        assert (settings.data_dir / "candor.db").exists()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == settings.db_busy_timeout_ms
    finally:
        store.close()


def test_migrations_ship_in_the_package():
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {"candor.feedback.migrations", "candor.feedback.migrations.versions"} <= set(tool["packages"])
    assert "*.mako" in tool["package-data"]["*"]
    assert (MIGRATIONS_DIR / "script.py.mako").exists() and (MIGRATIONS_DIR / "env.py").exists()
    versions = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))
    assert versions[0] == "0001_initial.py"
    assert Path(MIGRATIONS_DIR).is_relative_to(REPO_ROOT / "feedback")


def test_a_schema_dropped_under_a_running_store_is_unavailable(store, store_settings):
    other = AnswerStore(store_settings)
    try:
        other.downgrade("base")  # e.g. an operator rolled back while the API ran
    finally:
        other.close()
    with pytest.raises(UnavailableError, match="has no tables .*candor db upgrade"):
        store.log_answer(answer_record())
