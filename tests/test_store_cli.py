"""`candor db|keys|feedback ...` end to end through the CLI root (real store, both backends)."""

from __future__ import annotations

import json

import pytest
from fixtures.store import answer_record, backdate

from candor.cli.main import main
from candor.errors import NotFoundError
from candor.feedback.migrate import head_revision
from candor.feedback.store import AnswerStore
from candor.settings import get_settings


@pytest.fixture
def cli(store_settings, monkeypatch, capsys):
    """Run `candor ...` in-process against the parametrized database; returns (exit code, stdout, stderr)."""
    if store_settings.database_url:
        monkeypatch.setenv("CANDOR_DATABASE_URL", store_settings.database_url)
    get_settings.cache_clear()

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    get_settings.cache_clear()


@pytest.fixture
def cli_store(store_settings):
    s = AnswerStore(store_settings)
    yield s
    s.close()


def test_db_upgrade_is_idempotent(cli):
    head = head_revision()
    code, out, _ = cli("db", "upgrade")
    assert code == 0 and f"(empty) -> {head}" in out
    code, out, _ = cli("db", "upgrade")
    assert code == 0 and f"already at {head}" in out
    code, out, _ = cli("db", "current")
    assert code == 0 and "up to date" in out
    code, out, _ = cli("db", "downgrade", "base", "--yes")
    assert code == 0 and f"{head} -> (empty)" in out
    code, out, _ = cli("db", "current")
    assert "needs `candor db upgrade`" in out


def test_keys_create_list_revoke(cli, cli_store):
    code, out, _ = cli("keys", "create", "alice", "--role", "user", "-c", "docs", "--json")
    assert code == 0
    created = json.loads(out)
    assert created["secret"].startswith("cnd_") and created["collections"] == ["docs"] and not created["trusted"]
    assert cli_store.authenticate(created["secret"]).id == created["id"]
    code, out, err = cli("keys", "create", "ops", "--role", "admin")
    assert code == 0 and "secret: cnd_" in out and "trusted" in out and "only its hash" in err
    code, out, _ = cli("keys", "list")
    assert code == 0 and "alice" in out and "ops" in out and created["secret"] not in out
    code, out, _ = cli("keys", "revoke", created["id"])
    assert code == 0 and "revoked" in out
    assert cli_store.authenticate(created["secret"]) is None
    code, _, err = cli("keys", "create", "x", "--role", "root")
    assert code == 2 and "unknown role" in err
    code, _, err = cli("keys", "revoke", "01J000000000000000000000ZZ")
    assert code == 2 and "not found" in err


def test_feedback_list_show_review_export(cli, cli_store, tmp_path):
    key, _ = cli_store.create_key("u", "user", None, False)
    a1 = cli_store.log_answer(answer_record(question="Who founded the Normans?"))
    a2 = cli_store.log_answer(answer_record(question="What is oxygen?", api_key_id=key))
    cli_store.add_feedback(a1, "hallucination", correction="Rollo")
    pending = cli_store.add_feedback(a2, "hallucination", api_key_id=key)

    code, out, _ = cli("feedback", "list")
    assert code == 0 and out.index(a2) < out.index(a1) and "hallucination" in out
    code, out, _ = cli("feedback", "list", "--flagged", "--limit", "1")
    assert code == 0 and a2 in out and a1 not in out and "--cursor" in out
    code, out, _ = cli("feedback", "list", "--json", "--key", key)
    assert [a["id"] for a in json.loads(out)["items"]] == [a2]
    code, out, _ = cli("feedback", "show", a1)
    assert code == 0 and "Who founded the Normans?" in out and "in prompt" in out and "dropped" in out
    assert "Rollo" in out
    code, out, _ = cli("feedback", "show", a1, "--json")
    assert json.loads(out)["flags"][0]["correction"] == "Rollo"

    target = tmp_path / "flags.jsonl"
    code, out, _ = cli("feedback", "export", "--out", str(target))
    assert code == 0 and "wrote 1 flag" in out
    assert [json.loads(x)["answer_id"] for x in target.read_text().splitlines()] == [a1]

    code, out, _ = cli("feedback", "review")
    assert code == 0 and pending.id in out and "What is oxygen?" in out
    code, out, _ = cli("feedback", "review", pending.id, "--approve", "--reviewer", "ana")
    assert code == 0 and "approved" in out
    code, out, _ = cli("feedback", "review")
    assert "no flags waiting" in out
    code, out, _ = cli("feedback", "export", "--out", "-")
    assert code == 0 and [json.loads(x)["answer_id"] for x in out.splitlines()] == [a1, a2]
    code, out, _ = cli("feedback", "stats", "--json")
    assert code == 0 and json.loads(out)[0]["flags"] == 2

    code, _, err = cli("feedback", "show", "01J000000000000000000000ZZ")
    assert code == 2 and "not found" in err
    code, _, err = cli("feedback", "list", "--verdict", "lies")
    assert code == 2 and "unknown verdict" in err
    code, _, err = cli("feedback", "review", pending.id)
    assert code == 2 and "--approve or --reject" in err


