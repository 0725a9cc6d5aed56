"""The only code in Candor that speaks generation HTTP.

Two backends, chosen by ``CANDOR_LLM_BACKEND``:
- ``tgi`` (default): Hugging Face TGI's protocol, through huggingface_hub's
  ``AsyncInferenceClient`` (the maintained TGI client). Served by real TGI or
  by ``candor model-server``. The adapter is chosen per request by ``adapter_id``.
- ``openai``: OpenAI-compatible engines such as vLLM, over plain HTTP:
  ``/v1/completions`` for a rendered prompt, ``/v1/chat/completions`` for
  messages; the adapter is the request's ``model``.

Both return the same ``Generation``: text (a matched stop sequence cut off,
whatever the engine's habit), a finish reason in TGI's words, the token
count, and the first token's top alternatives with log-probabilities, which
the service uses as a refusal-confidence signal.

Failures become typed errors the service maps to HTTP: ``LLMUnavailable``
(connection refused, timeout, 503 after retries, a failed generation),
``LLMOverloaded`` (429 after retries), ``LLMBadRequest`` (400/404/422). Only
429 and 503 are retried, with exponential backoff (and Retry-After when sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from candor.errors import CandorError, InvalidInputError, UnavailableError
from candor.generation import GenerationParams, StopHold, cut_at_stops
from candor.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TOP_N = 5
_BACKOFF_BASE_S = 0.5
_BACKOFF_MAX_S = 8.0


class LLMError(CandorError):
    """A generation request failed."""


class LLMUnavailable(LLMError, UnavailableError):
    """The generation server cannot be reached or could not generate."""

    public = "the generation server is unavailable; try again shortly"


class LLMOverloaded(LLMError, UnavailableError):
    """The generation server kept answering 429 (too many requests in flight)."""

    public = "the generation server is overloaded; try again shortly"


class LLMBadRequest(LLMError, InvalidInputError):
    """The server refused the request as invalid (400/404/422): retrying will not help."""

    public = "the generation server refused the request"


class _Retryable(Exception):
    def __init__(self, error: LLMError, retry_after: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


@dataclass
class ServerInfo:
    model_id: str
    max_input_tokens: int
    max_total_tokens: int
    max_stop_sequences: int | None = None
    max_concurrent_requests: int | None = None
    backend: str = "tgi"
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generation:
    text: str
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    generated_tokens: int
    first_token_top: list[tuple[str, float]]  # (token text, logprob), most likely first
    adapter_id: str | None
    prompt_tokens: int | None = None
    seed: int | None = None


_DEFAULT = object()  # "use settings.llm_adapter"; None means the base model


class LLMClient:
    def __init__(self, settings: Settings, *, top_n_tokens: int = DEFAULT_TOP_N):
        self.settings = settings
        self.url = settings.llm_url.rstrip("/")
        self.backend = settings.llm_backend
        self.adapter_id = settings.llm_adapter  # the default adapter_id of generate/stream
        # Content hash of that adapter as the server reports it (embedded server, vLLM with
        # versions); filled by info() when the server can tell, for the answer log.
        self.adapter_version: str | None = None
        self.top_n_tokens = top_n_tokens
        # Generation hygiene sent with every request unless a call overrides it: repetition_penalty,
        # frequency_penalty and stop sequences, in TGI's words (candor.generation; the settings choose them).
        self.params = GenerationParams.from_settings(settings)
        self._base_model: str | None = None

    # --- public API ---------------------------------------------------------------

    async def health(self) -> bool:
        """True when the server answers its health route with 200 (never raises)."""
        import httpx

        path = "/health"
        try:
            async with httpx.AsyncClient(timeout=min(self.settings.llm_timeout_s, 5.0)) as client:
                response = await client.get(self.url + path)
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    async def info(self) -> ServerInfo:
        """Model id and token limits: TGI's /info, or /v1/models for OpenAI engines.

        Also refreshes ``adapter_version`` for the default adapter when the
        server lists versions (the embedded server does; real TGI cannot).
        """
        info = await self._fetch_info()
        if self.backend == "openai":
            self._base_model = info.model_id
        if self.adapter_id:
            try:
                entry = next((a for a in await self.adapters() if a.get("name") == self.adapter_id), None)
            except LLMError:
                entry = None
            self.adapter_version = entry.get("version") if entry else None
        return info

    async def _fetch_info(self) -> ServerInfo:
        if self.backend == "openai":
            data = await self._get_json("/v1/models")
            models = data.get("data") or []
            if not models:
                raise LLMUnavailable(f"{self.url}/v1/models lists no model")
            base = next((m for m in models if not m.get("parent")), models[0])
            total = int(base.get("max_model_len") or self.settings.max_total_tokens)
            return ServerInfo(
                model_id=str(base.get("id")),
                max_input_tokens=max(1, total - self.settings.max_new_tokens),
                max_total_tokens=total,
                backend="openai",
                raw=data,
            )
        data = await self._get_json("/info")
        try:
            return ServerInfo(
                model_id=str(data["model_id"]),
                # TGI 1.x/2.0 called it max_input_length
                max_input_tokens=int(data.get("max_input_tokens") or data["max_input_length"]),
                max_total_tokens=int(data["max_total_tokens"]),
                max_stop_sequences=data.get("max_stop_sequences"),
                max_concurrent_requests=data.get("max_concurrent_requests"),
                backend="tgi",
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LLMUnavailable(f"{self.url}/info is not a TGI info response: {exc}") from None

    async def adapters(self) -> list[dict[str, Any]]:
        """Adapters the server serves, as dicts with at least "name" (and "version" when known).

        The embedded server lists them at GET /adapters; vLLM lists them as
        models with a parent. Real TGI has no listing route: then [] is returned
        and the caller must verify an adapter by generating with it.
        """
        if self.backend == "openai":
            data = await self._get_json("/v1/models")
            return [
                {"name": m.get("id"), "version": m.get("version")} for m in data.get("data") or [] if m.get("parent")
            ]
        try:
            data = await self._get_json("/adapters")
        except LLMBadRequest:  # 404: a real TGI
            return []
        return list(data.get("adapters") or [])

    async def generate(
        self,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        adapter_id: Any = _DEFAULT,
        *,
        top_n_tokens: int | None = None,
        seed: int | None = None,
        params: GenerationParams | None = None,
    ) -> Generation:
        """Greedy generation from a rendered prompt or from chat messages.

        ``params`` (default: the client's, from the settings) give the penalties, the stop sequences
        when ``stop`` is None, and the token budget when ``max_new_tokens`` is None.
        """
        request = self._request(prompt, messages, max_new_tokens, stop, adapter_id, top_n_tokens, seed, params)
        return await self._with_retries(lambda: self._generate_once(request))

    async def stream(
        self,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        adapter_id: Any = _DEFAULT,
        *,
        top_n_tokens: int | None = None,
        seed: int | None = None,
        params: GenerationParams | None = None,
    ) -> AsyncIterator[str | Generation]:
        """Pieces of text (``str``) as they arrive, then one final Generation.

        Special tokens (the end-of-turn marker) are not sent as text.

        Retries happen only before the first event; a connection lost
        mid-stream raises LLMUnavailable.
        """
        request = self._request(prompt, messages, max_new_tokens, stop, adapter_id, top_n_tokens, seed, params)
        opened = await self._with_retries(lambda: self._open_stream(request))
        async for event in opened:
            yield event

    # --- request building ---------------------------------------------------------

    def _request(
        self,
        prompt: str | None,
        messages: Sequence[dict[str, str]] | None,
        max_new_tokens: int | None,
        stop: Sequence[str] | None,
        adapter_id: Any,
        top_n_tokens: int | None,
        seed: int | None,
        params: GenerationParams | None = None,
    ) -> _Request:
        if (prompt is None) == (messages is None):
            raise InvalidInputError("give exactly one of prompt or messages")
        p = params or self.params
        return _Request(
            prompt=prompt,
            messages=[dict(m) for m in messages] if messages is not None else None,
            max_new_tokens=max_new_tokens or (p.max_new_tokens if params else self.settings.max_new_tokens),
            stop=[s for s in (p.stop if stop is None else stop) if s],
            repetition_penalty=p.tgi().get("repetition_penalty"),
            frequency_penalty=p.tgi().get("frequency_penalty"),
            adapter_id=self.adapter_id if adapter_id is _DEFAULT else adapter_id,
            top_n_tokens=self.top_n_tokens if top_n_tokens is None else top_n_tokens,
            seed=seed,
        )

    # --- retries and error mapping ------------------------------------------------

    async def _with_retries(self, call: Any) -> Any:
        attempts = self.settings.llm_retries + 1
        for attempt in range(attempts):
            try:
                return await self._mapped(call)
            except _Retryable as exc:
                if attempt == attempts - 1:
                    raise exc.error from None
                delay = exc.retry_after
                if delay is None:
                    delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**attempt) * (1 + random.random() / 4)
                log.info("generation server busy (%s); retry %d in %.2f s", exc.error, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _mapped(self, call: Any) -> Any:
        try:
            return await call()
        except (LLMError, _Retryable):
            raise
        except Exception as exc:
            raise self._map_error(exc) from exc

    def _map_error(self, exc: Exception) -> Exception:
        """Turn huggingface_hub / httpx errors into Candor's typed errors (or a retry)."""
        status, message, retry_after = _describe(exc)
        where = self.url
        if status == 429:
            return _Retryable(LLMOverloaded(f"the generation server at {where} is overloaded: {message}"), retry_after)
        if status == 503:
            return _Retryable(
                LLMUnavailable(f"the generation server at {where} is unavailable: {message}"), retry_after
            )
        if status in (400, 404, 413, 422):
            return LLMBadRequest(
                f"the generation server at {where} refused the request ({status}): {message}",
                public=f"the generation server refused the request ({status}): {message}",
            )
        if status is not None:
            return LLMUnavailable(f"the generation server at {where} failed ({status}): {message}")
        if _is_timeout(exc):
            return LLMUnavailable(
                f"the generation server at {where} did not answer within {self.settings.llm_timeout_s} s"
            )
        return LLMUnavailable(f"cannot reach the generation server at {where}: {message}")

    def _mid_stream_error(self, exc: Exception) -> Exception:
        """The typed error for a failure after the stream started: too late to retry."""
        mapped = self._map_error(exc)
        return mapped.error if isinstance(mapped, _Retryable) else mapped

    async def _get_json(self, path: str) -> dict[str, Any]:
        import httpx

        async def call() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=self.settings.llm_timeout_s) as client:
                response = await client.get(self.url + path)
            if response.status_code != 200:
                raise _HTTPStatus(response.status_code, _body_message(response.text), _retry_after(response))
            try:
                data = response.json()
            except ValueError:
                raise LLMUnavailable(f"{self.url}{path} did not return JSON") from None
            if not isinstance(data, dict):
                raise LLMUnavailable(f"{self.url}{path} returned {type(data).__name__}, not an object")
            return data

        return await self._with_retries(call)

    # --- TGI backend -----------------------------------------------------------------

    def _hf_client(self) -> Any:
        from huggingface_hub import AsyncInferenceClient

        return AsyncInferenceClient(base_url=self.url, timeout=self.settings.llm_timeout_s)

    async def _generate_once(self, r: _Request) -> Generation:
        if self.backend == "openai":
            return await self._openai_once(r)
        if r.messages is not None:
            return await self._tgi_chat_once(r)
        async with self._hf_client() as client:
            out = await client.text_generation(r.prompt, details=True, **_tgi_options(r))
        details = out.details
        top = _first_top(getattr(details, "top_tokens", None))
        return Generation(
            text=cut_at_stops(out.generated_text, r.stop),
            finish_reason=str(details.finish_reason),
            generated_tokens=int(details.generated_tokens),
            first_token_top=top,
            adapter_id=r.adapter_id,
            seed=details.seed,
        )

    async def _tgi_chat_once(self, r: _Request) -> Generation:
        async with self._hf_client() as client:
            out = await client.chat_completion(
                r.messages,
                model=r.adapter_id,
                max_tokens=r.max_new_tokens,
                stop=r.stop or None,
                frequency_penalty=r.frequency_penalty,
                extra_body={"repetition_penalty": r.repetition_penalty} if r.repetition_penalty else None,
                temperature=0.0 if r.seed is None else 1.0,
                seed=r.seed,
                logprobs=bool(r.top_n_tokens),
                top_logprobs=r.top_n_tokens or None,
            )
        choice = out.choices[0]
        content = choice.logprobs.content if choice.logprobs else None
        top = [(t.token, float(t.logprob)) for t in content[0].top_logprobs] if content else []
        text = choice.message.content or ""
        return Generation(
            text=cut_at_stops(text, r.stop),
            finish_reason=_from_openai_reason(choice.finish_reason, None),
            generated_tokens=int(out.usage.completion_tokens) if out.usage else len(content or []),
            first_token_top=top,
            adapter_id=r.adapter_id,
            prompt_tokens=int(out.usage.prompt_tokens) if out.usage else None,
        )

    async def _open_stream(self, r: _Request) -> AsyncIterator[str | Generation]:
        """Start a stream (errors before the first byte are retryable) and return its events."""
        if self.backend == "openai" or r.messages is not None:
            return await self._open_openai_stream(r)
        client = self._hf_client()
        try:
            events = await client.text_generation(r.prompt, details=True, stream=True, **_tgi_options(r))
        except BaseException:
            await client.close()
            raise
        return self._tgi_stream_events(client, events, r)

    async def _tgi_stream_events(self, client: Any, events: Any, r: _Request) -> AsyncIterator[Any]:
        top: list[tuple[str, float]] | None = None
        held = StopHold(r.stop)  # TGI streams a stop sequence's tokens: relay none of them
        try:
            async for ev in events:
                if top is None:
                    top = _top_list(getattr(ev, "top_tokens", None))
                if not ev.token.special and (piece := held.feed(ev.token.text)):
                    yield piece
                if ev.generated_text is not None:
                    details = ev.details
                    reason = str(details.finish_reason) if details else "length"
                    # TGI keeps the stop sequence in generated_text (OpenAI engines drop it), and matches one
                    # only at the text's end after each token, so a token running past one lets generation
                    # go on with it inside: every engine's text is cut at its first stop, whatever the reason
                    text = cut_at_stops(ev.generated_text, r.stop)
                    if rest := held.finish(text):
                        yield rest
                    yield Generation(
                        text=text,
                        finish_reason=reason,
                        generated_tokens=int(details.generated_tokens) if details else ev.index + 1,
                        first_token_top=top or [],
                        adapter_id=r.adapter_id,
                        prompt_tokens=int(details.input_length) if details else None,
                        seed=details.seed if details else None,
                    )
                    return
            raise LLMUnavailable(f"the stream from {self.url} ended without a final event")
        except LLMError:
            raise
        except Exception as exc:
            raise self._mid_stream_error(exc) from exc
        finally:
            await client.close()

    # --- OpenAI backend ---------------------------------------------------------------

    async def _model_name(self, r: _Request) -> str:
        """The request's ``model``: the adapter, else the served base model's name.

        vLLM only answers to names it serves, so the base model's id is asked
        once from /v1/models; TGI ignores the field for its base model.
        """
        if r.adapter_id:
            return r.adapter_id
        if self.backend != "openai":
            return "tgi"
        if self._base_model is None:
            self._base_model = (await self.info()).model_id
        return self._base_model

    async def _openai_payload(self, r: _Request, stream: bool) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {
            "model": await self._model_name(r),
            "max_tokens": r.max_new_tokens,
            "temperature": 0.0 if r.seed is None else 1.0,
            "stream": stream,
        }
        if r.seed is not None:
            payload["seed"] = r.seed
        if r.stop:
            payload["stop"] = r.stop
        if r.frequency_penalty:
            payload["frequency_penalty"] = r.frequency_penalty
        if r.repetition_penalty:
            payload["repetition_penalty"] = r.repetition_penalty  # vLLM's extra sampling parameter
        if r.messages is not None:
            payload["messages"] = r.messages
            if r.top_n_tokens:
                payload["logprobs"] = True
                payload["top_logprobs"] = r.top_n_tokens
            path = "/v1/chat/completions"
        else:
            payload["prompt"] = r.prompt
            if r.top_n_tokens:
                payload["logprobs"] = r.top_n_tokens
            path = "/v1/completions"
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return path, payload

    async def _openai_once(self, r: _Request) -> Generation:
        import httpx

        path, payload = await self._openai_payload(r, stream=False)
        async with httpx.AsyncClient(timeout=self.settings.llm_timeout_s) as client:
            response = await client.post(self.url + path, json=payload)
        if response.status_code != 200:
            raise _HTTPStatus(response.status_code, _body_message(response.text), _retry_after(response))
        data = response.json()
        choice = (data.get("choices") or [{}])[0]
        use = data.get("usage") or {}
        chat = r.messages is not None
        text = ((choice.get("message") or {}).get("content") if chat else choice.get("text")) or ""
        top = _openai_top(choice.get("logprobs") or {}, chat)
        reason = _from_openai_reason(choice.get("finish_reason"), choice.get("stop_reason"))
        return Generation(
            text=cut_at_stops(text, r.stop),
            finish_reason=reason,
            generated_tokens=int(use.get("completion_tokens") or 0),
            first_token_top=top,
            adapter_id=r.adapter_id,
            prompt_tokens=use.get("prompt_tokens"),
        )

    async def _open_openai_stream(self, r: _Request) -> AsyncIterator[Any]:
        import httpx

        path, payload = await self._openai_payload(r, stream=True)
        client = httpx.AsyncClient(timeout=self.settings.llm_timeout_s)
        try:
            response = await client.send(client.build_request("POST", self.url + path, json=payload), stream=True)
            if response.status_code != 200:
                body = (await response.aread()).decode("utf-8", "replace")
                await response.aclose()
                raise _HTTPStatus(response.status_code, _body_message(body), _retry_after(response))
        except BaseException:
            await client.aclose()
            raise
        return self._openai_stream_events(client, response, r, chat=r.messages is not None)

    async def _openai_stream_events(self, client: Any, response: Any, r: _Request, chat: bool) -> AsyncIterator[Any]:
        text, top, reason, stop_reason, use = "", None, None, None, {}
        count = 0
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                body = line[5:].strip()
                if body == "[DONE]":
                    break
                data = json.loads(body)
                if data.get("error"):
                    raise LLMUnavailable(f"generation failed on {self.url}: {data.get('error')}")
                use = data.get("usage") or use
                for choice in data.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    lp = choice.get("logprobs")
                    if lp and top is None:
                        top = _openai_top(lp, chat)
                    if lp:
                        count += len(lp.get("content") or []) if chat else len(lp.get("tokens") or [])
                    if piece:
                        text += piece
                        yield piece
                    if choice.get("finish_reason"):
                        reason = choice["finish_reason"]
                        stop_reason = choice.get("stop_reason")
            if reason is None:
                raise LLMUnavailable(f"the stream from {self.url} ended without a finish reason")
            final_reason = _from_openai_reason(reason, stop_reason)
            yield Generation(
                text=cut_at_stops(text, r.stop),
                finish_reason=final_reason,
                generated_tokens=int(use.get("completion_tokens") or count),
                first_token_top=top or [],
                adapter_id=r.adapter_id,
                prompt_tokens=use.get("prompt_tokens"),
            )
        except LLMError:
            raise
        except Exception as exc:
            raise self._mid_stream_error(exc) from exc
        finally:
            await response.aclose()
            await client.aclose()


