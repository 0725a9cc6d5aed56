# syntax=docker/dockerfile:1
# Candor's API and CLI: `candor serve` by default; the same image runs `candor db upgrade`
# (the compose file's migration job), `candor ingest` and every other command.
#
# Build from the repository root (the build context must hold pyproject.toml):
#   docker build -f docker/service.Dockerfile -t candor/service:0.1.0 .
#
# No model weights are baked in. The API reads the base model's tokenizer (prompt fitting) and the
# embedder from the shared `models` volume (CANDOR_TOKENIZER_PATH, CANDOR_EMBED_MODEL_PATH), which
# the model-prepare job fills; generation happens in TGI, vLLM or the embedded model server.

# ---- builder: a virtualenv with the pinned stack and Candor -------------------------------------
FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the CPU wheel index: a plain `torch` requirement resolves to a multi-GB CUDA
# build, and an unpinned resolve backtracks for minutes. The API needs torch only to embed queries.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The pinned dependencies from pyproject.toml in their own layer, so a source change reuses it.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write(chr(10).join(deps))" \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY README.md ./
COPY candor/ candor/
COPY cli/ cli/
COPY ingest/ ingest/
COPY service/ service/
COPY model_server/ model_server/
COPY retrain/ retrain/
COPY finetune/ finetune/
COPY feedback/ feedback/
RUN pip install --no-cache-dir --no-deps . \
    && candor --help >/dev/null

# ---- runtime: the virtualenv, a non-root user, nothing else ----------------------------------
FROM python:3.11.13-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="candor-service" \
      org.opencontainers.image.description="Candor API and CLI (no model weights inside)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 candor \
    && useradd --system --uid 10001 --gid candor --home-dir /home/candor --create-home \
       --shell /usr/sbin/nologin candor \
    && mkdir -p /data /models \
    && chown candor:candor /data /models

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/candor-healthcheck

# HF_HUB_OFFLINE is deliberately NOT set: it also blocks huggingface_hub's InferenceClient from
# calling the TGI server. Models are loaded from local paths only, so nothing reaches a hub.
# Caches go under /data, never to $HOME (llama-index, Hugging Face, Chroma's client).
# DL3064 flags TOKENIZERS_PARALLELISM for the word TOKEN: no secret is set here (secrets come from
# the compose file's environment at run time, never from the image).
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CANDOR_DATA_DIR=/data \
    CANDOR_API_HOST=0.0.0.0 \
    CANDOR_API_PORT=8000 \
    OMP_WAIT_POLICY=PASSIVE \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/data/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    LLAMA_INDEX_CACHE_DIR=/data/cache/llama_index \
    ANONYMIZED_TELEMETRY=False

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/candor
EXPOSE 8000

# /readyz answers 200 only when Chroma, the database and the model server all answer.
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 \
    CMD ["candor-healthcheck", "/readyz"]

ENTRYPOINT ["candor"]
CMD ["serve"]