def test_feedback_export_default_path(cli, cli_store, store_settings):
    cli_store.add_feedback(cli_store.log_answer(answer_record()), "hallucination")
    code, out, _ = cli("feedback", "export")
    path = store_settings.data_dir / "feedback" / "flags.jsonl"
    assert code == 0 and str(path) in out and len(path.read_text().splitlines()) == 1


def test_purge_and_erase_key(cli, cli_store):
    key, secret = cli_store.create_key("gone", "user", None, False)
    old = cli_store.log_answer(answer_record())
    mine = cli_store.log_answer(answer_record(api_key_id=key))
    backdate(cli_store, old, days=100)
    code, _, err = cli("feedback", "purge")
    assert code == 2 and "--older-than" in err
    code, out, _ = cli("feedback", "purge", "--older-than", "90d", "--dry-run")
    assert code == 0 and "would delete 1 answer" in out
    code, _, err = cli("feedback", "purge", "--older-than", "90d")  # no terminal, no --yes
    assert code == 2 and "--yes" in err
    assert cli_store.get_answer(old).id == old  # nothing deleted
    code, out, _ = cli("feedback", "purge", "--older-than", "90d", "--yes")
    assert code == 0 and "deleted 1 answer" in out
    code, _, err = cli("feedback", "purge", "--older-than", "soon")
    assert code == 2 and "invalid duration" in err
    code, out, _ = cli("feedback", "erase-key", key, "--yes")
    assert code == 0 and "erased 1 answer" in out
    assert cli_store.authenticate(secret) is None
    assert [a.id for a in cli_store.list_answers().items] == []
    with pytest.raises(NotFoundError):
        cli_store.get_answer(mine)


def test_every_command_has_help(cli):
    for argv in (
        ["db", "--help"],
        ["db", "upgrade", "--help"],
        ["db", "downgrade", "--help"],
        ["db", "current", "--help"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["keys", "list", "--help"],
        ["keys", "revoke", "--help"],
        ["feedback", "--help"],
        ["feedback", "list", "--help"],
        ["feedback", "show", "--help"],
        ["feedback", "review", "--help"],
        ["feedback", "export", "--help"],
        ["feedback", "purge", "--help"],
        ["feedback", "erase-key", "--help"],
        ["feedback", "stats", "--help"],
    ):
        code, out, _ = cli(*argv)
        assert code == 0 and "Usage" in out, argv


def test_usage_errors_are_a_message_and_exit_2_never_a_traceback(capsys):
    # typer vendors click: its usage errors are not click's own classes
    assert main(["eval", "-c", "handbook"]) == 2
    err = capsys.readouterr().err
    assert "No such option: -c" in err and "Traceback" not in err
    assert main(["finetune", "eval-reader"]) == 2
    assert "Missing argument" in capsys.readouterr().err
