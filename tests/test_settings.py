"""Settings: env prefix, readable errors, derived paths."""

import pytest

from candor.settings import SettingsError, get_settings, load_settings


def test_env_prefix_and_derived_paths(settings, monkeypatch, tmp_path):
    assert settings.data_dir == tmp_path / "var"
    assert settings.resolved_chroma_path == tmp_path / "var" / "chroma"
    assert settings.resolved_database_url.startswith("sqlite:///")
    monkeypatch.setenv("CANDOR_CHROMA_URL", "http://127.0.0.1:9")
    assert load_settings().chroma_url == "http://127.0.0.1:9"


def test_blank_optional_values_mean_unset(settings, monkeypatch):
    monkeypatch.setenv("CANDOR_DATABASE_URL", "  ")
    assert load_settings().database_url is None


def test_validation_errors_name_the_variable(settings, monkeypatch):
    monkeypatch.setenv("CANDOR_TOP_K", "zero")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "CANDOR_TOP_K" in str(err.value)
    monkeypatch.delenv("CANDOR_TOP_K")
    with pytest.raises(SettingsError, match="chunk_overlap"):
        load_settings(chunk_size=64, chunk_overlap=64)


def test_dotenv_file_is_read(settings, monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("CANDOR_TOP_K=7\n")
    assert load_settings().top_k == 7


def test_cli_reports_bad_settings_without_traceback(settings, monkeypatch, capsys):
    from candor.cli.main import main

    monkeypatch.setenv("CANDOR_API_PORT", "99999999")
    get_settings.cache_clear()
    code = main(["ask", "hello"])
    err = capsys.readouterr().err
    assert code == 2 and "CANDOR_API_PORT" in err and "Traceback" not in err
