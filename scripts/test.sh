#!/usr/bin/env bash
# Set up, start a throwaway PostgreSQL (when this machine can: root + apt), lint, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
if [ -z "${CANDOR_TEST_POSTGRES_URL:-}" ]; then
  if pg_env=$(bash .ci/postgres.sh); then
    eval "$pg_env"
  else
    echo "warning: no PostgreSQL server; the Postgres variants of the store tests will not run" >&2
  fi
fi
if ! bash .ci/chromium.sh; then
  echo "warning: no Chromium; the chat page's browser test fails under CI (CI=true) and skips elsewhere" >&2
fi
ruff check .
exec pytest "$@"
