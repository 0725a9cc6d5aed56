"""`candor finetune build-data`, `candor finetune train`, `candor eval`.

Thin commands over candor.finetune; every knob comes from params.yaml (the
sections build_data / train / eval), options override a few of them.
Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer()
finetune = typer.Typer(help="Build the refusal dataset and train the LoRA adapter.", no_args_is_help=True)
app.add_typer(finetune, name="finetune")

SOURCE_HELP = (
    "SQuAD 2.0 data: a folder with the official train-v2.0.json/dev-v2.0.json or <split>.*.jsonl files, or one "
    ".json. Default: params `source:`, else CANDOR_DATA_SOURCE, else ../shared/data/squad2 beside a checkout."
)
PARAMS = typer.Option(Path("params.yaml"), "--params", help="params.yaml with build_data/train/eval sections.")
# the options every training command shares
OUTPUT_DIR = typer.Option(None, help="Override the run folder.")
MAX_STEPS = typer.Option(None, help="Override max optimizer steps.")
TIME_BUDGET = typer.Option(None, help="Stop (and save) after this many minutes; the next run resumes.")
FRESH = typer.Option(False, "--fresh", help="Ignore checkpoints and start over.")


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@finetune.command("build-data")
def build_data(
    params: Path = PARAMS,
    variant: str | None = typer.Option(
        None, help="A variant under build_data.variants in params.yaml (e.g. evidence, topic-only)."
    ),
    source: Path | None = typer.Option(None, help=SOURCE_HELP),
    split: str | None = typer.Option(None, help="Split name inside a JSONL folder (default: params)."),
    out_dir: Path | None = typer.Option(None, help="Output folder (default: params build_data.out_dir)."),
    seed: int | None = typer.Option(None, help="Override the seed."),
    size: int | None = typer.Option(None, help="Override the number of training examples."),
) -> None:
    """Write chat-format train/val JSONL, the validation articles' questions, and stats.json."""
    from candor.data_source import data_split
    from candor.finetune.dataset import build_dataset
    from candor.finetune.params import build_config, build_data_section, load_params
    from candor.finetune.squad import load_squad

    p = load_params(params)
    sec = build_data_section(p, variant)
    cfg = build_config(p, variant)
    if seed is not None:
        cfg.seed = seed
    if size is not None:
        cfg.size = size
    split = split or sec.get("split", "train")
    corpus = load_squad(data_split(split, source or sec.get("source")), split)
    out = out_dir or Path(sec.get("out_dir", "var/finetune/data"))
    stats = build_dataset(corpus, cfg, out)
    typer.echo(
        json.dumps(
            {
                "out_dir": str(out),
                "evidence": stats["evidence"],
                "train": stats["train"]["counts"],
                "val": stats["val"]["counts"],
                "val_articles": stats["val_articles"],
            },
            indent=1,
        )
    )


