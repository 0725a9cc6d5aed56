"""The embedded server's onnxruntime engine: ONNX Runtime GenAI runs the forward passes.

Everything but the forward pass is ``ModelEngine``'s: the queue, adapters and hot swap, sampling
(``sampling.TokenChooser`` on the returned logits, so penalties, seeds and top tokens are the
torch engine's), stop sequences, detokenizing, events. What differs:

- the weights are an ONNX export (``onnx_export.ensure_export``), MatMulNBits int4/int8 by default;
  each adapter is merged in float32 and exported as its own model, so a hot swap exports (or finds
  in the cache) and then replaces one reference, as the torch engine does;
- each request owns an ``og.Generator`` (its own KV cache, sized to its prompt plus its token
  budget). Prefill appends the prompt; each step appends the chosen token and reads the last
  position's logits. Requests take turns step by step; they are not batched into one forward pass
  (ONNX Runtime GenAI's generators share no cache rows), so total tokens/s stays near one
  stream's: the trade is lower latency per request for less throughput under load.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError
from candor.model_server.adapters import AdapterInfo, AdapterSpec
from candor.model_server.model_engine import ErrorEvent, ModelEngine, _Cohort, _Pending, _Served
from candor.model_server.onnx_export import ensure_export
from candor.profile import CPU
from candor.settings import Settings, apply_thread_settings

log = logging.getLogger(__name__)


class OnnxModelEngine(ModelEngine):
    def __init__(
        self, settings: Settings, adapters: list[AdapterSpec] | None = None, *, allow_base_mismatch: bool = False
    ):
        super().__init__(settings, adapters, allow_base_mismatch=allow_base_mismatch)
        if self.device != CPU:
            raise InvalidInputError(
                "the onnxruntime engine runs on the CPU: set CANDOR_DEVICE=cpu, or CANDOR_MODEL_ENGINE=torch"
            )
        self.cache_dir = settings.resolved_onnx_cache_dir
        self.precision = settings.onnx_precision

    def _load_og_model(self, onnx_dir: Path) -> Any:
        import onnxruntime_genai as og

        config = og.Config(str(onnx_dir))
        config.clear_providers()  # the CPU
        return og.Model(config)

    def _load_base(self) -> None:
        apply_thread_settings(self.settings.model_server_threads)  # torch still samples from the logits
        from transformers import AutoTokenizer, GenerationConfig

        self.tokenizer = AutoTokenizer.from_pretrained(self.base_path, local_files_only=True)
        self.dtype = f"onnx {self.precision}"
        onnx_dir = ensure_export(
            self.base_path,
            self.cache_dir,
            self.precision,
            self.settings.model_server_threads,
        )
        model = self._load_og_model(onnx_dir)
        try:
            eos = GenerationConfig.from_pretrained(self.base_path, local_files_only=True).eos_token_id
        except OSError:
            eos = None
        self._remember_token_ids(eos)
        self._base = _Served(model=model, info=None)

    def _build_adapter(self, spec: AdapterSpec, info: AdapterInfo) -> _Served:
        started = time.perf_counter()
        onnx_dir = ensure_export(
            self.base_path,
            self.cache_dir,
            self.precision,
            self.settings.model_server_threads,
            adapter_path=spec.path,
            adapter_version=info.version,
        )
        model = self._load_og_model(onnx_dir)
        log.info("adapter %s (%s) ready as ONNX in %.1f s", spec.name, info.version, time.perf_counter() - started)
        return _Served(model=model, info=info)

    # --- forward passes ---------------------------------------------------------------

    def _generator(self, model: Any, capacity: int) -> Any:
        import onnxruntime_genai as og

        params = og.GeneratorParams(model)
        params.set_search_options(max_length=capacity)
        return og.Generator(model, params)

    def _prefill(self, batch: list[_Pending]) -> None:
        import numpy as np
        import torch

        for pending in batch:
            job = pending.job
            try:
                generator = self._generator(pending.served.model, len(job.input_ids) + job.max_new_tokens + 1)
                generator.append_tokens(np.asarray(job.input_ids, dtype=np.int32))
                last = torch.from_numpy(np.array(generator.get_logits()[0, -1], dtype=np.float32))
                prompt_logits = None
                if job.prefill_details:
                    prompt_logits = torch.from_numpy(np.array(generator.get_output("logits")[0], dtype=np.float32))
            except Exception as exc:
                log.exception("prefill failed")
                self._emit(pending, ErrorEvent(f"Request failed during generation: {exc}"))
                continue
            self.stats.prefill_passes += 1
            self.stats.max_prefill_rows = max(self.stats.max_prefill_rows, 1)
            row = self._start_row(pending, last, prompt_logits)
            if row is None or row.done:
                continue
            for cohort in self._cohorts:
                if cohort.served is pending.served:
                    cohort.rows.append(row)
                    cohort.kv.append(generator)
                    break
            else:
                self._cohorts.append(_Cohort(served=pending.served, rows=[row], kv=[generator]))

    def _step(self, cohort: _Cohort) -> None:
        import numpy as np
        import torch

        keep = [i for i, r in enumerate(cohort.rows) if not r.pending.handle.cancelled]
        cohort.rows = [cohort.rows[i] for i in keep]
        cohort.kv = [cohort.kv[i] for i in keep]
        if cohort.rows:
            self.stats.decode_steps += 1
            self.stats.decode_rows += len(cohort.rows)
            self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(cohort.rows))
        for row, generator in zip(cohort.rows, cohort.kv, strict=True):
            try:
                generator.append_tokens(np.asarray([row.next_token], dtype=np.int32))
                logits = torch.from_numpy(np.array(generator.get_logits()[0, -1], dtype=np.float32))
                row.length += 1
                self._advance(row, logits)
            except Exception as exc:
                log.exception("decode step failed")
                if not row.done:
                    self._emit(row.pending, ErrorEvent(f"Request failed during generation: {exc}"))
                row.done = True
        live = [i for i, r in enumerate(cohort.rows) if not r.done]
        cohort.rows = [cohort.rows[i] for i in live]
        cohort.kv = [cohort.kv[i] for i in live]
        if not cohort.rows:
            self._cohorts.remove(cohort)


def make_engine(
    settings: Settings, adapters: list[AdapterSpec] | None = None, *, allow_base_mismatch: bool = False
) -> ModelEngine:
    """The engine ``settings.model_engine`` names."""
    if settings.model_engine == "onnxruntime":
        return OnnxModelEngine(settings, adapters, allow_base_mismatch=allow_base_mismatch)
    return ModelEngine(settings, adapters, allow_base_mismatch=allow_base_mismatch)
