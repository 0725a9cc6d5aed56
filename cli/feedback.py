"""`candor feedback ...`, `candor keys ...`, `candor db ...`: the answer log, API keys, the schema.

Thin commands over ``candor.feedback.store.AnswerStore``; the store (and with
it SQLAlchemy and Alembic) is imported inside each command so that
``candor --help`` stays fast. Errors are CandorErrors, printed by the CLI root.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from candor.errors import InvalidInputError

if TYPE_CHECKING:
    from candor.feedback.schemas import Answer, ApiKey, Flag
    from candor.feedback.store import AnswerStore

app = typer.Typer()
feedback_app = typer.Typer(
    help="The answer log and flags: list, show, review, export for retraining, purge, erase a key's data.",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="API keys: create (secret shown once), list, revoke.", no_args_is_help=True)
db_app = typer.Typer(help="The answer-log database (SQLite or Postgres): schema migrations.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")


def _store() -> AnswerStore:
    from candor.feedback.store import AnswerStore
    from candor.settings import get_settings

    return AnswerStore(get_settings())


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    from candor.feedback.retention import parse_when

    return parse_when(text)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2))


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _ts(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInputError(f"{question} Refusing without a terminal: pass --yes")
    if not typer.confirm(question):
        raise typer.Abort()


# --- candor db -------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Option("head", help="Target schema revision."),
) -> None:
    """Create or upgrade the answer-log schema (idempotent; safe while the API runs)."""
    store = _store()
    try:
        before, after = store.migrate(revision)
    finally:
        store.close()
    if before == after:
        typer.echo(f"answer log at {store.url}: schema already at {after}")
    else:
        typer.echo(f"answer log at {store.url}: schema {before or '(empty)'} -> {after}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision (e.g. 0001), or 'base' to drop every table."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Roll the schema back to an older revision (to run an older Candor). May delete data."""
    store = _store()
    try:
        _confirm(f"Downgrade the answer log at {store.url} to {revision}? Dropped columns lose their data.", yes)
        before, after = store.downgrade(revision)
    finally:
        store.close()
    typer.echo(f"answer log at {store.url}: schema {before or '(empty)'} -> {after or '(empty)'}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and the one this Candor expects."""
    store = _store()
    try:
        current, head = store.schema_revision()
    finally:
        store.close()
    state = "up to date" if current == head else "needs `candor db upgrade`"
    typer.echo(f"answer log at {store.url}: schema {current or '(empty)'}, expected {head} ({state})")


# --- candor keys ---------------------------------------------------------------------


def _key_line(key: ApiKey) -> str:
    cols = ",".join(key.collections) if key.collections is not None else "*"
    state = f"revoked {_ts(key.revoked_at)}" if key.revoked_at else "active"
    trust = "trusted" if key.trusted else "untrusted"
    return f"{key.id}  {key.role.value:<5}  {trust:<9}  {state:<27}  collections={cols}  {key.name}"


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="Who or what the key is for (shown in listings)."),
    role: str = typer.Option("user", help="user: chat and flag own answers; admin: also ingest, read all, export."),
    collection: list[str] = typer.Option(
        None,
        "--collection",
        "-c",
        help="Limit the key to this collection (repeat for several). Default: all.",
    ),
    trusted: bool | None = typer.Option(
        None,
        "--trusted/--untrusted",
        help="Flags from trusted keys go to training without review. Default: admins trusted, users not.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print {key_id, secret, ...} as JSON."),
) -> None:
    """Create an API key and print its secret: it is stored hashed and cannot be shown again."""
    store = _store()
    try:
        key_id, secret = store.create_key(
            name, role, collection or None, trusted if trusted is not None else role == "admin"
        )
        key = store.get_key(key_id)
    finally:
        store.close()
    if as_json:
        _print_json({**key.to_dict(), "secret": secret})
        return
    typer.echo(_key_line(key))
    typer.echo(f"secret: {secret}")
    typer.echo("Store the secret now: Candor keeps only its hash.", err=True)