@finetune.command("train")
def train_cmd(
    params: Path = PARAMS,
    variant: str | None = typer.Option(None, help="A variant under train.variants in params.yaml (e.g. sft)."),
    output_dir: str | None = OUTPUT_DIR,
    train_file: str | None = typer.Option(None, help="Override the training JSONL."),
    max_steps: int | None = MAX_STEPS,
    time_budget_minutes: float | None = TIME_BUDGET,
    fresh: bool = FRESH,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """QLoRA training with optional self-distillation; resumes from the newest checkpoint."""
    _logging()
    from candor.finetune.params import load_params, train_config
    from candor.finetune.train import train
    from candor.settings import get_settings

    cfg = train_config(
        load_params(params),
        variant,
        output_dir=output_dir,
        train_file=train_file,
        max_steps=max_steps,
        time_budget_minutes=time_budget_minutes,
    )
    summary = train(cfg, get_settings(), resume=not fresh, progress=progress)
    summary.pop("config", None)
    typer.echo(json.dumps(summary, indent=1))


@finetune.command("train-verifier")
def train_verifier_cmd(
    params: Path = PARAMS,
    source: Path | None = typer.Option(None, help=SOURCE_HELP),
    split: str | None = typer.Option(None, help="Split inside a JSONL folder (default: params build_data.split)."),
    output_dir: str | None = OUTPUT_DIR,
    max_steps: int | None = MAX_STEPS,
    time_budget_minutes: float | None = TIME_BUDGET,
    fresh: bool = FRESH,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train the answerability verifier (a cross-encoder on the embedding model); resumes from checkpoints."""
    _logging()
    from candor.data_source import data_split
    from candor.finetune.params import load_params, section, verifier_config
    from candor.finetune.squad import load_squad
    from candor.finetune.verifier import train_verifier
    from candor.settings import get_settings

    p = load_params(params)
    data = section(p, "build_data")
    cfg = verifier_config(p, output_dir=output_dir, max_steps=max_steps, time_budget_minutes=time_budget_minutes)
    split = split or data.get("split", "train")
    corpus = load_squad(data_split(split, source or data.get("source")), split)
    summary = train_verifier(cfg, corpus, get_settings().resolved_embed_model_path, resume=not fresh, progress=progress)
    summary.pop("config", None)
    typer.echo(json.dumps(summary, indent=1))


def _model_map(models: list[str] | None, default: dict) -> dict[str, str]:
    if not models:
        return dict(default)
    out = {}
    for spec in models:
        name, _, path = spec.partition("=")
        out[name] = path or ("base" if name == "base" else name)
    return out


@app.command("eval")
def eval_cmd(
    params: Path = PARAMS,
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="NAME=ADAPTER_DIR or 'base'; repeat to compare (default: params eval.models)."
    ),
    mode: str | None = typer.Option(None, help="oracle or rag (default: params)."),
    source: Path | None = typer.Option(None, help=SOURCE_HELP),
    split: str | None = typer.Option(None, help="Split in the JSONL folder (default: params, dev)."),
    limit: int | None = typer.Option(None, help="Evaluate a stratified sample of this many questions (0 = all)."),
    calibration_limit: int | None = typer.Option(None, help="Validation questions used to choose the threshold."),
    no_calibration: bool = typer.Option(False, "--no-calibration", help="Skip choosing a threshold."),
    collection: str | None = typer.Option(None, help="RAG mode: the collection holding the paragraphs."),
    out: Path | None = typer.Option(None, help="Output JSON (a .md report is written beside it)."),
    verifier: Path | None = typer.Option(
        None, help="An answerability verifier folder: its 1 - P(answerable) becomes every model's refusal signal."
    ),
    reader: Path | None = typer.Option(
        None, help="An answerability reader folder: its 1 - P(answerable) becomes every model's refusal signal."
    ),
    questions: Path | None = typer.Option(
        None,
        help="A labelled question set (JSONL: question, answers, is_impossible, kind) to put end to end to an "
        "already ingested --collection, instead of SQuAD (e.g. samples/handbook.questions.jsonl).",
    ),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Evaluate base and adapters side by side: answers, refusals, hallucination, the threshold curve."""
    _logging()
    from candor.errors import InvalidInputError
    from candor.finetune.params import load_params, section
    from candor.settings import get_settings

    settings = get_settings()
    ev = section(load_params(params), "eval")
    models = _model_map(model, ev.get("models") or {"base": "base"})
    mode = mode or ev.get("mode", "oracle")
    if mode not in ("oracle", "rag"):
        raise InvalidInputError("mode must be oracle or rag")
    default_out = f"reports/eval-{questions.name.split('.')[0]}.json" if questions else f"reports/eval-{mode}.json"
    out = out or Path(ev.get("out", default_out))
    limit = ev.get("limit", 0) if limit is None else limit
    cal_limit = ev.get("calibration_limit", 600) if calibration_limit is None else calibration_limit
    if no_calibration:
        cal_limit = -1
    if questions is not None:
        _eval_question_set(settings, ev, models, questions, collection, out, verifier, reader)
        return
    common = {
        "source": source,
        "split": split,
        "limit": limit,
        "out": out,
        "progress": progress,
        "verifier_path": verifier,
        "reader_path": reader,
    }
    if mode == "oracle":
        from candor.finetune.run_eval import run_oracle_eval

        results = run_oracle_eval(settings, ev, models, calibration_limit=cal_limit, **common)
    else:
        from candor.finetune.rag import run_rag_eval

        results = run_rag_eval(settings, ev, models, collection=collection, **common)
    for name, res in results["models"].items():
        m = res.get("at_threshold") or res["model_only"]
        typer.echo(
            f"{name}: hallucination {100 * m['hallucination_rate']:.1f}%  over-refusal {100 * m['over_refusal']:.1f}%"
            f"  answered-F1 {100 * m['answered_f1']:.1f}  F1_RG {100 * m['f1_rg']:.1f}  AUROC {m['auroc']:.3f}"
        )
    typer.echo(f"wrote {out} and {out.with_suffix('.md')}")


@finetune.command("ship")
def ship_cmd(
    run_dir: Path = typer.Argument(..., help="A training run folder (holds adapter/ and train_summary.json)."),
    dest: Path = typer.Option(Path("models/candor-refusal"), help="Where the shipped adapter goes."),
    stats: Path = typer.Option(Path("var/finetune/data/stats.json"), help="The dataset's stats.json."),
    eval_json: Path | None = typer.Option(None, "--eval", help="An evaluation JSON to quote in the model card."),
    eval_model: list[str] | None = typer.Option(None, help="Models of the evaluation to show in the card."),
) -> None:
    """Copy a trained adapter into models/ with a model card generated from its measured numbers."""
    from candor.finetune.model_card import ship_adapter

    out = ship_adapter(run_dir, dest, stats, eval_json, eval_model)
    typer.echo(f"shipped {out}")


def _ship_command(name: str, what: str, run_help: str, evals: tuple[str, str], target: str) -> None:
    """`candor finetune ship-verifier|ship-reader`: ``target`` ("module:function") copies the run's model into
    models/ with a card quoting the evaluations given with the ``evals`` option (its flag and help)."""
    flag, evals_help = evals

    def ship(
        run_dir: Path = typer.Argument(..., help=run_help),
        dest: Path = typer.Option(Path(f"models/candor-{what}"), help=f"Where the shipped {what} goes."),
        reports: list[Path] | None = typer.Option(None, flag, help=evals_help),
    ) -> None:
        import importlib

        module, _, fn = target.partition(":")
        typer.echo(f"shipped {getattr(importlib.import_module(module), fn)(run_dir, dest, reports)}")

    ship.__doc__ = f"Copy a trained {what} into models/ with a card generated from its measured numbers."
    finetune.command(name)(ship)


_ship_command(
    "ship-verifier",
    "verifier",
    "A verifier run folder (holds verifier/ and train_summary.json).",
    ("--eval", "Evaluation JSONs to quote in the card."),
    "candor.finetune.model_card:ship_verifier",
)


def _reader_sources(p: dict, source: Path | None, split: str | None) -> list[str]:
    """build_data's source (its train split) first, then params reader.extra_sources that exist here."""
    from candor.data_source import data_split
    from candor.finetune.params import section
    from candor.finetune.reader import parse_source

    data = section(p, "build_data")
    split = split or data.get("split", "train")
    primary = data_split(split, source or data.get("source"))
    specs = [str(primary) if primary.is_file() else f"{primary}:{split}"]
    for extra in section(p, "reader").get("extra_sources") or []:
        if parse_source(str(extra))[0].exists():
            specs.append(str(extra))
        else:
            typer.echo(f"warning: reader extra source {extra} not found here; training without it", err=True)
    return specs


@finetune.command("train-reader")
def train_reader_cmd(
    params: Path = PARAMS,
    source: Path | None = typer.Option(None, help=SOURCE_HELP),
    split: str | None = typer.Option(None, help="Split inside a JSONL folder (default: params build_data.split)."),
    output_dir: str | None = OUTPUT_DIR,
    max_steps: int | None = MAX_STEPS,
    time_budget_minutes: float | None = TIME_BUDGET,
    fresh: bool = FRESH,
) -> None:
    """Train the extractive answerability reader (Trainer; resumes from its newest checkpoint)."""
    _logging()
    from candor.answerability import describe_base_model
    from candor.finetune.params import load_params, reader_config
    from candor.finetune.reader import train_reader
    from candor.settings import get_settings

    p = load_params(params)
    cfg = reader_config(
        p,
        _reader_sources(p, source, split),
        output_dir=output_dir,
        max_steps=max_steps,
        time_budget_minutes=time_budget_minutes,
    )
    base = get_settings().resolved_embed_model_path
    summary = train_reader(cfg, base, describe_base_model(base), resume=not fresh)
    summary.pop("config", None)
    summary.pop("data", None)
    typer.echo(json.dumps(summary, indent=1))


@finetune.command("eval-reader")
def eval_reader_cmd(
    reader: Path = typer.Argument(..., help="A reader folder (reader.json + reader.safetensors)."),
    params: Path = PARAMS,
    source: Path | None = typer.Option(None, help=SOURCE_HELP),
    split: str = typer.Option("dev", help="The split to report."),
    limit: int = typer.Option(0, help="A stratified sample of this many questions (0 = all)."),
    threshold: float | None = typer.Option(None, help="Threshold on 1 - P(answerable); default: the reader's."),
    mode: str = typer.Option(
        "oracle", help="oracle: each question with its own paragraph; rag: what the collection retrieves for it."
    ),
    collection: str | None = typer.Option(None, help="rag: the collection (default: params eval.rag.collection)."),
    int8: bool = typer.Option(False, "--int8", help="The reader with int8 weights, at its int8 threshold."),
    out: Path = typer.Option(Path("reports/reader-oracle-dev.json"), help="Output JSON (+ .md beside it)."),
) -> None:
    """The reader alone: SQuAD 2.0 EM/F1 (HasAns/NoAns) and Candor's decision metrics, oracle or RAG (no
    generation: retrieved passages read as the service reads them)."""
    _logging()
    from candor.finetune.params import load_params, section
    from candor.finetune.reader_eval import run_reader_eval, write_reader_report
    from candor.reader import AnswerabilityReader
    from candor.settings import get_settings

    settings = get_settings()
    ev = section(load_params(params), "eval")
    model = AnswerabilityReader(reader, settings.resolved_embed_model_path, int8=int8)
    report = run_reader_eval(
        settings, ev, model, mode=mode, split=split, source=source, limit=limit, threshold=threshold,
        collection=collection,
    )  # fmt: skip
    report["reader"] = str(reader) + (" (int8)" if int8 else "")
    write_reader_report(report, out)
    d, s = report["decision"], report["squad2"]
    typer.echo(
        f"AUROC {d['auroc']:.3f}  hallucination {100 * d['hallucination_rate']:.1f}%  over-refusal "
        f"{100 * d['over_refusal']:.1f}%  SQuAD2 EM {100 * s['all']['em']:.1f} F1 {100 * s['all']['f1']:.1f}"
    )
    typer.echo(f"wrote {out} and {out.with_suffix('.md')}")


@finetune.command("quantize-reader")
def quantize_reader_cmd(
    reader: Path = typer.Argument(..., help="A reader folder (reader.json + reader.safetensors)."),
    params: Path = PARAMS,
    source: Path | None = typer.Option(None, help=SOURCE_HELP),
    split: str | None = typer.Option(None, help="Split inside a JSONL folder (default: params build_data.split)."),
) -> None:
    """Choose the int8 reader's own threshold on the validation articles (CANDOR_READER_INT8 serves it)."""
    _logging()
    from candor.finetune.params import load_params, reader_config
    from candor.finetune.reader_quantize import quantize_reader
    from candor.settings import get_settings

    p = load_params(params)
    cfg = reader_config(p, _reader_sources(p, source, split))
    got = quantize_reader(reader, cfg, get_settings().resolved_embed_model_path)
    v = got["validation"]
    typer.echo(
        f"int8 threshold {got['threshold']:.4f} (validation: {v['examples']} examples, AUROC {v['auroc']:.3f}, "
        f"hallucination {100 * v['hallucination_rate']:.1f}%, over-refusal {100 * v['over_refusal']:.1f}%)"
    )


def _eval_question_set(settings, ev: dict, models: dict, questions: Path, collection: str | None, out: Path,
                       verifier: Path | None, reader: Path | None) -> None:  # fmt: skip
    from candor.finetune.question_set_eval import run_question_set_eval
    from candor.finetune.run_eval import load_eval_verifier

    rag = ev.get("rag", {}) or {}
    result = run_question_set_eval(
        settings,
        models,
        questions,
        collection or settings.default_collection,
        out,
        answerability=load_eval_verifier(settings, ev, verifier, reader),
        llm_url=rag.get("llm_url"),
        server_threads=int(rag.get("server_threads", 1)),
        concurrency=int(rag.get("concurrency", 4)),
        n_boot=int(ev.get("bootstrap", 1000)),
    )
    for name, res in result["models"].items():
        m = res["model_only"]
        typer.echo(
            f"{name}: hallucination {100 * m['hallucination_rate']:.1f}%  over-refusal {100 * m['over_refusal']:.1f}%"
            f"  answered-F1 {100 * m['answered_f1']:.1f}  layers {res['refusal_layers']}"
        )
    typer.echo(f"wrote {out} and {out.with_suffix('.md')}")


_ship_command(
    "ship-reader",
    "reader",
    "A reader run folder (holds final/, summary.json, data_stats.json).",
    ("--report", "eval-reader JSONs to quote in the card."),
    "candor.finetune.reader_card:ship_reader",
)
