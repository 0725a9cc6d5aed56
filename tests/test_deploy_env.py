"""tests/deploy_env.py: Compose's interpolation and profiles, and compose_service_env(), which the
CI end-to-end run uses to start the API with the environment compose.yaml gives it."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_env import (
    LOOPBACK,
    ComposeError,
    compose_service_command,
    compose_service_env,
    find_service,
    interpolate,
    load_compose,
    read_env_file,
    referenced_variables,
)

from candor.settings import load_settings

PORTS = {"postgres": 55432, "chroma": 8001, "model-server": 8081, "tgi": 8082, "vllm": 8083}
VARIABLES = {"POSTGRES_PASSWORD": "pw"}


# --- interpolation, as the Compose Specification defines it ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "a"),
        ("$A/x", "a/x"),
        ("${UNSET}", ""),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${A:+r}", "r"),
        ("${EMPTY:+r}", ""),
        ("${EMPTY+r}", "r"),
        ("${UNSET+r}", ""),
        ("${UNSET:-${A}-${UNSET:-z}}", "a-z"),
        ("$${A} and $$", "${A} and $"),
        ('pg_isready -U "$${POSTGRES_USER}"', 'pg_isready -U "${POSTGRES_USER}"'),
        ("no variables", "no variables"),
    ],
)
def test_interpolation(text: str, expected: str) -> None:
    assert interpolate(text, {"A": "a", "EMPTY": ""}) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${P:?set P in .env}", "set P in .env"),
        ("${EMPTY:?needed}", "needed"),
        ("${UNSET?}", "is required"),
        ("${A", "unclosed"),
        ("${A:x}", "invalid interpolation"),
        ("cost: $5", "invalid interpolation format"),
    ],
)
def test_interpolation_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        interpolate(text, {"A": "a", "EMPTY": ""})


def test_required_variable_with_a_value_passes() -> None:
    assert interpolate("${P:?x}", {"P": "v"}) == "v"
    assert interpolate("${EMPTY?x}", {"EMPTY": ""}) == ""


def test_referenced_variables_include_nested_and_skip_escaped() -> None:
    assert referenced_variables({"a": ["${X:-${Y}}", "$Z", "$${NOT}"], "b": 1}) == {"X", "Y", "Z"}


def test_env_file_reader(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# comment\nA=1\n# B=2\nexport C='three'\nD=\"x y\"\nE=v # note\n\nnot a line\n")
    assert read_env_file(env) == {"A": "1", "C": "three", "D": "x y", "E": "v"}
    assert read_env_file(env, include_commented=True)["B"] == "2"


# --- services and profiles --------------------------------------------------------------------------


def test_find_service_by_alias_and_profile() -> None:
    compose = load_compose()
    assert find_service(compose, "api", "gpu")[0] == "api-gpu"
    assert find_service(compose, "postgres", "vllm")[0] == "postgres"
    with pytest.raises(ComposeError, match="other profiles: tgi"):
        find_service(compose, "tgi", "cpu")
    with pytest.raises(ComposeError, match="no service answers to 'api'"):
        find_service(compose, "api", None)


def test_find_service_refuses_an_ambiguous_name() -> None:
    compose = {"services": {"a": {"networks": {"n": {"aliases": ["x"]}}}, "b": {"networks": {"n": {"aliases": ["x"]}}}}}
    with pytest.raises(ComposeError, match="several services"):
        find_service(compose, "x", None)


# --- compose_service_env ------------------------------------------------------------------------------


def test_api_env_for_the_distributed_cpu_configuration(tmp_path: Path) -> None:
    env = compose_service_env(
        "api", "cpu", ports=PORTS, variables=VARIABLES, paths={"/data": tmp_path / "data", "/models": tmp_path / "m"}
    )
    assert env["CANDOR_DATABASE_URL"] == f"postgresql+psycopg://candor:pw@{LOOPBACK}:55432/candor"
    assert env["CANDOR_CHROMA_URL"] == f"http://{LOOPBACK}:8001"
    assert env["CANDOR_LLM_URL"] == f"http://{LOOPBACK}:8081"
    assert env["CANDOR_LLM_BACKEND"] == "tgi" and env["CANDOR_LLM_ADAPTER"] == "refusal"
    assert env["CANDOR_DATA_DIR"] == str(tmp_path / "data")
    assert env["CANDOR_TOKENIZER_PATH"] == str(tmp_path / "m" / "base")
    assert "CANDOR_TOP_K" not in env, "a pass-through knob nobody set stays unset"


def test_variables_reach_urls_and_pass_through_knobs() -> None:
    env = compose_service_env(
        "api",
        "cpu",
        ports={"postgres": 5, "chroma": 6, "model-server": 7},
        variables={"POSTGRES_PASSWORD": "p", "POSTGRES_USER": "u", "POSTGRES_DB": "d", "CANDOR_TOP_K": "7"},
    )
    assert env["CANDOR_DATABASE_URL"] == f"postgresql+psycopg://u:p@{LOOPBACK}:5/d"
    assert env["CANDOR_TOP_K"] == "7"


@pytest.mark.parametrize(
    ("profile", "backend", "url"),
    [("gpu", "tgi", f"http://{LOOPBACK}:8082"), ("vllm", "openai", f"http://{LOOPBACK}:8083/v1")],
)
def test_api_env_for_the_gpu_profiles(profile: str, backend: str, url: str) -> None:
    env = compose_service_env("api", profile, ports=PORTS, variables=VARIABLES)
    assert (env["CANDOR_LLM_BACKEND"], env["CANDOR_LLM_URL"]) == (backend, url)


def test_a_missing_port_is_an_error_not_a_dangling_host() -> None:
    with pytest.raises(ComposeError, match=r"\['chroma', 'model-server'\]"):
        compose_service_env("api", "cpu", ports={"postgres": 1}, variables=VARIABLES)


def test_a_missing_password_is_an_error() -> None:
    with pytest.raises(ComposeError, match="POSTGRES_PASSWORD"):
        compose_service_env("api", "cpu", ports=PORTS)


def test_other_services_resolve_too() -> None:
    migrate = compose_service_env("migrate", None, ports=PORTS, variables=VARIABLES)
    assert migrate["CANDOR_DATABASE_URL"].startswith(f"postgresql+psycopg://candor:pw@{LOOPBACK}:55432/")
    server = compose_service_env("model-server", "cpu", variables={"CANDOR_MODEL_SERVER_THREADS": "1"})
    assert server["CANDOR_MODEL_SERVER_THREADS"] == "1" and server["CANDOR_BASE_MODEL_PATH"] == "/models/base"


def test_commands_get_local_paths_for_whole_and_name_value_arguments(tmp_path: Path) -> None:
    paths = {"/models": tmp_path / "m", "/models/base": tmp_path / "base", "/adapters": tmp_path / "a"}
    server = compose_service_command("model-server", "cpu", paths=paths)
    assert server == ["model-server", "--adapter", f"refusal={tmp_path / 'a' / 'refusal'}"]
    vllm = compose_service_command("vllm", "vllm", paths=paths, variables={"VLLM_MAX_LORA_RANK": "8"})
    assert vllm[0] == str(tmp_path / "base"), "the longest matching prefix wins"
    assert "--max-lora-rank=8" in vllm and f"refusal={tmp_path / 'a' / 'refusal'}" in vllm
    assert "--host=0.0.0.0" in vllm, "a name=value argument that is not a path stays as it is"
    assert compose_service_command("migrate", None) == ["db", "upgrade"]


@pytest.mark.parametrize("profile", ["cpu", "gpu", "vllm"])
def test_resolved_api_env_loads_as_settings(profile: str, settings, monkeypatch, tmp_path: Path) -> None:
    """The environment each API container gets is valid for Settings, with the expected engine."""
    env = compose_service_env(
        "api", profile, ports=PORTS, variables=VARIABLES, paths={"/data": tmp_path, "/models": tmp_path}
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loaded = load_settings()
    assert loaded.llm_backend == ("openai" if profile == "vllm" else "tgi")
    assert loaded.llm_adapter == "refusal"
    assert loaded.chroma_url == f"http://{LOOPBACK}:8001"
    assert loaded.resolved_database_url.startswith("postgresql+psycopg://")
    assert loaded.api_host == "0.0.0.0" and loaded.api_port == 8000
