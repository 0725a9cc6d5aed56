"""What the bench scripts share: machine state, JSON result files, streamed-request timing and its summaries.

Not a benchmark. The scripts import it as ``common`` (``python bench/bench_X.py`` puts bench/ first on
sys.path; bench_llamacpp.py and bench_prefill.py also insert it themselves). Every helper keeps the JSON
keys and figures the scripts wrote before it existed, so bench/results/*.json stay comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


# --- machine state and result files ----------------------------------------------------------


def load_avg_1m() -> float:
    return round(os.getloadavg()[0], 2)


def load_avgs() -> list[float]:
    """1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


# The flags that decide which kernels run: AVX2 only (float32 is the fast path) or AVX-512 with bf16
SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """The SIMD flags this CPU has (``SIMD_FLAGS``) and the float type Candor's ``auto`` picks on it."""
    from candor.hardware import cpu_flags, resolve_dtype

    flags = cpu_flags()
    return {"simd": [f for f in SIMD_FLAGS if f in flags], "auto_dtype": resolve_dtype("auto")}


def machine_info(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """CPU count and flags, 1-minute load before the run, any ``extra`` entries, and the Python version."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu_info(),
        "load_avg_1m_before": load_avg_1m(),
        **(extra or {}),
        "python": platform.python_version(),
    }


def report_header(machine_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``when`` and ``machine`` entries every server benchmark report starts with."""
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(machine_extra)}


def write_json(out: Path, data: dict[str, Any], echo: bool = False) -> None:
    """Write ``data`` as indented JSON to ``out`` (folders created); ``echo`` also prints it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if echo:
        print(json.dumps(data, indent=2))


def finish_report(report: dict[str, Any], out: Path, all_load_avgs: bool = False) -> None:
    """Record the load after the run in report["machine"], write the report to ``out`` and say so."""
    report["machine"]["load_avg_1m_after"] = load_avg_1m()
    if all_load_avgs:
        report["machine"]["load_avg_after"] = load_avgs()
    write_json(out, report)
    print(f"wrote {out}")


# --- the SQuAD 2.0 data (CANDOR_DATA_SOURCE) -----------------------------------------------------


def squad_split(split: str, explicit: Path | None = None) -> Path:
    """What ``load_squad`` reads for ``split``: ``explicit``, else CANDOR_DATA_SOURCE, else ../shared beside
    the checkout. Missing data ends the script with the resolver's message (it names the setting), no traceback."""
    from candor.data_source import data_split
    from candor.settings import SettingsError

    try:
        return data_split(split, explicit)
    except SettingsError as exc:
        raise SystemExit(f"bench: {exc}") from None


def squad_corpus(split: str, explicit: Path | None = None) -> Any:
    """The split as a ``candor.finetune.squad.Corpus`` (JSONL folder or official JSON alike)."""
    from candor.finetune.squad import load_squad

    return load_squad(squad_split(split, explicit), split)


def squad_paragraphs(split: str) -> list[dict[str, str]]:
    """``{"doc_id", "title", "text"}`` per paragraph, in file order (the ``*.paragraphs.jsonl`` rows)."""
    corpus = squad_corpus(split)
    return [{"doc_id": p.doc_id, "title": p.title, "text": p.text} for p in corpus.paragraphs.values()]


def squad_questions(split: str) -> list[dict[str, Any]]:
    """``{"id", "doc_id", "question", "answers", "is_impossible"}`` per question, in file order."""
    corpus = squad_corpus(split)
    return [
        {
            "id": q.id,
            "doc_id": q.doc_id,
            "question": q.question,
            "answers": list(q.answers),
            "is_impossible": q.is_impossible,
        }
        for q in corpus.questions
    ]


def squad_paragraphs_jsonl(split: str, work_dir: Path) -> Path:
    """A ``*.paragraphs.jsonl`` file to ingest: the source's own, or one written under ``work_dir`` from the
    official JSON."""
    source = squad_split(split)
    own = source / f"{split}.paragraphs.jsonl"
    if source.is_dir() and own.is_file():
        return own
    out = Path(work_dir) / f"{split}.paragraphs.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = squad_paragraphs(split)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


