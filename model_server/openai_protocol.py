"""The OpenAI-compatible routes' shapes: /v1/chat/completions, /v1/completions, /v1/models.

These are what vLLM serves, and what TGI serves beside its own routes. The
request's ``model`` picks the adapter (vLLM's and TGI's convention); the base
model answers to its own id, to an empty value, and to the placeholders
huggingface_hub sends when given a URL ("tgi", "dummy").

OpenAI semantics where they differ from TGI's native routes: a matched stop
sequence is cut from the text (streams hold back the few characters that
might start one), ``temperature`` 0 means greedy and an absent temperature
means sampling at 1.0, and ``finish_reason`` is "stop" or "length".
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from candor.model_server.tgi_protocol import (
    MAX_TOP_N_TOKENS,
    Limits,
    ValidationFailed,
    check_lengths,
    validate_sampling,
    validate_stop,
)

BASE_MODEL_ALIASES = {"", "tgi", "dummy", "base"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage]
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: Any | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = None


@dataclass(frozen=True)
class OpenAIJob:
    input_ids: list[int]
    max_new_tokens: int
    sampling: Any
    stop: tuple[str, ...]
    adapter_id: str | None
    model_name: str
    top_logprobs: int
    want_logprobs: bool


def resolve_model(model: str | None, model_id: str) -> str | None:
    """The adapter a ``model`` field names, or None for the base model."""
    name = (model or "").strip()
    if name.lower() in BASE_MODEL_ALIASES or name.startswith(("http://", "https://")):
        return None
    if name in (model_id, model_id.rsplit("/", 1)[-1]):
        return None
    return name


def message_text(message: ChatMessage) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for chunk in content:
        if chunk.get("type") != "text" or not isinstance(chunk.get("text"), str):
            raise ValidationFailed("only text content is supported in messages")
        parts.append(chunk["text"])
    return "".join(parts)


def _common_job(
    req: _Common,
    input_ids: list[int],
    limits: Limits,
    model_id: str,
    default_max_tokens: int | None,
    top_logprobs: int,
    want_logprobs: bool,
) -> OpenAIJob:
    if req.n not in (None, 1):
        raise ValidationFailed("`n` must be 1 on this server")
    if req.presence_penalty:
        raise ValidationFailed("`presence_penalty` is not supported by this server")
    if req.max_tokens is not None and req.max_tokens <= 0:
        raise ValidationFailed("`max_tokens` must be strictly positive")
    greedy = req.temperature is not None and req.temperature == 0
    sampling = validate_sampling(
        do_sample=not greedy,
        temperature=None if greedy else req.temperature,
        top_k=None,
        top_p=None if greedy or req.top_p == 1.0 else req.top_p,
        typical_p=None,
        repetition_penalty=None,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        top_n_tokens=top_logprobs,
    )
    stop = validate_stop([req.stop] if isinstance(req.stop, str) else req.stop)
    max_tokens = req.max_tokens if req.max_tokens is not None else default_max_tokens
    adapter = resolve_model(req.model, model_id)
    return OpenAIJob(
        input_ids=input_ids,
        max_new_tokens=check_lengths(len(input_ids), max_tokens, limits),
        sampling=sampling,
        stop=stop,
        adapter_id=adapter,
        model_name=adapter or model_id,
        top_logprobs=top_logprobs,
        want_logprobs=want_logprobs,
    )


def validate_chat(req: ChatRequest, tokenizer: Any, limits: Limits, model_id: str) -> OpenAIJob:
    if req.tools:
        raise ValidationFailed("tools are not supported by this server")
    if req.response_format is not None:
        raise ValidationFailed("response_format is not supported by this server")
    if not req.messages:
        raise ValidationFailed("`messages` cannot be empty")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_N_TOKENS:
        raise ValidationFailed(f"`top_logprobs` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
    messages = [{"role": m.role, "content": message_text(m)} for m in req.messages]
    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template that rejects the roles given
        raise ValidationFailed(f"the chat template rejected the messages: {exc}") from None
    input_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    top = (req.top_logprobs or 0) if req.logprobs else 0
    return _common_job(req, input_ids, limits, model_id, None, top, bool(req.logprobs))


def validate_completion(req: CompletionRequest, tokenizer: Any, limits: Limits, model_id: str) -> OpenAIJob:
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ValidationFailed("`prompt` must be one string on this server")
        prompt = prompt[0]
    if not prompt:
        raise ValidationFailed("`prompt` cannot be empty")
    if req.echo:
        raise ValidationFailed("`echo` is not supported by this server")
    if req.logprobs is not None and not 0 <= req.logprobs <= MAX_TOP_N_TOKENS:
        raise ValidationFailed(f"`logprobs` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
    input_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    # OpenAI's (and vLLM's) default for legacy completions is 16 tokens.
    return _common_job(req, input_ids, limits, model_id, 16, req.logprobs or 0, req.logprobs is not None)


def cut_at_stop(text: str, stop: str | None) -> str:
    if not stop:
        return text
    at = text.rfind(stop)
    return text[:at] if at >= 0 else text


def finish_reason(reason: str) -> Literal["stop", "length"]:
    return "length" if reason == "length" else "stop"


# --- response bodies ---------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_logprob(event: Any) -> dict[str, Any]:
    return {
        "token": event.token.text,
        "logprob": event.token.logprob,
        "top_logprobs": [{"token": t.text, "logprob": t.logprob} for t in event.top_tokens],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(job: OpenAIJob, events: list[Any], finish: Any, fingerprint: str) -> dict[str, Any]:
    logprobs = {"content": [chat_logprob(e) for e in events]} if job.want_logprobs else None
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": job.model_name,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": cut_at_stop(finish.generated_text, finish.stop_sequence)},
                "logprobs": logprobs,
                "finish_reason": finish_reason(finish.finish_reason),
                "stop_reason": finish.stop_sequence,
            }
        ],
        "usage": usage(finish.input_length, finish.generated_tokens),
    }


def chat_chunk(
    job: OpenAIJob,
    chunk_id: str,
    created: int,
    fingerprint: str,
    content: str | None,
    event: Any | None,
    reason: str | None,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": content or ""}
    logprobs = {"content": [chat_logprob(event)]} if (job.want_logprobs and event is not None) else None
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": job.model_name,
        "system_fingerprint": fingerprint,
        # stop_reason: the stop string that ended the stream, as vLLM sends it (None: end of turn or length)
        "choices": [
            {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason, "stop_reason": stop_reason}
        ],
        "usage": None,
    }


def completion_logprobs(events: list[Any]) -> dict[str, Any]:
    """OpenAI's legacy logprobs object (what vLLM returns for /v1/completions)."""
    offsets, position = [], 0
    for e in events:
        offsets.append(position)
        position += len(e.token.text)
    return {
        "tokens": [e.token.text for e in events],
        "token_logprobs": [e.token.logprob for e in events],
        "top_logprobs": [{t.text: t.logprob for t in e.top_tokens} for e in events],
        "text_offset": offsets,
    }


def completion(job: OpenAIJob, events: list[Any], finish: Any, fingerprint: str) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": job.model_name,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "text": cut_at_stop(finish.generated_text, finish.stop_sequence),
                "logprobs": completion_logprobs(events) if job.want_logprobs else None,
                "finish_reason": finish_reason(finish.finish_reason),
                "stop_reason": finish.stop_sequence,
            }
        ],
        "usage": usage(finish.input_length, finish.generated_tokens),
    }


def completion_chunk(
    job: OpenAIJob,
    chunk_id: str,
    created: int,
    fingerprint: str,
    text: str,
    event: Any | None,
    reason: str | None,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "text_completion",
        "created": created,
        "model": job.model_name,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": completion_logprobs([event]) if (job.want_logprobs and event is not None) else None,
                "finish_reason": reason,
                "stop_reason": stop_reason,
            }
        ],
        "usage": None,
    }
