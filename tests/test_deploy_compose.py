"""docker/compose.yaml and .env.example: valid against the Compose Specification's schema, pinned,
consistent per profile, and every CANDOR_* name a field of Settings (no typo can silently fall back
to a default)."""

from __future__ import annotations

import json
from importlib import metadata

import jsonschema
import pytest
from deploy_env import (
    ENV_EXAMPLE,
    find_service,
    interpolate_tree,
    load_compose,
    read_env_file,
    referenced_variables,
    service_enabled,
)
from fixtures.core import SHARED_DIR

from candor.settings import Settings, load_settings

PROFILES = ("cpu", "gpu", "vllm")
ENGINE_OF = {"cpu": "model-server", "gpu": "tgi", "vllm": "vllm"}
ALWAYS_ON = ("postgres", "chroma", "migrate", "model-prepare")
VARIABLES = {"POSTGRES_PASSWORD": "s3cret-for-tests"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def resolved(compose: dict) -> dict:
    """The document after interpolation with .env.example's values plus a password."""
    return interpolate_tree(compose, {**read_env_file(ENV_EXAMPLE), **VARIABLES})


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SHARED_DIR / "spec" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.Draft7Validator, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def unknown_settings_names(names: set[str]) -> set[str]:
    """CANDOR_* names that are not a field of Settings (pydantic-settings would ignore them)."""
    fields = {f"CANDOR_{name.upper()}" for name in Settings.model_fields}
    return {n for n in names if n.startswith("CANDOR_") and n not in fields}


def _environment_names(document: dict) -> set[str]:
    names: set[str] = set()
    for service in document["services"].values():
        env = service.get("environment") or {}
        names |= set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
    return names


# --- schema -------------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_spec(compose: dict, schema_validator) -> None:
    assert _errors(schema_validator, compose) == []


def test_compose_file_is_still_valid_after_interpolation(resolved: dict, schema_validator) -> None:
    assert _errors(schema_validator, resolved) == []


def test_schema_check_can_fail(compose: dict, schema_validator) -> None:
    """A misspelt key must be caught: the same validator on a broken copy reports it."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["postgres"]["enviroment"] = {"X": "1"}
    broken["services"]["chroma"]["depends_on"] = {"postgres": {"condition": "service_ready"}}
    errors = _errors(schema_validator, broken)
    assert any("enviroment" in e for e in errors) and any("service_ready" in e for e in errors)


# --- images, profiles, dependencies ---------------------------------------------------------


def test_every_image_is_pinned(resolved: dict) -> None:
    for name, service in resolved["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and not tag.startswith("latest"), f"{name}: {image}"


def test_chroma_server_matches_the_pinned_client(resolved: dict) -> None:
    assert resolved["services"]["chroma"]["image"] == f"chromadb/chroma:{metadata.version('chromadb')}"


def test_state_services_and_jobs_run_in_every_profile(compose: dict) -> None:
    for name in ALWAYS_ON:
        assert "profiles" not in compose["services"][name], name
    assert compose["services"]["migrate"]["command"] == ["db", "upgrade"]
    assert compose["services"]["migrate"]["restart"] == "no"
    volumes = {
        "postgres": "pgdata:/var/lib/postgresql/data",
        "chroma": "chroma-data:/data",
    }
    for name, mount in volumes.items():
        assert mount in compose["services"][name]["volumes"]
        assert "healthcheck" in compose["services"][name]


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_has_one_api_wired_to_its_engine(compose: dict, profile: str) -> None:
    name, api = find_service(compose, "api", profile)
    assert name == f"api-{profile}"
    engine = ENGINE_OF[profile]
    assert service_enabled(compose["services"][engine], profile)
    for other in set(ENGINE_OF.values()) - {engine}:
        assert not service_enabled(compose["services"][other], profile), f"{other} runs under {profile}"
    env = api["environment"]
    assert f"://{engine}:" in env["CANDOR_LLM_URL"]
    assert env["CANDOR_LLM_BACKEND"] == ("openai" if profile == "vllm" else "tgi")
    assert env["CANDOR_LLM_ADAPTER"] == "refusal"
    assert api["depends_on"][engine]["condition"] == "service_healthy"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("profile", PROFILES)
def test_dependencies_and_volumes_exist_in_each_profile(compose: dict, profile: str) -> None:
    """Compose refuses to start a service that depends on one its profile leaves out."""
    services = compose["services"]
    enabled = {n for n, s in services.items() if service_enabled(s, profile)}
    declared = set(compose["volumes"])
    for name in enabled:
        for dependency in services[name].get("depends_on") or {}:
            assert dependency in enabled, f"{name} depends on {dependency}, off under {profile}"
        for mount in services[name].get("volumes") or []:
            source = mount.split(":", 1)[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"


def test_tgi_serves_the_refusal_adapter_from_the_adapters_volume(resolved: dict) -> None:
    tgi = resolved["services"]["tgi"]
    assert tgi["profiles"] == ["gpu"]
    assert tgi["image"].startswith("ghcr.io/huggingface/text-generation-inference:")
    assert tgi["environment"]["LORA_ADAPTERS"] == "refusal=/adapters/refusal"
    assert tgi["environment"]["MODEL_ID"] == "/models/base"
    assert "adapters:/adapters:ro" in tgi["volumes"] and "models:/models:ro" in tgi["volumes"]
    devices = tgi["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_vllm_serves_the_refusal_adapter_with_lora_enabled(resolved: dict) -> None:
    vllm = resolved["services"]["vllm"]
    command = vllm["command"]
    assert command[0] == "/models/base"
    assert "--enable-lora" in command
    assert command[command.index("--lora-modules") + 1] == "refusal=/adapters/refusal"
    assert "adapters:/adapters:ro" in vllm["volumes"]
    assert vllm["image"].startswith("vllm/vllm-openai:v")


def test_model_prepare_fills_the_shared_volumes(compose: dict) -> None:
    job = compose["services"]["model-prepare"]
    assert job["entrypoint"] == ["candor-volumes"] and job["command"][0] == "prepare"
    assert {"models:/models", "adapters:/adapters"} <= set(job["volumes"])
    paths = job["environment"]
    # The API reads the tokenizer and the embedder where this job puts them.
    for profile in PROFILES:
        api_env = find_service(compose, "api", profile)[1]["environment"]
        assert api_env["CANDOR_TOKENIZER_PATH"] == paths["CANDOR_BASE_MODEL_PATH"]
        assert api_env["CANDOR_EMBED_MODEL_PATH"] == paths["CANDOR_EMBED_MODEL_PATH"]


# --- names and values against Settings ----------------------------------------------------------


def test_unknown_name_check_catches_a_typo() -> None:
    assert unknown_settings_names({"CANDOR_TOPK", "CANDOR_TOP_K", "POSTGRES_DB"}) == {"CANDOR_TOPK"}


def test_every_candor_variable_compose_sets_is_a_settings_field(compose: dict) -> None:
    names = _environment_names(compose) | referenced_variables(compose)
    assert len([n for n in names if n.startswith("CANDOR_")]) > 20
    assert unknown_settings_names(names) == set()


def test_every_candor_variable_in_env_example_is_a_settings_field() -> None:
    names = set(read_env_file(ENV_EXAMPLE, include_commented=True))
    assert unknown_settings_names(names) == set()


def test_env_example_values_are_valid_settings(settings, monkeypatch) -> None:
    """Each documented value, uncommented by a user, must load (e.g. no CANDOR_LLM_BACKEND=vllm)."""
    for name, value in read_env_file(ENV_EXAMPLE, include_commented=True).items():
        if name.startswith("CANDOR_") and name != "CANDOR_DATA_DIR":
            with monkeypatch.context() as m:
                m.setenv(name, value)
                load_settings()


def test_env_example_documents_every_compose_variable(compose: dict) -> None:
    documented = read_env_file(ENV_EXAMPLE, include_commented=True)
    assert referenced_variables(compose) - set(documented) == set()
    assert read_env_file(ENV_EXAMPLE)["POSTGRES_PASSWORD"] == "", "no default password"
    assert set(read_env_file(ENV_EXAMPLE)) == {"POSTGRES_PASSWORD"}, "everything else is optional"


def test_compose_refuses_to_run_without_a_password(compose: dict) -> None:
    from deploy_env import ComposeError

    with pytest.raises(ComposeError, match="POSTGRES_PASSWORD"):
        interpolate_tree(compose, read_env_file(ENV_EXAMPLE))


def test_compose_defaults_equal_settings_defaults(compose: dict, settings) -> None:
    """`${CANDOR_MAX_INPUT_TOKENS:-1536}` given to TGI must be what the embedded server would use."""
    text = json.dumps(compose)
    checked = 0
    for name in sorted(n for n in referenced_variables(compose) if n.startswith("CANDOR_")):
        marker = "${" + name + ":-"
        start = text.index(marker) + len(marker)
        default = text[start : text.index("}", start)]
        assert default == str(getattr(settings, name.removeprefix("CANDOR_").lower())), name
        checked += 1
    assert checked >= 3


def test_passed_through_knobs_are_unset_unless_given(compose: dict) -> None:
    """A knob without a value in compose leaves Settings' default in force (no default copied)."""
    api_env = find_service(compose, "api", "cpu")[1]["environment"]
    knobs = {k for k, v in api_env.items() if v is None}
    assert {"CANDOR_TOP_K", "CANDOR_MIN_RETRIEVAL_SCORE", "CANDOR_TORCH_THREADS"} <= knobs