# --- command-line options ---------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]`` (the --clients options)."""
    return [int(x) for x in text.split(",")]


def add_base_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-model",
        type=Path,
        default=Path(os.environ.get("CANDOR_BASE_MODEL_PATH") or REPO / "var" / "test-cache" / "base-model"),
        help="Converted base model folder (converted from the GGUF on first use).",
    )


def add_server_run_args(parser: argparse.ArgumentParser, name: str) -> None:
    """--server-args, --label, --base-model, --out and --work-dir (var/bench/<name>) of a model-server benchmark."""
    parser.add_argument("--server-args", default="", help="Extra `candor model-server` options, space separated.")
    parser.add_argument("--label", default="", help="Suffix of the output file (e.g. before/after a fix).")
    add_base_model_arg(parser)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench" / name)


def engine_settings(spec: str, onnx_cache_dir: Path) -> dict[str, str]:
    """The model-server settings one engine entry of a benchmark names.

    A torch dtype (bfloat16, float32, int8) serves with the torch engine at that dtype; ``onnx-int4``,
    ``onnx-int8`` or ``onnx-float32`` with the onnxruntime engine at that precision, its exports
    cached in ``onnx_cache_dir`` (so a rerun does not export again)."""
    if spec.startswith("onnx-"):
        return {
            "model_engine": "onnxruntime",
            "onnx_precision": spec.removeprefix("onnx-"),
            "onnx_cache_dir": str(onnx_cache_dir.resolve()),
        }
    return {"model_dtype": spec}


def labelled_out(args: argparse.Namespace, stem: str) -> Path:
    """--out, or bench/results/<stem>[-<label>].json."""
    suffix = f"-{args.label}" if args.label else ""
    return args.out or RESULTS / f"{stem}{suffix}.json"


# --- statistics -------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0-100) of ``values``; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


# --- streamed requests --------------------------------------------------------------------------


class StreamClock:
    """Times one streamed generation: started at creation, ``tick()`` at each token received."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0

    def tick(self) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now
        self.tokens += 1

    def result(self, input_tokens: int) -> dict[str, float]:
        """TTFT, total seconds, tokens, input tokens and decode tokens/s (after the first token)."""
        first, last, tokens = self.first, self.last, self.tokens
        assert first is not None and last is not None
        return {
            "ttft_s": first - self.started,
            "total_s": last - self.started,
            "tokens": tokens,
            "input_tokens": input_tokens,
            "decode_tok_s": (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0,
        }


def single_stream_summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of single-stream runs (StreamClock results)."""
    return {
        "runs": runs,
        "ttft_s_median": statistics.median(r["ttft_s"] for r in runs),
        "decode_tok_s_median": statistics.median(r["decode_tok_s"] for r in runs),
        "e2e_tok_s_median": statistics.median(r["tokens"] / r["total_s"] for r in runs),
        "tokens_median": statistics.median(r["tokens"] for r in runs),
        "input_tokens_median": statistics.median(r["input_tokens"] for r in runs),
    }


def concurrency_summary(clients: int, results: list[dict[str, float]], wall: float) -> dict[str, Any]:
    """Total tokens/s and TTFT/request medians of ``clients`` clients' requests that took ``wall`` seconds."""
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "total_tok_s": tokens / wall,
        "ttft_s_median": statistics.median(r["ttft_s"] for r in results),
        "ttft_s_max": max(r["ttft_s"] for r in results),
        "request_s_median": statistics.median(r["total_s"] for r in results),
    }


def stream_line(name: str, result: dict[str, Any]) -> str:
    """One printed line of a single_stream/concurrency result."""
    s = result["single_stream"]
    conc = ", ".join(f"{c['clients']}c {c['total_tok_s']:.1f}" for c in result["concurrency"])
    return (
        f"{name}: TTFT {s['ttft_s_median']:.2f} s, decode {s['decode_tok_s_median']:.1f} tok/s, "
        f"e2e {s['e2e_tok_s_median']:.1f} tok/s ({s['tokens_median']} tok, {s['input_tokens_median']} in); "
        f"total tok/s {conc}"
    )


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of process ``pid`` in MB, or None when /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
