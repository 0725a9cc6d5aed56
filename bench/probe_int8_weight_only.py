"""Probe, not a serving mode: weight-only int8 (bf16 activations) vs bf16 with the shipped adapter.

HF generate (greedy, 32 tokens), the same 40 questions as bench_int8_agreement.py; run from the
repository root pinned like the other benchmarks. Writes bench/results/int8_weight_only_probe.json.
"""

import json
import time

import torch

from candor.settings import apply_thread_settings

apply_thread_settings(1)
from pathlib import Path  # noqa: E402

from common import squad_corpus  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from candor.finetune.evaluate import oracle_items  # noqa: E402
from candor.model_server.adapters import build_merged_model  # noqa: E402
from candor.model_server.decode_attention import register_decode_attention  # noqa: E402
from candor.prompts import build_messages, is_refusal  # noqa: E402


class WOLinear(torch.nn.Module):
    def __init__(self, lin, act):
        super().__init__()
        w = lin.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-8) / 127
        self.register_buffer("wq", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(act))
        self.act = act

    def forward(self, x):
        shp = x.shape
        return torch._weight_int8pack_mm(x.reshape(-1, shp[-1]).to(self.act), self.wq, self.scale).reshape(
            *shp[:-1], -1
        )


def wo(m, act=torch.bfloat16):
    for _, mod in list(m.named_modules()):
        for cn, c in list(mod.named_children()):
            if isinstance(c, torch.nn.Linear):
                setattr(mod, cn, WOLinear(c, act))
    return m.to(act)


base = Path("var/test-cache/base-model")
adapter = Path("models/candor-refusal")
tok = AutoTokenizer.from_pretrained(base)
items = oracle_items(squad_corpus("dev"), limit=40, seed=13, distractors=0)
prompts = [
    tok(
        tok.apply_chat_template(build_messages(it.question, it.chunks), tokenize=False, add_generation_prompt=True),
        return_tensors="pt",
    ).input_ids
    for it in items
]
res = {}
secs = {}
for name in ["bfloat16", "int8_weight_only"]:
    m = build_merged_model(base, adapter, torch.float32, register_decode_attention())
    m = m.to(torch.bfloat16) if name == "bfloat16" else wo(m)
    out = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            g = m.generate(ids, max_new_tokens=32, do_sample=False)
            out.append(g[0, ids.shape[1] :].tolist())
    secs[name] = round(time.perf_counter() - t0, 1)
    res[name] = out
    print(name, secs[name], flush=True)
a, b = res["bfloat16"], res["int8_weight_only"]
eos = tok.convert_tokens_to_ids("<|im_end|>")


def text(t):
    return tok.decode([x for x in t if x != eos], skip_special_tokens=True).strip()


summary = {
    "first_token_agreement": sum(x[0] == y[0] for x, y in zip(a, b, strict=True)) / len(a),
    "exact_text_agreement": sum(text(x) == text(y) for x, y in zip(a, b, strict=True)) / len(a),
    "refusals": {
        "bfloat16": sum(is_refusal(text(x)) for x in a),
        "int8_weight_only": sum(is_refusal(text(y)) for y in b),
    },
    "seconds": secs,
}
print(json.dumps(summary))
Path("bench/results/int8_weight_only_probe.json").write_text(json.dumps(summary, indent=2) + "\n")