@dataclass
class _Request:
    prompt: str | None
    messages: list[dict[str, str]] | None
    max_new_tokens: int
    stop: list[str]
    adapter_id: str | None
    top_n_tokens: int
    seed: int | None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None


class _HTTPStatus(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


# --- helpers ---------------------------------------------------------------------------


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), _BACKOFF_MAX_S) if value is not None else None
    except ValueError:
        return None


def _body_message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):  # OpenAI / vLLM: {"error": {"message": ...}}
            return str(err.get("message") or err)
        if err:
            return str(err)
        if data.get("message"):
            return str(data["message"])
    return text.strip()[:300]


def _describe(exc: BaseException) -> tuple[int | None, str, float | None]:
    """(HTTP status or None, message, Retry-After) for any error from the HTTP stack."""
    if isinstance(exc, _HTTPStatus):
        return exc.status, str(exc), exc.retry_after
    kind = type(exc).__name__
    # huggingface_hub's typed TGI errors keep the HTTP error as their cause
    by_type = {"OverloadedError": 429, "ValidationError": 422, "GenerationError": 424}
    response = None
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None) if candidate is not None else None
        if response is not None:
            break
    status = getattr(response, "status_code", None)
    if status is None and kind in by_type:
        status = by_type[kind]
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
    if response is not None:
        with contextlib.suppress(Exception):  # a streamed body that was not read has no text
            message = _body_message(response.text)
    return status, message, _retry_after(response) if response is not None else None


