"""`candor model prepare` and `candor model-server`: the base model and the TGI-compatible server."""

from __future__ import annotations

from pathlib import Path

import typer

from candor.profile import PROFILES
from candor.settings import load_settings

app = typer.Typer()
model_app = typer.Typer(help="The base model: prepare it offline.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("prepare")
def prepare(
    force: bool = typer.Option(False, "--force", help="Redo Candor's own conversion even if it is done."),
    profile: str | None = typer.Option(
        None, "--profile", help=f"Base-model profile: {', '.join(PROFILES)} (default CANDOR_MODEL_PROFILE)."
    ),
) -> None:
    """Convert the profile's GGUF package into a local HF model directory (once).

    The directory is CANDOR_BASE_MODEL_PATH, or DATA_DIR/models/<profile's folder> (SmolLM2: base).
    A directory that already holds a model is left as it is. A profile's licence terms (Gemma's) are
    printed on stderr.
    """
    import logging

    from candor.model_server.model_prep import prepare_base_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings(**({"model_profile": profile} if profile else {}))
    path = prepare_base_model(settings, force=force)
    if settings.profile.terms:
        typer.echo(settings.profile.terms, err=True)
    typer.echo(str(path))


@app.command("model-server")
def model_server(
    adapter: list[str] = typer.Option(
        [], "--adapter", "-a", help="A LoRA adapter as name=path (PEFT folder); repeat for more."
    ),
    host: str | None = typer.Option(None, help="Address to bind (default CANDOR_MODEL_SERVER_HOST)."),
    port: int | None = typer.Option(None, help="Port (default CANDOR_MODEL_SERVER_PORT)."),
    threads: int | None = typer.Option(None, help="torch threads (default CANDOR_MODEL_SERVER_THREADS)."),
    dtype: str | None = typer.Option(
        None, help="bfloat16, float32, float16 or int8 (CPU dynamic int8; default CANDOR_MODEL_DTYPE)."
    ),
    engine: str | None = typer.Option(
        None, help="torch or onnxruntime (CPU, ONNX Runtime GenAI; default CANDOR_MODEL_ENGINE)."
    ),
    onnx_precision: str | None = typer.Option(
        None, help="int4, int8 or float32: the onnxruntime engine's weights (default CANDOR_ONNX_PRECISION)."
    ),
    max_batch_size: int | None = typer.Option(None, help="Rows decoded together (CANDOR_MAX_BATCH_SIZE)."),
    max_concurrent_requests: int | None = typer.Option(
        None, help="Requests in flight before 429 (CANDOR_MAX_CONCURRENT_REQUESTS)."
    ),
    base_model: Path | None = typer.Option(None, help="HF model directory (default CANDOR_BASE_MODEL_PATH)."),
    allow_base_mismatch: bool = typer.Option(
        False, "--allow-base-mismatch", help="Load adapters trained for another base model anyway."
    ),
) -> None:
    """Serve the base model and LoRA adapters over TGI's HTTP protocol (and OpenAI's routes).

    CANDOR_ADAPTER_PATH, if set, is loaded as the adapter named "refusal".
    """
    import logging

    from candor.model_server.adapters import parse_adapter_specs
    from candor.model_server.app import run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {
        "model_server_threads": threads,
        "model_dtype": dtype,
        "model_engine": engine,
        "onnx_precision": onnx_precision,
        "max_batch_size": max_batch_size,
        "max_concurrent_requests": max_concurrent_requests,
        "base_model_path": base_model,
    }
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    specs = parse_adapter_specs(adapter)
    run_server(settings, specs, allow_base_mismatch=allow_base_mismatch, host=host, port=port)
