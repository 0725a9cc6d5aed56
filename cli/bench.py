"""`candor bench ...`: run the benchmark scripts of bench/ and summarise their JSON as markdown.

The scripts live in the source checkout (bench/), not in the installed package: they start
servers and load models, and are run by people and CI, never imported by the service. Each
command here runs one script under `nice -n 10` with the same Python, passing any further
options through (`candor bench chat -- --clients 1,4`), and `candor bench summary` turns the
results in bench/results/ into the tables docs/performance.md quotes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from candor.errors import InvalidInputError, NotFoundError

app = typer.Typer()
bench = typer.Typer(
    help="Benchmarks (bench/*.py): run one, or summarise the results as markdown.", no_args_is_help=True
)
app.add_typer(bench, name="bench")

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"
SCRIPTS = {
    "chat": "bench_chat.py",
    "generation": "bench_generation.py",
    "llamacpp": "bench_llamacpp.py",
    "ingest": "bench_ingest.py",
    "retrieval": "bench_retrieval.py",
    "training": "bench_training.py",
    "dtype": "bench_dtype.py",
}
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def script_command(name: str, extra: list[str], nice: bool = True) -> list[str]:
    """The command line that runs benchmark ``name`` (a key of SCRIPTS) with ``extra`` options."""
    if name not in SCRIPTS:
        raise InvalidInputError(f"unknown benchmark {name!r}; one of {', '.join(SCRIPTS)}")
    script = BENCH_DIR / SCRIPTS[name]
    if not script.is_file():
        raise NotFoundError(f"{script} not found: the benchmarks run from a source checkout of Candor")
    cmd = [sys.executable, str(script), *extra]
    return ["nice", "-n", "10", *cmd] if nice else cmd


def _run(name: str, ctx: typer.Context, nice: bool) -> None:
    rc = subprocess.call(script_command(name, list(ctx.args), nice=nice), cwd=REPO)
    if rc != 0:
        raise typer.Exit(rc)


NiceOpt = Annotated[bool, typer.Option("--nice/--no-nice", help="Run under nice -n 10 (shared cores).")]


HELP = {
    "chat": "End-to-end chat latency p50/p95 and req/s at 1/4/8/16 clients",
    "generation": "Embedded model server: TTFT, decode tok/s, 1/4/8 clients",
    "llamacpp": "Embedded server vs llama.cpp on the same GGUF, side by side",
    "ingest": "Ingest throughput vs raw embedding throughput",
    "retrieval": "Retrieval latency p50/p95 and recall, up to 100k chunks",
    "training": "QLoRA-nf4 vs bf16 LoRA: tokens/s and peak memory",
    "dtype": "bf16 vs float32 on this CPU: prefill, decode and a training step",
}


def _register(name: str) -> None:
    """`candor bench <name>`: run bench/<script> with the options given after it."""

    def command(ctx: typer.Context, nice: NiceOpt = True) -> None:
        _run(name, ctx, nice)

    command.__name__ = f"{name}_cmd"
    bench.command(name, context_settings=PASS_THROUGH, help=f"{HELP[name]} (bench/{SCRIPTS[name]}).")(command)


for _name in SCRIPTS:
    _register(_name)


@bench.command("summary")
def summary_cmd(
    results: Annotated[Path, typer.Option(help="Folder of benchmark JSON files.")] = RESULTS_DIR,
    out: Annotated[Path | None, typer.Option(help="Also write the markdown here.")] = None,
) -> None:
    """Markdown tables of every result found in bench/results/."""
    text = render_summary(results)
    if out is not None:
        out.write_text(text, encoding="utf-8")
    typer.echo(text)


# --- the summary ---------------------------------------------------------------------------


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a readable benchmark result ({exc})") from None


def _f(value: Any, digits: int = 1) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return "–"


def _llamacpp(data: dict[str, Any], title: str) -> list[str]:
    lines = [f"### {title} ({data.get('when', '?')}, {data['workload']['threads']} threads)", ""]
    lines += [
        "| engine | TTFT s | decode tok/s | e2e tok/s | "
        + " | ".join(f"{c} clients tok/s" for c in data["workload"]["clients"])
        + " |"
    ]
    lines += ["|---" * (4 + len(data["workload"]["clients"])) + "|"]
    for key in ("embedded", "llama_cpp"):
        r = data[key]
        s = r["single_stream"]
        conc = " | ".join(_f(c["total_tok_s"]) for c in r["concurrency"])
        lines.append(
            f"| {r['engine']} | {_f(s['ttft_s_median'], 2)} | {_f(s['decode_tok_s_median'])} | "
            f"{_f(s['e2e_tok_s_median'])} | {conc} |"
        )
    lines += ["", "Ratios (embedded / llama.cpp):", ""]
    lines += [f"- {k}: **{v}**" for k, v in data.get("ratios", {}).items()]
    return lines + [""]


def _chat(data: dict[str, Any], title: str) -> list[str]:
    lines = [f"### {title} ({data.get('when', '?')})", ""]
    lines += [
        "| clients | req/s | p50 ms | p95 ms | retrieval p50 ms | generation p50 ms | generation share | errors |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for lv in data["levels"]:
        lines.append(
            f"| {lv['clients']} | {_f(lv['req_per_s'], 2)} | {_f(lv['latency_ms']['p50'], 0)} | "
            f"{_f(lv['latency_ms']['p95'], 0)} | {_f(lv['retrieval_ms']['p50'], 0)} | "
            f"{_f(lv['generation_ms']['p50'], 0)} | {_f(lv['share_of_server_time']['generation'] * 100, 0)}% | "
            f"{sum(lv['errors'].values())} |"
        )
    return lines + [""]


def _training(data: dict[str, Any]) -> list[str]:
    lines = [f"### Training ({data.get('when', '?')}, {data['workload']})", ""]
    lines += ["| config | precision | tokens/s (steady) | s/step | peak RSS MB |", "|---|---|---|---|---|"]
    for name, r in data["configs"].items():
        if "error" in r:
            lines.append(f"| {name} | failed | – | – | – |")
            continue
        lines.append(
            f"| {name} | {r['precision']} | {_f(r.get('steady_tokens_per_s'))} | {_f(r.get('steady_s_per_step'), 2)} "
            f"| {_f(r['peak_rss_mb'], 0)} |"
        )
    if data.get("ratios"):
        lines += [""] + [f"- {k}: **{v}**" for k, v in data["ratios"].items()]
    return lines + [""]


def _ingest(data: dict[str, Any]) -> list[str]:
    return [
        f"### Ingest ({data.get('when', '?')})",
        "",
        f"- ingest {_f(data.get('ingest_chunks_per_s'))} chunks/s vs raw encode "
        f"{_f(data.get('raw_encode_chunks_per_s'))} chunks/s: ratio **{data.get('ingest_over_raw_ratio')}**",
        "",
    ]


def _retrieval(data: dict[str, Any]) -> list[str]:
    small, large = data.get("latency_embedded", {}), data.get("latency_at_scale", {})
    return [
        f"### Retrieval ({data.get('when', '?')})",
        "",
        f"- {data['collection']['chunks']} chunks: p50 {_f(small.get('p50_ms'))} ms, p95 {_f(small.get('p95_ms'))} ms",
        f"- {large.get('chunks', '?')} chunks: p50 {_f(large.get('p50_ms'))} ms, p95 {_f(large.get('p95_ms'))} ms",
        "",
    ]


def render_summary(folder: Path) -> str:
    """One markdown document from whichever results exist (missing ones are listed, not invented)."""
    if not folder.is_dir():
        raise NotFoundError(f"no benchmark results folder at {folder}")
    out = ["# Candor benchmark summary", ""]
    missing = []
    for path in sorted(folder.glob("llamacpp-vs-embedded*.json")):
        out += _llamacpp(_load(folder, path.name), f"Generation: embedded vs llama.cpp [{path.stem}]")
    for path in sorted(folder.glob("chat*.json")):
        out += _chat(_load(folder, path.name), f"End-to-end chat [{path.stem}]")
    for path in sorted(folder.glob("generation-threads*.json")):
        data = _load(folder, path.name)
        out += [f"### Embedded generation [{path.stem}] ({data.get('when', '?')})", ""]
        out += ["| adapter | TTFT s | decode tok/s | total tok/s by clients |", "|---|---|---|---|"]
        for cfg in data["configs"]:
            s = cfg["single_stream"]
            conc = ", ".join(f"{c['clients']}: {_f(c['total_tok_s'])}" for c in cfg["concurrency"])
            out.append(f"| {cfg['adapter']} | {_f(s['ttft_s_median'], 2)} | {_f(s['decode_tok_s_median'])} | {conc} |")
        out.append("")
    for name, render in (("ingest.json", _ingest), ("retrieval.json", _retrieval), ("training.json", _training)):
        data = _load(folder, name)
        if data:
            out += render(data)
        else:
            missing.append(name)
    if missing:
        out += ["Not measured yet: " + ", ".join(missing), ""]
    return "\n".join(out)
