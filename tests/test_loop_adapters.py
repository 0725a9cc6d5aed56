"""The adapter registry: versions by content hash, promote / rollback, lineage, the CLI."""

from __future__ import annotations

import json
import os

import pytest
from fixtures.loop import write_adapter

from candor.errors import ConflictError, InvalidInputError, NotFoundError
from candor.retrain.adapters import AdapterRegistry, adapter_version, ensure_current, read_serving


@pytest.fixture
def registry(settings) -> AdapterRegistry:
    return AdapterRegistry.for_settings(settings)


def test_version_is_the_model_servers_content_hash(tmp_path) -> None:
    from candor.model_server.adapters import adapter_version as server_version

    a = write_adapter(tmp_path / "a", b"weights")
    assert adapter_version(a) == server_version(a)
    assert adapter_version(write_adapter(tmp_path / "b", b"weights")) == adapter_version(a)
    assert adapter_version(write_adapter(tmp_path / "c", b"other")) != adapter_version(a)
    assert adapter_version(write_adapter(tmp_path / "d", b"weights", rank=8)) != adapter_version(a)


def test_register_copies_by_hash_and_is_idempotent(registry, tmp_path) -> None:
    src = write_adapter(tmp_path / "run" / "adapter", b"w1")
    (src / "checkpoints").mkdir()  # never copied
    v = registry.register(src, source="loop", parent=None, flag_ids=["f2", "f1"])
    assert v.path == registry.versions_dir / v.version and v.version == adapter_version(src)
    assert (v.path / "adapter_model.safetensors").read_bytes() == b"w1"
    assert not (v.path / "checkpoints").exists()
    assert v.flag_ids == ["f1", "f2"]
    card = (v.path / "README.md").read_text()
    assert "## Candor lineage" in card and "`f1`" in card and "`f2`" in card
    again = registry.register(src, source="loop")
    assert again.version == v.version and len(registry.list()) == 1


def test_register_keeps_a_model_card_and_adds_lineage(registry, tmp_path) -> None:
    src = write_adapter(tmp_path / "a", b"w")
    (src / "README.md").write_text("# Refusal adapter\n\nTrained on SQuAD 2.0.\n")
    card = (registry.register(src, flag_ids=["f9"]).path / "README.md").read_text()
    assert card.startswith("# Refusal adapter") and "Trained on SQuAD 2.0." in card and "`f9`" in card


def test_register_rejects_a_folder_that_is_no_adapter(registry, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="not a PEFT adapter"):
        registry.register(tmp_path / "empty")


def test_promote_and_rollback_walk_a_stack(registry, tmp_path) -> None:
    a, b, c = (registry.register(write_adapter(tmp_path / n, n.encode())) for n in "abc")
    assert registry.current() is None
    registry.promote(a.version)
    registry.promote(b.version)
    registry.promote(c.version)
    assert registry.current().version == c.version and registry.previous().version == b.version
    assert os.readlink(registry.current_link) == f"versions/{c.version}"
    restored, replaced = registry.rollback(note="flags went up")
    assert (restored.version, replaced.version) == (b.version, c.version)
    assert registry.rollback()[0].version == a.version
    assert (registry.current_link / "adapter_model.safetensors").read_bytes() == b"a"
    with pytest.raises(ConflictError, match="nothing to roll back"):
        registry.rollback()
    actions = [h["action"] for h in registry.history()]
    assert actions.count("promote") == 3 and actions.count("rollback") == 2


def test_promote_twice_is_a_no_op_and_guards_against_a_changed_current(registry, tmp_path) -> None:
    a = registry.register(write_adapter(tmp_path / "a", b"a"))
    b = registry.register(write_adapter(tmp_path / "b", b"b"))
    registry.promote(a.version)
    registry.promote(a.version)
    assert registry.previous() is None
    with pytest.raises(ConflictError, match="changed meanwhile"):
        registry.promote(b.version, expect_current=None)
    assert registry.current().version == a.version


def test_versions_resolve_by_unique_prefix(registry, tmp_path) -> None:
    v = registry.register(write_adapter(tmp_path / "a", b"a"))
    assert registry.get(v.version[:6]).version == v.version
    assert registry.get(v.sha256[:10]).version == v.version
    with pytest.raises(NotFoundError):
        registry.get("zzzz")


def test_serving_record_is_readable_without_the_registry(registry, settings, tmp_path) -> None:
    v = registry.register(write_adapter(tmp_path / "a", b"a"))
    assert read_serving(settings) is None
    registry.mark_serving(v.version, "refusal", "http://127.0.0.1:8080")
    rec = read_serving(settings)
    assert rec["version"] == v.version and rec["name"] == "refusal" and rec["sha256"] == v.sha256


def test_the_configured_default_adapter_becomes_version_one(tmp_path, monkeypatch, settings) -> None:
    from candor.settings import load_settings

    default = write_adapter(tmp_path / "models" / "candor-refusal", b"shipped")
    s = load_settings(data_dir=settings.data_dir, adapter_path=default)
    v = ensure_current(s)
    assert v.source == "default" and v.version == adapter_version(default)
    assert ensure_current(s).version == v.version  # once


def test_cli_list_promote_rollback(registry, tmp_path, capsys) -> None:
    from candor.cli.main import main

    a = registry.register(write_adapter(tmp_path / "a", b"a"))
    b = registry.register(write_adapter(tmp_path / "b", b"b"))
    assert main(["adapters", "promote", a.version[:8], "--no-swap"]) == 0
    assert main(["adapters", "promote", b.version, "--no-swap"]) == 0
    capsys.readouterr()
    assert main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{b.version}" in out and "[current]" in out
    assert main(["adapters", "rollback", "--no-swap"]) == 0
    assert f"current: {a.version}" in capsys.readouterr().out
    assert main(["adapters", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["current"] == a.version and len(listing["versions"]) == 2
    assert main(["adapters", "rollback", "--no-swap"]) == 3  # nothing left: a clear error, exit code 3
    assert "nothing to roll back" in capsys.readouterr().err
