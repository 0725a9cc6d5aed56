"""The embedded server's engine: the model, its adapters, and continuous batching.

One worker thread owns the model. Requests wait in a queue; each turn of the
worker's loop takes the waiting requests that fit (free rows in the batch, the
same weights, at most ``PREFILL_TOKEN_BUDGET`` padded prompt tokens), prefills
them together in one forward pass, left-padded to the longest prompt, joins
them to the running batch of their adapter, then advances every running batch
by one token. Finished rows leave after any step. So a request never waits for
another to finish, and the fixed cost of a forward pass (per-layer overhead,
small matrix products) is shared by all its rows: for decode steps, and for
prefill passes of short prompts, total tokens/s grows with the number of
clients. A long prompt saturates the CPU on its own, so it is prefilled alone
(see PREFILL_TOKEN_BUDGET).

Each adapter is served from its own merged copy of the weights (see
``adapters.py``), so a batch holds requests of one adapter, and batches of
different adapters take turns.

Events go back through a ``sink`` callable, invoked on the worker thread; the
HTTP layer turns them into asyncio queue items.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from candor.errors import CandorError, InvalidInputError, UnavailableError
from candor.model_server.adapters import (
    DEFAULT_ADAPTER_NAME,
    INT8,
    AdapterError,
    AdapterInfo,
    AdapterSpec,
    build_merged_model,
    finish_model,
    inspect_adapter,
    load_dtype,
    parse_adapter_specs,
)
from candor.model_server.decode_attention import register_decode_attention
from candor.model_server.model_prep import is_model_dir, read_model_identity
from candor.model_server.token_text import IncrementalDetokenizer, find_stop
from candor.profile import CPU, CUDA, prefill_token_budget, resolve_device
from candor.settings import Settings, apply_thread_settings

log = logging.getLogger(__name__)

# Padded prompt tokens (rows x longest prompt) in one prefill pass; a single prompt is always taken,
# whatever its length. Per device (candor.profile.prefill_token_budget): on a CPU 512. Measured on the
# 2-core CPU, 1 thread, bf16 (bench/bench_prefill.py --sweep): a pass of 32 tokens runs at ~580 prompt
# tok/s, 8 such prompts together at ~1,300; from a few hundred tokens on a pass is compute-bound
# (~800-1,300 tok/s whatever its shape), so batching longer prompts only adds padding and makes the
# first of them wait for the last. A GPU is far from compute-bound there and takes more.
PREFILL_TOKEN_BUDGET = prefill_token_budget(CPU)


class EngineNotReady(UnavailableError):
    """The model is still loading (or failed to load)."""


class UnknownAdapter(InvalidInputError):
    """A request named an adapter this server has not loaded."""


# --- what goes in and out ----------------------------------------------------


@dataclass(frozen=True)
class GenerationJob:
    input_ids: list[int]
    max_new_tokens: int
    sampling: Any  # sampling.SamplingParams (kept untyped here: that module imports torch)
    stop: tuple[str, ...] = ()
    adapter: str | None = None
    prefill_details: bool = False


@dataclass
class TokenOut:
    id: int
    text: str
    logprob: float | None
    special: bool = False


@dataclass
class Finish:
    generated_text: str
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    generated_tokens: int
    input_length: int
    seed: int | None
    prefill: list[TokenOut] = field(default_factory=list)
    stop_sequence: str | None = None  # the stop string that ended it, if one did


@dataclass
class StepEvent:
    index: int
    token: TokenOut
    top_tokens: list[TokenOut]
    finish: Finish | None = None


@dataclass
class ErrorEvent:
    message: str
    error_type: str = "generation"


Event = StepEvent | ErrorEvent
Sink = Callable[[Event], None]


class JobHandle:
    """Returned by ``submit``; ``cancel()`` drops the request at the next step."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class EngineStats:
    """Counters the metrics endpoint and the tests read."""

    decode_steps: int = 0
    decode_rows: int = 0  # sum of batch sizes over decode steps
    max_batch_rows: int = 0
    prefills: int = 0  # prompts prefilled
    prefill_passes: int = 0  # forward passes that prefilled them
    max_prefill_rows: int = 0  # most prompts in one pass
    generated_tokens: int = 0
    running_rows: int = 0
    queued: int = 0


