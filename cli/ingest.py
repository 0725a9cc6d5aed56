"""`candor ingest`, `candor collections list|show|delete` and `candor retrieve`.

Thin commands over candor.ingest; the heavy imports happen inside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from candor.errors import CandorError, InvalidInputError
from candor.settings import get_settings

app = typer.Typer()
collections_app = typer.Typer(help="List, inspect and delete document collections.", no_args_is_help=True)
app.add_typer(collections_app, name="collections")


class IngestFailed(CandorError):
    """Some inputs failed; the rest was ingested (exit status 1)."""

    exit_code = 1


def _collection_option() -> Any:
    return typer.Option(
        None, "--collection", "-c", help="Collection name (default: CANDOR_DEFAULT_COLLECTION, 'docs')."
    )


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@app.command("ingest")
def ingest(
    paths: list[Path] = typer.Argument(..., help="Files and directories (recursive): .txt .md .html .pdf .jsonl"),
    collection: str | None = _collection_option(),
    prune: bool = typer.Option(False, "--prune", help="Delete documents that came from files no longer among PATHS."),
    reindex: bool = typer.Option(
        False, "--reindex", help="Rebuild the collection from PATHS with the current settings (drops the rest)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on a terminal."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    follow_links: bool = typer.Option(
        False,
        "--follow-links",
        help="Read symbolic links that point out of a PATHS folder (default: each is a failure, not read).",
    ),
) -> None:
    """Ingest documents incrementally: only new or changed documents are embedded.

    Exits 1 when any file or JSONL line failed (each is listed with its reason);
    everything else is ingested and nothing stored is lost.
    """
    from candor.ingest.pipeline import ingest_paths

    settings = get_settings()
    name = collection or settings.default_collection
    report = ingest_paths(
        settings,
        paths,
        name,
        prune=prune,
        reindex=reindex,
        progress=progress and sys.stderr.isatty(),
        follow_links=follow_links,
    )
    if as_json:
        _print_json(report.to_dict())
    else:
        typer.echo(report.summary())
    if not report.ok:
        raise IngestFailed(f"{len(report.failures)} input(s) failed; the rest was ingested")


@app.command("retrieve")
def retrieve(
    query: str = typer.Argument(..., help="The question to search for."),
    collection: str | None = _collection_option(),
    k: int | None = typer.Option(None, "-k", "--top-k", help="How many chunks (default: CANDOR_TOP_K, 4)."),
    as_json: bool = typer.Option(False, "--json", help="Print the chunks as JSON."),
    width: int = typer.Option(300, help="Characters of each chunk to print (0: all)."),
) -> None:
    """Show the chunks the chat service would retrieve for QUERY, with sources and cosine scores."""
    from dataclasses import asdict

    from candor.ingest.retriever import Retriever

    settings = get_settings()
    chunks = Retriever(settings).retrieve(query, collection or settings.default_collection, k or settings.top_k)
    if as_json:
        _print_json([asdict(c) for c in chunks])
        return
    if not chunks:
        typer.echo("no chunks (the collection is empty)")
    for rank, c in enumerate(chunks, start=1):
        text = " ".join(c.text.split())
        if width and len(text) > width:
            text = text[:width] + " ..."
        title = f" ({c.title})" if c.title else ""
        typer.echo(f"[{rank}] score {c.score:.3f}  {c.source}{title}\n    {text}")


@collections_app.command("list")
def collections_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List collections with their document and chunk counts."""
    from candor.ingest.collections import describe_collection, list_collections

    settings = get_settings()
    infos = [describe_collection(settings, n, sample=0) for n in list_collections(settings)]
    if as_json:
        _print_json([i.to_dict() for i in infos])
        return
    if not infos:
        typer.echo("no collections")
    for i in infos:
        model = (i.fingerprint or {}).get("embed_model", "?")
        typer.echo(f"{i.name}\t{i.documents} documents\t{i.chunks} chunks\t{model}")


@collections_app.command("show")
def collections_show(
    name: str = typer.Argument(..., help="Collection name."),
    verify: bool = typer.Option(False, "--verify", help="Check every chunk id against the manifest."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a collection: counts, fingerprint (model, chunking), a few sources; --verify checks consistency."""
    from candor.ingest.collections import describe_collection, verify_collection

    settings = get_settings()
    info = describe_collection(settings, name)
    check = verify_collection(settings, name) if verify else None
    if as_json:
        data = info.to_dict()
        if check is not None:
            data["verify"] = {
                "ok": check.ok,
                "expected_chunks": check.expected_chunks,
                "actual_chunks": check.actual_chunks,
                "missing": check.missing[:50],
                "orphans": check.orphans[:50],
                "pending": check.pending,
            }
        _print_json(data)
    else:
        typer.echo(f"collection {info.name}: {info.documents} documents, {info.chunks} chunks")
        if info.manifest_missing:
            typer.echo("  manifest missing (an interrupted delete?): the next ingest rebuilds it")
        if info.pending:
            typer.echo(f"  {info.pending} pending document(s) (an ingest is running, or one was killed)")
        for key, value in (info.fingerprint or {}).items():
            typer.echo(f"  {key}: {value}")
        for source in info.sources:
            typer.echo(f"  e.g. {source}")
        if check is not None:
            state = "ok" if check.ok else "MISMATCH"
            typer.echo(
                f"  verify: {state} ({check.actual_chunks} chunks in Chroma, {check.expected_chunks} in the "
                f"manifest, {len(check.missing)} missing, {len(check.orphans)} orphans, {check.pending} pending)"
            )
    if check is not None and not check.ok:
        raise CandorError(f"collection {name!r} does not match its manifest")


@collections_app.command("delete")
def collections_delete(
    name: str = typer.Argument(..., help="Collection name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a collection: its chunks and its manifest."""
    from candor.ingest.collections import delete_collection

    if not yes:
        if not sys.stdin.isatty():
            raise InvalidInputError(f"delete collection {name!r}? Refusing without a terminal: pass --yes")
        typer.confirm(f"Delete collection {name!r} and all its chunks?", abort=True)
    delete_collection(get_settings(), name)
    typer.echo(f"deleted collection {name!r}")