@keys_app.command("list")
def keys_list(
    active_only: bool = typer.Option(False, "--active-only", help="Hide revoked keys."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List API keys (never their secrets)."""
    store = _store()
    try:
        keys = store.list_keys(include_revoked=not active_only)
    finally:
        store.close()
    if as_json:
        _print_json([k.to_dict() for k in keys])
        return
    if not keys:
        typer.echo("no API keys (create one with `candor keys create NAME`)")
    for key in keys:
        typer.echo(_key_line(key))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (from `candor keys list`).")) -> None:
    """Revoke a key: it stops working at once; its answers and flags stay (see `feedback erase-key`)."""
    store = _store()
    try:
        key = store.revoke_key(key_id)
    finally:
        store.close()
    typer.echo(_key_line(key))


# --- candor feedback ------------------------------------------------------------------


def _answer_line(a: Answer) -> str:
    if a.status.value == "failed":
        state = "FAILED"
    elif a.refused:
        state = f"refused:{a.refusal_layer.value if a.refusal_layer else '?'}"
    else:
        state = "answered"
    verdicts = ",".join(sorted({f.verdict.value for f in a.flags})) or "-"
    when = _ts(a.created_at)
    return f"{a.id}  {when}  {a.collection:<12}  {state:<24}  flags={verdicts:<20}  {_short(a.question, 60)}"


@feedback_app.command("list")
def feedback_list(
    flagged: bool | None = typer.Option(None, "--flagged/--unflagged", help="Only flagged, or only unflagged."),
    verdict: str | None = typer.Option(None, help="Only answers with a flag of this verdict."),
    collection: str | None = typer.Option(None, help="Only this collection."),
    key: str | None = typer.Option(None, "--key", help="Only answers asked with this API key id."),
    refused: bool | None = typer.Option(None, "--refused/--answered", help="Only refusals, or only answers."),
    failed: bool = typer.Option(False, "--failed", help="Only failures (no answer was produced)."),
    since: str | None = typer.Option(None, help="Newer than an ISO time or an age (7d, 12h)."),
    limit: int = typer.Option(20, min=1, max=500),
    cursor: str | None = typer.Option(None, help="Continue after this answer id (printed at the end)."),
    as_json: bool = typer.Option(False, "--json", help="Full records as JSON."),
) -> None:
    """List logged answers, newest first."""
    store = _store()
    try:
        page = store.list_answers(
            flagged=flagged,
            verdict=verdict,
            collection=collection,
            api_key_id=key,
            refused=refused,
            status="failed" if failed else None,
            since=_when(since),
            limit=limit,
            cursor=cursor,
        )
    finally:
        store.close()
    if as_json:
        _print_json({"items": [a.to_dict() for a in page.items], "next_cursor": page.next_cursor})
        return
    if not page.items:
        typer.echo("no answers match")
    for a in page.items:
        typer.echo(_answer_line(a))
    if page.next_cursor:
        typer.echo(f"more: --cursor {page.next_cursor}")


@feedback_app.command("show")
def feedback_show(
    answer_id: str = typer.Argument(..., help="The answer id."),
    as_json: bool = typer.Option(False, "--json", help="The full record as JSON."),
) -> None:
    """Show one answer: question, retrieved chunks, answer, refusal, timings and its flags."""
    store = _store()
    try:
        a = store.get_answer(answer_id)
    finally:
        store.close()
    if as_json:
        _print_json(a.to_dict())
        return
    out = [
        f"answer {a.id}  ({_ts(a.created_at)} UTC, {a.status.value})",
        f"collection: {a.collection}   key: {a.api_key_id or '-'}   prompt: {a.prompt_version or '-'}",
        f"model: {a.model_base or '-'}  adapter: {a.adapter or '-'} {a.adapter_version or ''}".rstrip(),
        f"question: {a.question}",
    ]
    if a.history:
        kept = a.history_in_prompt if a.history_in_prompt is not None else "all"
        out.append(f"history: {len(a.history)} turns ({kept} in prompt)")
    if a.status.value == "failed":
        out.append(f"error: {a.error}")
    else:
        layer = f" (by {a.refusal_layer.value})" if a.refused and a.refusal_layer else ""
        out.append(f"answer{' [REFUSED' + layer + ']' if a.refused else ''}: {a.answer}")
        if a.raw_answer and a.raw_answer != a.answer:
            out.append(f"model said: {a.raw_answer}")
        out.append(f"grounded: {a.grounded}  support: {a.grounding_support}")
        out.append(f"refusal confidence: {a.refusal_confidence}")
    t = a.timings_ms
    out.append(f"timings ms: retrieval {t.retrieval}  generation {t.generation}  total {t.total}")
    for c in a.chunks:
        mark = "in prompt" if c.in_prompt else "dropped"
        out.append(f"  [{c.rank + 1}] {c.score:.3f}  {c.source}  ({mark})  {_short(c.text, 70)}")
    for f in a.flags:
        out.append(_flag_line(f))
    typer.echo("\n".join(out))


def _flag_line(f: Flag) -> str:
    extra = f"  correction: {_short(f.correction, 50)}" if f.correction else ""
    extra += f"  comment: {_short(f.comment, 40)}" if f.comment else ""
    return f"  flag {f.id}  {f.verdict.value:<19}  {f.review_status.value:<8}  key {f.api_key_id or '-'}{extra}"


@feedback_app.command("review")
def feedback_review(
    flag_ids: list[str] = typer.Argument(None, help="Flags to approve or reject; none: list pending flags."),
    approve: bool = typer.Option(False, "--approve", help="Approve: the flags may reach training."),
    reject: bool = typer.Option(False, "--reject", help="Reject: the flags never reach training."),
    note: str | None = typer.Option(None, help="Why (kept with the review)."),
    reviewer: str | None = typer.Option(None, help="Who reviews (kept with the review)."),
    limit: int = typer.Option(50, min=1, max=1000, help="How many pending flags to list."),
) -> None:
    """Review flags from untrusted keys: list pending ones, or approve / reject by id."""
    store = _store()
    try:
        if not flag_ids:
            if approve or reject:
                raise InvalidInputError("name the flag ids to approve or reject")
            page = store.list_flags(review_status="pending", limit=limit)
            if not page.items:
                typer.echo("no flags waiting for review")
            for f in page.items:
                a = store.get_answer(f.answer_id)
                typer.echo(_flag_line(f))
                typer.echo(f"      Q: {_short(a.question, 90)}")
                typer.echo(f"      A: {_short(a.answer, 90)}")
            if page.next_cursor:
                typer.echo(f"(more than {limit} pending)")
            return
        if approve == reject:
            raise InvalidInputError("say --approve or --reject")
        flags = store.review_flags(flag_ids, "approved" if approve else "rejected", reviewer=reviewer, note=note)
    finally:
        store.close()
    for f in flags:
        typer.echo(_flag_line(f))


@feedback_app.command("export")
def feedback_export(
    out: str | None = typer.Option(
        None, "--out", "-o", help="JSONL file to write ('-': stdout). Default: DATA_DIR/feedback/flags.jsonl."
    ),
    include_pending: bool = typer.Option(
        False, "--include-pending", help="Also flags still waiting for review (never for training)."
    ),
    verdict: list[str] = typer.Option(None, "--verdict", help="Only these verdicts (repeat)."),
    collection: list[str] = typer.Option(None, "--collection", help="Only these collections (repeat)."),
    since: str | None = typer.Option(None, help="Flags newer than an ISO time or an age (7d)."),
) -> None:
    """Export approved flags with their question, exact context and answer, as JSONL for retraining."""
    from candor.feedback.export import dumps

    filters: dict[str, Any] = {
        "review_statuses": ["approved", "pending"] if include_pending else ["approved"],
        "verdicts": verdict or None,
        "collections": collection or None,
        "since": _when(since),
    }
    store = _store()
    try:
        if out == "-":
            for row in store.export_flags(**filters):
                sys.stdout.write(dumps(row) + "\n")
            return
        path = Path(out) if out else store.settings.data_dir / "feedback" / "flags.jsonl"
        n = store.write_export(path, **filters)
    finally:
        store.close()
    typer.echo(f"wrote {n} flag(s) to {path}")


@feedback_app.command("purge")
def feedback_purge(
    older_than: str | None = typer.Option(
        None, help="Delete answers older than this (30d, 12h, 2w). Default: CANDOR_ANSWER_RETENTION_DAYS."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would go."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Apply the retention period: delete old answers with their chunks and flags."""
    from datetime import timedelta

    from candor.feedback.retention import parse_duration

    store = _store()
    try:
        if older_than is not None:
            age = parse_duration(older_than)
        elif store.settings.answer_retention_days is not None:
            age = timedelta(days=store.settings.answer_retention_days)
        else:
            raise InvalidInputError("say how old: --older-than 30d (or set CANDOR_ANSWER_RETENTION_DAYS)")
        would = store.count_older_than(age)
        if dry_run:
            typer.echo(f"would delete {would.answers} answer(s) and {would.flags} flag(s) older than {age}")
            return
        if would.answers == 0:
            typer.echo(f"nothing older than {age}")
            return
        _confirm(f"Delete {would.answers} answer(s) and {would.flags} flag(s) older than {age}?", yes)
        done = store.purge_older_than(age)
    finally:
        store.close()
    typer.echo(f"deleted {done.answers} answer(s) and {done.flags} flag(s) older than {age}")


@feedback_app.command("erase-key")
def feedback_erase_key(
    key_id: str = typer.Argument(..., help="The API key whose data to erase."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Erase everything a key produced (answers, flags) and revoke it, before it can reach training."""
    store = _store()
    try:
        key = store.get_key(key_id)
        _confirm(f"Erase every answer and flag of key {key.id} ({key.name}) and revoke it?", yes)
        result = store.erase_key(key_id)
    finally:
        store.close()
    typer.echo(f"key {result.key_id}: erased {result.answers} answer(s) and {result.flags} flag(s); key revoked")


@feedback_app.command("stats")
def feedback_stats(
    since: str | None = typer.Option(None, help="Only answers newer than an ISO time or an age (7d)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Answers, refusals, failures and flags per adapter version (rejected flags not counted)."""
    store = _store()
    try:
        stats = store.adapter_stats(since=_when(since))
    finally:
        store.close()
    if as_json:
        _print_json(
            [{**s.model_dump(mode="json"), "flag_rate": s.flag_rate, "refusal_rate": s.refusal_rate} for s in stats]
        )
        return
    if not stats:
        typer.echo("no answers logged")
    for s in stats:
        name = f"{s.adapter or '(base)'} {s.adapter_version or ''}".strip()
        verdicts = " ".join(f"{k}={v}" for k, v in s.flags_by_verdict.items()) or "-"
        typer.echo(
            f"{name:<30}  answers {s.answers:>6}  refusals {s.refusals:>6} ({s.refusal_rate:.1%})  "
            f"failures {s.failures:>4}  flags {s.flags:>4} ({s.flag_rate:.1%})  {verdicts}"
        )


def _threshold_lines(t: dict[str, Any]) -> list[str]:
    head = (
        f"{t['collection']}: refuses at {t['threshold']} ({t['source'] or 'no threshold'}; {t['layer']} {t['model']})"
    )
    lines = [head]
    cal = t.get("calibration")
    if cal:
        lines.append(
            f"  calibration: {cal['threshold']:.4f} from {cal['flags']} reviewed flag(s), {cal['at']} by "
            f"{cal['by'] or '?'} ({cal['source']}): over-refusal {cal['over_refusal']:.3f}, hallucination "
            f"{cal['hallucination_rate']:.3f} on those flags"
        )
        before = cal.get("before") or {}
        if before:
            lines.append(
                f"  replaced {before.get('threshold')}: over-refusal {before.get('over_refusal', 0):.3f}, "
                f"hallucination {before.get('hallucination_rate', 0):.3f}"
            )
        if cal.get("note"):
            lines.append(f"  {cal['note']}")
    elif t["source"] == "validation":
        lines.append(
            "  the reader's validation threshold (SQuAD): `candor calibrate -c NAME` fits it to this collection"
        )
    return lines


@feedback_app.command("threshold")
def feedback_threshold(
    collection: str | None = typer.Option(None, "--collection", "-c", help="One collection; default: all calibrated."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A collection's refusal threshold and where it came from: its calibration (when, from how many reviewed
    flags, the trade-off chosen), the setting, or the reader's validation threshold."""
    from candor.decision import READER
    from candor.feedback.thresholds import effective_threshold
    from candor.reader import WEIGHTS_FILE, ReaderMeta, folder_version
    from candor.retrain.readers import serving_reader_folder
    from candor.settings import get_settings

    settings = get_settings()
    folder = serving_reader_folder(settings)
    if folder is None:
        raise InvalidInputError("no reader is configured (CANDOR_READER_PATH): the reader's threshold does not apply")
    model, stored = folder_version(folder, WEIGHTS_FILE), ReaderMeta.read(folder).threshold
    store = _store()
    try:
        records = [store.get_collection_threshold(collection)] if collection else store.list_collection_thresholds()
    finally:
        store.close()
    names = [collection] if collection else [r.collection for r in records if r is not None]
    by_name = {r.collection: r for r in records if r is not None}
    out = [{"collection": n, **effective_threshold(settings, READER, model, stored, by_name.get(n))} for n in names]
    if as_json:
        _print_json(out)
        return
    if not out:
        typer.echo(f"no collection is calibrated: every collection refuses at {stored} (the reader's validation)")
    for t in out:
        for line in _threshold_lines(t):
            typer.echo(line)
