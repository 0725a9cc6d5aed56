#!/usr/bin/env bash
# The main job on the embedded defaults: set up, prepare the base model, ingest the sample corpus
# (samples/handbook, Candor's own handbook), start the model server and the API, then ask one question
# the handbook answers and four it does not (all five from samples/handbook.questions.jsonl): one the
# generation side refuses, one the answerability reader refuses before the model is called, two the
# retrieval gate stops.
# Servers stop at the end unless KEEP_RUNNING=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

export CANDOR_DATA_DIR="${CANDOR_DATA_DIR:-var/demo}"
export CANDOR_AUTH_DISABLED="${CANDOR_AUTH_DISABLED:-true}"   # local demo only; the API logs a warning
export OMP_WAIT_POLICY=PASSIVE
MODEL_PORT="${CANDOR_MODEL_SERVER_PORT:-8080}"
API_PORT="${CANDOR_API_PORT:-8000}"
export CANDOR_LLM_URL="http://127.0.0.1:${MODEL_PORT}"
export CANDOR_API_URL="http://127.0.0.1:${API_PORT}"
mkdir -p "$CANDOR_DATA_DIR"
COLLECTION=handbook
# The shipped refusal adapter (models/candor-refusal), served under the stable name "refusal".
ADAPTER_DIR="${CANDOR_DEMO_ADAPTER:-models/candor-refusal}"
ADAPTER_ARGS=()
if [ -f "$ADAPTER_DIR/adapter_config.json" ]; then
  ADAPTER_ARGS=(--adapter "refusal=$ADAPTER_DIR")
  export CANDOR_LLM_ADAPTER=refusal
fi

# The shipped answerability reader (models/candor-reader): the API refuses before generating when no
# retrieved passage holds an answer span, and shows the evidence span with every answer.
if [ -f models/candor-reader/reader.json ] && [ -z "${CANDOR_VERIFIER_PATH:-}" ]; then
  export CANDOR_READER_PATH="${CANDOR_READER_PATH:-models/candor-reader}"
fi

candor model prepare
candor ingest samples/handbook --collection "$COLLECTION"

pids=()
cleanup() {
  if [ "${KEEP_RUNNING:-0}" != 1 ]; then
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
  fi
}
trap cleanup EXIT

wait_for() {  # url, seconds, name
  for _ in $(seq "$2"); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 1
  done
  echo "$3 did not become ready; see its log in $CANDOR_DATA_DIR" >&2
  return 1
}

candor model-server --port "$MODEL_PORT" "${ADAPTER_ARGS[@]}" >"$CANDOR_DATA_DIR/model-server.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:${MODEL_PORT}/health" 180 "the model server"
candor serve --port "$API_PORT" >"$CANDOR_DATA_DIR/api.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:${API_PORT}/readyz" 120 "the API"

ask() { echo; echo "Q: $1"; candor ask "$1" --collection "$COLLECTION"; }
ask "How large are Candor's chunks?"                              # the handbook answers it: 256 tokens (evidence: "256")
ask "How many dimensions do Candor's embeddings have?"            # passes the gate and the reader; the model or the grounding check refuses
ask "How many languages does Candor's user interface support?"    # passes the gate; the reader refuses
ask "How much does a Candor enterprise subscription cost per year?"  # refused by the retrieval gate
ask "What is the boiling point of mercury?"                       # off topic: refused by the retrieval gate
echo
echo "The API is at ${CANDOR_API_URL} (docs: ${CANDOR_API_URL}/docs); flag an answer with:"
echo "  curl -X POST ${CANDOR_API_URL}/v1/answers/<answer_id>/feedback -H 'content-type: application/json' -d '{\"verdict\": \"hallucination\"}'"
if [ "${KEEP_RUNNING:-0}" = 1 ]; then
  echo "KEEP_RUNNING=1: servers left running (pids ${pids[*]})."
  echo "Open ${CANDOR_API_URL}/ in a browser: ask, see the evidence, flag answers and review the flags."
else
  echo "The chat page is ${CANDOR_API_URL}/ (ask, see the evidence, flag, review): run with KEEP_RUNNING=1 and open it in a browser."
fi
exit 0
