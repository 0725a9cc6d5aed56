"""`candor serve` (the API) and `candor ask` (a client of it)."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Annotated

import typer

from candor.errors import InvalidInputError, UnavailableError
from candor.settings import get_settings

app = typer.Typer()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default CANDOR_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default CANDOR_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the chat API (FastAPI under uvicorn)."""
    import uvicorn

    from candor.settings import apply_thread_settings

    settings = get_settings()
    apply_thread_settings(settings.torch_threads)  # first: before anything imported below starts a thread pool
    from candor.service.api import check_answerability

    check_answerability(settings)  # a clear message now rather than a traceback from the app's startup
    uvicorn.run(
        "candor.service.api:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Collection to answer from.")] = None,
    top_k: Annotated[int | None, typer.Option("-k", "--top-k", min=1, max=20)] = None,
    url: Annotated[str | None, typer.Option(help="API base URL (default CANDOR_API_URL).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="CANDOR_API_KEY", help="API key.")] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they arrive.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")] = False,
) -> None:
    """Ask the running API a question; print the answer and its sources."""
    import httpx

    settings = get_settings()
    base = (url or settings.api_url).rstrip("/")
    body = {"question": question, "collection": collection or settings.default_collection, "stream": stream}
    if top_k:
        body["top_k"] = top_k
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=settings.llm_timeout_s + 30) as client:
            if stream:
                result = _ask_stream(client, f"{base}/v1/chat", body, headers)
            else:
                resp = client.post(f"{base}/v1/chat", json=body, headers=headers)
                _raise_for(resp)
                result = resp.json()
    except httpx.TransportError as exc:
        raise UnavailableError(f"cannot reach the Candor API at {base}: {exc}") from None
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    if not stream:
        typer.echo(result["answer"])
    _print_footer(result)


def _raise_for(resp) -> None:
    if resp.status_code < 400:
        return
    try:
        message = resp.json().get("error", resp.text)
    except ValueError:
        message = resp.text
    if resp.status_code in (502, 503, 504):
        raise UnavailableError(f"API answered {resp.status_code}: {message}")
    raise InvalidInputError(f"API answered {resp.status_code}: {message}")


def _ask_stream(client, url: str, body: dict, headers: dict) -> dict:
    result: dict = {}
    with client.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code >= 400:
            resp.read()
            _raise_for(resp)
        event = None
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "token":
                    sys.stdout.write(data["text"])
                    sys.stdout.flush()
                elif event == "done":
                    result = data
                elif event == "error":
                    raise UnavailableError(data.get("error", "stream failed"))
    typer.echo("")
    return result


def _print_footer(result: dict) -> None:
    status = f"refused ({result['refusal_layer']})" if result["refused"] else "answered"
    grounded = result.get("grounded")
    typer.echo(f"\n[{status}; grounded={grounded}; answer_id={result['answer_id']}]")
    for i, c in enumerate(result.get("citations", []), start=1):
        typer.echo(f"  [{i}] {c['source']} ({c['doc_id']}, score {c['score']:.3f}): {c['snippet'][:100]}")
    evidence = result.get("evidence")
    if evidence:
        typer.echo(f"  evidence ({evidence['doc_id']}, P(answerable) {evidence['score']:.2f}):")
        typer.echo(textwrap.indent(textwrap.fill(mark_evidence(evidence), width=96), "    "))


def mark_evidence(evidence: dict, before: str = ">>", after: str = "<<") -> str:
    """The passage as the model saw it, with the reader's evidence span between markers."""
    passage, start, end = evidence["passage"], evidence.get("start"), evidence.get("end")
    if start is None or end is None:
        return passage
    return f"{passage[:start]}{before}{passage[start:end]}{after}{passage[end:]}"