# --- internals ------------------------------------------------------------------


@dataclass
class _Served:
    """A servable set of weights: the base model or an adapter merged into a copy."""

    model: Any
    info: AdapterInfo | None  # None for the base model


@dataclass
class _Pending:
    job: GenerationJob
    served: _Served
    sink: Sink
    handle: JobHandle
    queued_at: float


@dataclass
class _Row:
    pending: _Pending
    chooser: Any
    detok: Any
    length: int  # tokens in the cache for this row: the position of the next input token
    next_token: int = -1
    generated: int = 0
    done: bool = False
    prefill: list[TokenOut] = field(default_factory=list)  # for decoder_input_details


@dataclass
class _Cohort:
    served: _Served
    rows: list[_Row]
    kv: Any  # kv_rows.BatchKV


class ModelEngine:
    def __init__(
        self,
        settings: Settings,
        adapters: list[AdapterSpec] | None = None,
        *,
        allow_base_mismatch: bool = False,
    ):
        self.settings = settings
        self.base_path = Path(settings.resolved_base_model_path)
        self.model_id = read_model_identity(self.base_path) if self.base_path.exists() else self.base_path.name
        self.allow_base_mismatch = allow_base_mismatch or settings.allow_adapter_base_mismatch
        self.adapter_specs = self._collect_specs(adapters or [])
        self.state = "created"  # created | loading | ready | failed | stopped
        self.error: str | None = None
        self.stats = EngineStats()
        self.tokenizer: Any = None
        self.dtype: Any = None
        self._base: _Served | None = None
        self._adapters: dict[str, _Served] = {}
        self._adapter_lock = threading.Lock()  # one adapter load at a time
        self._cond = threading.Condition()
        self._pending: deque[_Pending] = deque()
        self._cohorts: list[_Cohort] = []
        self._stop = False
        self._worker: threading.Thread | None = None
        self._eos_ids: set[int] = set()
        self._special_ids: set[int] = set()
        self._pad_id = 0  # any real id: padded positions are masked out
        # CANDOR_DEVICE: weights and model inputs live there; logits come back to the CPU for sampling
        # (auto is resolved now, an explicit cuda is checked when the model loads)
        self.device = CUDA if settings.device == CUDA else resolve_device(settings.device)
        self.prefill_token_budget = prefill_token_budget(self.device)

    # --- start-up ------------------------------------------------------------------

    def _collect_specs(self, specs: list[AdapterSpec]) -> list[AdapterSpec]:
        """CLI adapters, then CANDOR_MODEL_SERVER_ADAPTERS, then CANDOR_ADAPTER_PATH as "refusal"."""
        collected = list(specs)
        if self.settings.model_server_adapters:
            collected += parse_adapter_specs([self.settings.model_server_adapters])
        names = {s.name for s in collected}
        if len(names) != len(collected):
            raise AdapterError("an adapter name is given twice (command line and CANDOR_MODEL_SERVER_ADAPTERS)")
        if self.settings.adapter_path and DEFAULT_ADAPTER_NAME not in names:
            collected.append(AdapterSpec(DEFAULT_ADAPTER_NAME, Path(self.settings.adapter_path)))
        return collected

    def check(self) -> list[AdapterInfo]:
        """Everything that can be checked without loading weights; raises CandorError."""
        if not is_model_dir(self.base_path):
            raise CandorError(
                f"no base model at {self.base_path}: run `candor model prepare` first, or set "
                "CANDOR_BASE_MODEL_PATH to a local Hugging Face model directory"
            )
        return [
            inspect_adapter(spec, self.base_path, self.model_id, self.allow_base_mismatch)
            for spec in self.adapter_specs
        ]

    def start_loading(self, on_failure: Callable[[str], None] | None = None) -> threading.Thread:
        """Load in a background thread, so /health can answer 503 meanwhile."""

        def run() -> None:
            try:
                self.load()
            except Exception as exc:  # reported through state, /health and on_failure
                log.error("model loading failed: %s", exc)
                if on_failure:
                    on_failure(self.error or str(exc))

        thread = threading.Thread(target=run, name="candor-model-load", daemon=True)
        thread.start()
        return thread

    def load(self) -> None:
        """Load tokenizer, base model and adapters, then start the worker."""
        self.state = "loading"
        try:
            infos = self.check()
            self._load_base()
            for spec, info in zip(self.adapter_specs, infos, strict=True):
                self._adapters[spec.name] = self._build_adapter(spec, info)
        except Exception as exc:
            self.state = "failed"
            self.error = str(exc) if isinstance(exc, CandorError) else f"{type(exc).__name__}: {exc}"
            raise
        self._worker = threading.Thread(target=self._run, name="candor-model-worker", daemon=True)
        self._worker.start()
        self.state = "ready"
        log.info("model %s ready (%s, adapters: %s)", self.model_id, self.dtype, sorted(self._adapters))

    def _load_base(self) -> None:
        apply_thread_settings(self.settings.model_server_threads)
        self.device = resolve_device(self.settings.device)  # raises where CANDOR_DEVICE=cuda finds no GPU
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = self.settings.model_dtype
        self.dtype = name if name == INT8 else load_dtype(name)  # "int8": float32 weights, then quantized
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            self.base_path,
            dtype=load_dtype(name),
            attn_implementation=register_decode_attention(),
            local_files_only=True,
        ).eval()
        if name == INT8:
            model = finish_model(model, name)  # CPU only (Settings refuses int8 on CUDA)
        model = model.to(self.device)
        self._remember_token_ids(model.generation_config.eos_token_id)
        self._base = _Served(model=model, info=None)

    def _remember_token_ids(self, eos: int | list[int] | None) -> None:
        """The ids that end a row (the generation config's ``eos`` and the tokenizer's), the special ids, the pad id."""
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self._eos_ids = eos_ids
        self._special_ids = set(self.tokenizer.all_special_ids)
        if self.tokenizer.pad_token_id is not None:
            self._pad_id = self.tokenizer.pad_token_id

    def _build_adapter(self, spec: AdapterSpec, info: AdapterInfo) -> _Served:
        assert self._base is not None
        started = time.perf_counter()
        model = build_merged_model(self.base_path, spec.path, self.settings.model_dtype, register_decode_attention())
        model = model.to(self.device)
        log.info("adapter %s (%s) merged in %.1f s", spec.name, info.version, time.perf_counter() - started)
        return _Served(model=model, info=info)

    # --- adapters at run time ----------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        return [s.info for s in self._adapters.values() if s.info is not None]

    def has_adapter(self, name: str) -> bool:
        return name in self._adapters

    def load_adapter(self, spec: AdapterSpec, *, allow_base_mismatch: bool = False) -> AdapterInfo:
        """Load (or replace) an adapter without stopping the server.

        Requests already running keep the weights they started with; new
        requests get the new ones as soon as this returns.
        """
        self._require_ready()
        info = inspect_adapter(spec, self.base_path, self.model_id, allow_base_mismatch or self.allow_base_mismatch)
        with self._adapter_lock:
            served = self._build_adapter(spec, info)
            self._adapters[spec.name] = served
        return info

    def remove_adapter(self, name: str) -> None:
        if self._adapters.pop(name, None) is None:
            raise UnknownAdapter(f"adapter {name!r} is not loaded")

    # --- requests ----------------------------------------------------------------------

    def _require_ready(self) -> None:
        if self.state != "ready":
            detail = f": {self.error}" if self.error else ""
            raise EngineNotReady(f"the model is {self.state}{detail}")

    def resolve(self, adapter: str | None) -> _Served:
        self._require_ready()
        if adapter is None:
            assert self._base is not None
            return self._base
        served = self._adapters.get(adapter)
        if served is None:
            loaded = ", ".join(sorted(self._adapters)) or "none"
            raise UnknownAdapter(f"adapter_id {adapter!r} is not loaded on this server (loaded: {loaded})")
        return served

    def submit(self, job: GenerationJob, sink: Sink) -> JobHandle:
        served = self.resolve(job.adapter)
        handle = JobHandle()
        with self._cond:
            self._pending.append(_Pending(job, served, sink, handle, time.perf_counter()))
            self.stats.queued = len(self._pending)
            self._cond.notify()
        return handle

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10)
        self.state = "stopped"

    # --- the worker ----------------------------------------------------------------------

    def _running_rows(self) -> int:
        return sum(len(c.rows) for c in self._cohorts)

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stop and not self._pending and not self._cohorts:
                        self._cond.wait()
                    if self._stop:
                        self._fail_all("the model server is shutting down", "unhealthy")
                        return
                    waiting = self._take_waiting()
                    self.stats.queued = len(self._pending)
                try:
                    if waiting:
                        self._prefill(waiting)
                    for cohort in list(self._cohorts):
                        self._step(cohort)
                except Exception:  # never let the worker die; the failing rows were told
                    log.exception("unexpected error in the generation loop")
                self.stats.running_rows = self._running_rows()

    def _fail_all(self, message: str, error_type: str) -> None:
        for cohort in self._cohorts:
            for row in cohort.rows:
                self._emit(row.pending, ErrorEvent(message, error_type))
        self._cohorts = []
        for pending in self._pending:
            self._emit(pending, ErrorEvent(message, error_type))
        self._pending.clear()

    def _emit(self, pending: _Pending, event: Event) -> None:
        try:
            pending.sink(event)
        except Exception:  # a closed client must not break the batch
            log.debug("dropping an event for a closed request", exc_info=True)
            pending.handle.cancel()

    def _take_waiting(self) -> list[_Pending]:
        """The next prefill pass, taken off the queue (under the lock).

        Waiting requests in arrival order, while they fit in the batch's free rows and the padded
        token budget and want the same weights as the first; cancelled ones are dropped. A request
        that wants the prompt's logprobs (``prefill_details``) goes alone: it needs every position's
        logits, the others only the last one's.
        """
        room = self.settings.max_batch_size - self._running_rows()
        taken: list[_Pending] = []
        width = 0
        while self._pending and len(taken) < room:
            nxt = self._pending[0]
            if nxt.handle.cancelled:
                self._pending.popleft()
                continue
            if taken:
                first = taken[0]
                if nxt.served is not first.served or nxt.job.prefill_details or first.job.prefill_details:
                    break
                if max(width, len(nxt.job.input_ids)) * (len(taken) + 1) > self.prefill_token_budget:
                    break
            taken.append(self._pending.popleft())
            width = max(width, len(nxt.job.input_ids))
        return taken

    def _prefill(self, batch: list[_Pending]) -> None:
        """Prefill ``batch`` (requests of one set of weights) in one forward pass, then join the batch.

        Prompts are left-padded to the longest, so every row's last position is its last prompt
        token; the mask hides the padding and the positions count real tokens only, so each row
        sees exactly what it would see alone. The padded cache is the shape the running batch keeps.
        """
        import torch
        from transformers import DynamicCache

        from candor.model_server import kv_rows

        served = batch[0].served
        lengths = [len(p.job.input_ids) for p in batch]
        width = max(lengths)
        details = any(p.job.prefill_details for p in batch)
        try:
            ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (pending, n) in enumerate(zip(batch, lengths, strict=True)):
                ids[i, width - n :] = torch.tensor(pending.job.input_ids, dtype=torch.long)
                mask[i, width - n :] = 1
            cache = DynamicCache()
            out = served.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=0 if details else 1,
            )
            logits = out.logits.to(CPU)  # the mask stays on the CPU too (kv_rows keeps it beside the cache)
        except Exception as exc:
            log.exception("prefill failed")
            for pending in batch:
                self._emit(pending, ErrorEvent(f"Request failed during generation: {exc}"))
            return
        self.stats.prefill_passes += 1
        self.stats.max_prefill_rows = max(self.stats.max_prefill_rows, len(batch))
        rows, keep = [], []
        for i, (pending, n) in enumerate(zip(batch, lengths, strict=True)):
            prompt_logits = logits[i, width - n :] if pending.job.prefill_details else None
            row = self._start_row(pending, logits[i, -1], prompt_logits)
            if row is not None and not row.done:
                rows.append(row)
                keep.append(i)
        kv = kv_rows.keep_rows(kv_rows.BatchKV(cache=cache, mask=mask), keep)
        if kv is None:
            return
        for cohort in self._cohorts:
            if cohort.served is served:
                cohort.kv = kv_rows.join(cohort.kv, kv)
                cohort.rows.extend(rows)
                return
        self._cohorts.append(_Cohort(served=served, rows=rows, kv=kv))

    def _start_row(self, pending: _Pending, last_logits: Any, prompt_logits: Any | None) -> _Row | None:
        """A prefilled request's row, its first token chosen and sent; None if that failed (the client is told)."""
        from candor.model_server.sampling import TokenChooser

        job = pending.job
        try:
            row = _Row(
                pending=pending,
                chooser=TokenChooser(job.sampling, job.input_ids),
                detok=IncrementalDetokenizer(self.tokenizer, self._special_ids),
                length=len(job.input_ids),
                prefill=self._prefill_tokens(job.input_ids, prompt_logits) if prompt_logits is not None else [],
            )
            self.stats.prefills += 1
            self._advance(row, last_logits.float())
        except Exception as exc:
            log.exception("prefill failed")
            self._emit(pending, ErrorEvent(f"Request failed during generation: {exc}"))
            return None
        return row

    def _prefill_tokens(self, input_ids: list[int], logits: Any) -> list[TokenOut]:
        import torch

        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
        picked = logprobs.gather(1, torch.tensor(input_ids[1:]).unsqueeze(1)).squeeze(1).tolist()
        texts = [self.tokenizer.decode([i]) for i in input_ids]
        return [TokenOut(input_ids[0], texts[0], None)] + [
            TokenOut(i, t, lp) for i, t, lp in zip(input_ids[1:], texts[1:], picked, strict=True)
        ]

    def _step(self, cohort: _Cohort) -> None:
        import torch

        from candor.model_server import kv_rows

        live = [i for i, r in enumerate(cohort.rows) if not r.pending.handle.cancelled]
        if len(live) != len(cohort.rows):
            cohort.kv = kv_rows.keep_rows(cohort.kv, live)
            cohort.rows = [cohort.rows[i] for i in live]
        if not cohort.rows:
            self._cohorts.remove(cohort)
            return
        rows = cohort.rows
        try:
            input_ids = torch.tensor([[r.next_token] for r in rows], dtype=torch.long)
            positions = torch.tensor([[r.length] for r in rows], dtype=torch.long)
            mask = kv_rows.extend_mask(cohort.kv)
            out = cohort.served.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                past_key_values=cohort.kv.cache,
                use_cache=True,
            )
            logits = out.logits[:, -1].float().to(CPU)
            self.stats.decode_steps += 1
            self.stats.decode_rows += len(rows)
            self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(rows))
            for i, row in enumerate(rows):
                row.length += 1
                self._advance(row, logits[i])
        except Exception as exc:
            log.exception("decode step failed")
            for row in rows:
                if not row.done:
                    self._emit(row.pending, ErrorEvent(f"Request failed during generation: {exc}"))
            self._cohorts.remove(cohort)
            return
        keep = [i for i, r in enumerate(rows) if not r.done]
        if not keep:
            self._cohorts.remove(cohort)
            return
        cohort.kv = kv_rows.keep_rows(cohort.kv, keep)
        cohort.rows = [rows[i] for i in keep]

    def _advance(self, row: _Row, logits: Any) -> None:
        """Choose the row's next token, send its event, and decide whether it is done."""
        job = row.pending.job
        choice = row.chooser.choose(logits)
        row.chooser.observe(choice.token_id)
        text, special = row.detok.add(choice.token_id)
        row.generated += 1
        row.next_token = choice.token_id
        self.stats.generated_tokens += 1
        reason = None
        stop = None
        if choice.token_id in self._eos_ids:
            reason = "eos_token"
        elif not special and (stop := find_stop(row.detok.text, text, list(job.stop))):
            reason = "stop_sequence"
        elif row.generated >= job.max_new_tokens:
            reason = "length"
        finish = None
        if reason is not None:
            row.done = True
            if not special:
                text += row.detok.flush()
            finish = Finish(
                generated_text=row.detok.text,
                finish_reason=reason,
                generated_tokens=row.generated,
                input_length=len(job.input_ids),
                seed=row.chooser.seed,
                prefill=row.prefill,
                stop_sequence=stop,
            )
        top = [TokenOut(tid, self.tokenizer.decode([tid]), lp, tid in self._special_ids) for tid, lp in choice.top]
        event = StepEvent(
            index=row.generated - 1,
            token=TokenOut(choice.token_id, text, choice.logprob, special),
            top_tokens=top,
            finish=finish,
        )
        self._emit(row.pending, event)
