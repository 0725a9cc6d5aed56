"""`candor bench`: the commands exist with help, unknown names are clear errors, and the summary
renders the JSON the bench scripts write (ratios included) without inventing missing results."""

from __future__ import annotations

import json

import pytest

from candor.cli.bench import SCRIPTS, render_summary, script_command
from candor.cli.main import main
from candor.errors import InvalidInputError, NotFoundError


def test_every_bench_command_has_help(capsys):
    for name in [*SCRIPTS, "summary"]:
        assert main(["bench", name, "--help"]) == 0
        assert "Usage" in capsys.readouterr().out
    assert main(["bench", "--help"]) == 0
    assert "llamacpp" in capsys.readouterr().out


def test_script_command_runs_the_checked_in_script():
    cmd = script_command("chat", ["--clients", "1"])
    assert (
        cmd[:3] == ["nice", "-n", "10"] and cmd[-3].endswith("bench/bench_chat.py") and cmd[-2:] == ["--clients", "1"]
    )
    assert script_command("training", [], nice=False)[1].endswith("bench_training.py")
    with pytest.raises(InvalidInputError, match="unknown benchmark"):
        script_command("nope", [])


def _single(ttft, decode):
    return {"ttft_s_median": ttft, "decode_tok_s_median": decode, "e2e_tok_s_median": decode * 0.8}


def test_summary_renders_results_and_lists_what_is_missing(tmp_path):
    llama = {
        "when": "t",
        "workload": {"threads": 2, "clients": [1, 4]},
        "embedded": {
            "engine": "candor",
            "single_stream": _single(0.4, 30.0),
            "concurrency": [{"total_tok_s": 28.0}, {"total_tok_s": 60.0}],
        },
        "llama_cpp": {
            "engine": "llama.cpp",
            "single_stream": _single(1.2, 120.0),
            "concurrency": [{"total_tok_s": 110.0}, {"total_tok_s": 115.0}],
        },
        "ratios": {"decode_tok_s (embedded/llama.cpp; >1 = embedded faster)": 0.25},
    }
    (tmp_path / "llamacpp-vs-embedded.json").write_text(json.dumps(llama))
    level = {
        "clients": 4,
        "req_per_s": 1.5,
        "errors": {},
        "latency_ms": {"p50": 900, "p95": 2000},
        "retrieval_ms": {"p50": 20},
        "generation_ms": {"p50": 700},
        "share_of_server_time": {"generation": 0.8},
    }
    (tmp_path / "chat.json").write_text(json.dumps({"when": "t", "levels": [level]}))
    text = render_summary(tmp_path)
    assert "| llama.cpp | 1.20 | 120.0 | 96.0 | 110.0 | 115.0 |" in text
    assert "**0.25**" in text
    assert "| 4 | 1.50 | 900 | 2000 | 20 | 700 | 80% | 0 |" in text
    assert "Not measured yet: ingest.json, retrieval.json, training.json" in text
    (tmp_path / "training.json").write_text("{broken")
    with pytest.raises(InvalidInputError, match="training.json"):
        render_summary(tmp_path)
    with pytest.raises(NotFoundError):
        render_summary(tmp_path / "absent")