def _is_timeout(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in (exc, exc.__cause__) if e is not None}
    return bool(
        names
        & {
            "InferenceTimeoutError",
            "TimeoutException",
            "ReadTimeout",
            "ConnectTimeout",
            "WriteTimeout",
            "PoolTimeout",
            "TimeoutError",
        }
    )


def _top_list(top_tokens: Any) -> list[tuple[str, float]]:
    out = []
    for t in top_tokens or []:
        text = t.get("text") if isinstance(t, dict) else getattr(t, "text", None)
        logprob = t.get("logprob") if isinstance(t, dict) else getattr(t, "logprob", None)
        if text is not None and logprob is not None:
            out.append((str(text), float(logprob)))
    return sorted(out, key=lambda x: -x[1])


def _tgi_options(r: _Request) -> dict[str, Any]:
    """The sampling and adapter options of TGI's text_generation, streamed or not."""
    return {
        "max_new_tokens": r.max_new_tokens,
        "stop": r.stop or None,
        "adapter_id": r.adapter_id,
        "top_n_tokens": r.top_n_tokens or None,
        "do_sample": r.seed is not None,
        "seed": r.seed,
        "repetition_penalty": r.repetition_penalty,
        "frequency_penalty": r.frequency_penalty,
    }


def _first_top(top_tokens: Any) -> list[tuple[str, float]]:
    """TGI's details.top_tokens is one list per generated token; take the first."""
    if not top_tokens:
        return []
    return _top_list(top_tokens[0])


def _openai_top(logprobs: dict[str, Any], chat: bool) -> list[tuple[str, float]]:
    if chat:
        content = logprobs.get("content") or []
        return [(t["token"], float(t["logprob"])) for t in content[0].get("top_logprobs", [])] if content else []
    tops = logprobs.get("top_logprobs") or []
    return sorted(((t, float(lp)) for t, lp in tops[0].items()), key=lambda x: -x[1]) if tops else []


def _from_openai_reason(reason: str | None, stop_reason: Any) -> str:
    if reason == "length":
        return "length"
    if isinstance(stop_reason, str) and stop_reason:
        return "stop_sequence"
    return "eos_token"
