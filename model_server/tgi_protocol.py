"""TGI's request and response shapes, and the validation TGI's router applies.

Shapes follow ../shared/spec/tgi-openapi.json (TGI 3.3): every parameter is
optional and nullable, unknown fields are ignored. Validation messages follow
TGI's router wording, prefixed "Input validation error: ", so a client that
parses TGI errors reads ours the same way.

Deliberate differences from TGI, all documented in docs/model-server.md:
- an unknown ``adapter_id`` is a 422 here (TGI silently uses the base model,
  which would bypass the refusal tuning);
- ``best_of`` > 1, ``grammar`` and ``watermark`` are refused with a 422
  (max_best_of is 1 on this server; the others are not implemented).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from candor.errors import InvalidInputError

MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
MAX_BEST_OF = 1


class ValidationFailed(InvalidInputError):
    """A request TGI would answer with 422 ``validation``."""

    def __init__(self, message: str):
        super().__init__(f"Input validation error: {message}")


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    adapter_id: str | None = None
    best_of: int | None = None
    decoder_input_details: bool | None = None
    details: bool | None = None
    do_sample: bool | None = None
    frequency_penalty: float | None = None
    grammar: Any | None = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = None
    stop: list[str] | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: GenerateParameters | None = None


class CompatGenerateRequest(GenerateRequest):
    stream: bool | None = None


@dataclass(frozen=True)
class ValidatedRequest:
    """What the engine needs, plus what the response builder needs."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: Any  # sampling.SamplingParams
    stop: tuple[str, ...]
    adapter_id: str | None
    details: bool
    decoder_input_details: bool
    return_full_text: bool
    top_n_tokens: int


def validate_sampling(
    *,
    do_sample: bool | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    typical_p: float | None,
    repetition_penalty: float | None,
    frequency_penalty: float | None,
    seed: int | None,
    top_n_tokens: int | None,
) -> Any:
    """Check the sampling parameters and build SamplingParams (shared with the OpenAI routes)."""
    from candor.model_server.sampling import SamplingParams

    if temperature is not None and temperature <= 0:
        raise ValidationFailed("`temperature` must be strictly positive")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise ValidationFailed("`repetition_penalty` must be strictly positive")
    if frequency_penalty is not None and not -2.0 <= frequency_penalty <= 2.0:
        raise ValidationFailed("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValidationFailed("`top_p` must be > 0.0 and <= 1.0")
    if typical_p is not None and not 0.0 < typical_p <= 1.0:
        raise ValidationFailed("`typical_p` must be > 0.0 and <= 1.0")
    if top_k is not None and top_k <= 0:
        raise ValidationFailed("`top_k` must be strictly positive")
    if seed is not None and seed < 0:
        raise ValidationFailed("`seed` must be >= 0")
    if top_n_tokens is not None and not 0 <= top_n_tokens <= MAX_TOP_N_TOKENS:
        raise ValidationFailed(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {top_n_tokens}")
    return SamplingParams(
        do_sample=bool(do_sample),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        typical_p=typical_p,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty or None,
        seed=seed,
        top_n_tokens=top_n_tokens or 0,
    )


def validate_stop(stop: list[str] | None) -> tuple[str, ...]:
    stop = [s for s in (stop or []) if s]
    if len(stop) > MAX_STOP_SEQUENCES:
        raise ValidationFailed(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}")
    return tuple(stop)


def check_lengths(input_length: int, max_new_tokens: int | None, limits: Limits) -> int:
    """Apply TGI's length rules; return the effective max_new_tokens."""
    if input_length > limits.max_input_tokens:
        raise ValidationFailed(f"`inputs` tokens must be <= {limits.max_input_tokens}. Given: {input_length}")
    if max_new_tokens is None:  # TGI 3: whatever room is left
        max_new_tokens = limits.max_total_tokens - input_length
    if max_new_tokens <= 0:
        raise ValidationFailed("`max_new_tokens` must be strictly positive")
    if input_length + max_new_tokens > limits.max_total_tokens:
        raise ValidationFailed(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. Given: "
            f"{input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    return max_new_tokens


def validate_generate(request: GenerateRequest, tokenizer: Any, limits: Limits) -> ValidatedRequest:
    p = request.parameters or GenerateParameters()
    if not request.inputs:
        raise ValidationFailed("`inputs` cannot be empty")
    if p.best_of is not None and not 0 < p.best_of <= MAX_BEST_OF:
        raise ValidationFailed(f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {p.best_of}")
    if p.grammar is not None:
        raise ValidationFailed("grammar is not supported by this server")
    if p.watermark:
        raise ValidationFailed("watermark is not supported by this server")
    if p.truncate is not None and not 0 < p.truncate <= limits.max_input_tokens:
        raise ValidationFailed(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {p.truncate}"
        )
    sampling = validate_sampling(
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        seed=p.seed,
        top_n_tokens=p.top_n_tokens,
    )
    stop = validate_stop(p.stop)
    input_ids = tokenizer(request.inputs, add_special_tokens=True)["input_ids"]
    if p.truncate is not None:
        input_ids = input_ids[-p.truncate :]
    if not input_ids:
        raise ValidationFailed("`inputs` cannot be empty")
    max_new_tokens = check_lengths(len(input_ids), p.max_new_tokens, limits)
    return ValidatedRequest(
        input_ids=input_ids,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop=stop,
        adapter_id=p.adapter_id or None,
        details=bool(p.details),
        decoder_input_details=bool(p.decoder_input_details and p.details),
        return_full_text=bool(p.return_full_text),
        top_n_tokens=p.top_n_tokens or 0,
    )


# --- responses ------------------------------------------------------------------------


def token_json(token: Any) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def generate_response(request: ValidatedRequest, inputs: str, events: list[Any], finish: Any) -> dict[str, Any]:
    """A GenerateResponse from the step events of one finished request."""
    text = (inputs + finish.generated_text) if request.return_full_text else finish.generated_text
    body: dict[str, Any] = {"generated_text": text}
    if request.details:
        details: dict[str, Any] = {
            "finish_reason": finish.finish_reason,
            "generated_tokens": finish.generated_tokens,
            "seed": finish.seed,
            "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in finish.prefill],
            "tokens": [token_json(e.token) for e in events],
        }
        if request.top_n_tokens:
            details["top_tokens"] = [[token_json(t) for t in e.top_tokens] for e in events]
        body["details"] = details
    return body


def stream_event(request: ValidatedRequest, inputs: str, event: Any) -> dict[str, Any]:
    """One StreamResponse; the last carries generated_text and (if asked) details."""
    body: dict[str, Any] = {
        "index": event.index,
        "token": token_json(event.token),
        "top_tokens": [token_json(t) for t in event.top_tokens],
        "generated_text": None,
        "details": None,
    }
    finish = event.finish
    if finish is not None:
        body["generated_text"] = inputs + finish.generated_text if request.return_full_text else finish.generated_text
        if request.details:
            body["details"] = {
                "finish_reason": finish.finish_reason,
                "generated_tokens": finish.generated_tokens,
                "seed": finish.seed,
                "input_length": finish.input_length,
            }
    return body


def error_body(message: str, error_type: str) -> dict[str, str]:
    return {"error": message, "error_type": error_type}
