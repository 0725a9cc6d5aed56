"""Evaluate base and tuned models on refusal and answer quality, side by side.

Oracle mode builds each question's context from the data (the paragraph the
question was written against, plus ``distractors`` other passages) and
generates in-process with batched greedy decoding: the same chat template,
prompt fitting and first-token alternatives the served path uses, and the
refusal confidence from ``candor.refusal_score`` (the service's function).
RAG mode (``rag.py``) sends every question through the service's answer core.

Several models share one base in memory: adapters are loaded side by side
with peft and switched per model; "base" runs with the adapters disabled.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.metrics import Scored, choose_threshold, exact_match, summarize, token_f1
from candor.finetune.squad import Corpus, Paragraph, Question
from candor.generation import GenerationParams, clip, repeats_a_sentence
from candor.model_server.adapters import INT8, load_dtype
from candor.profile import end_of_turn_id, resolve_device, resolve_model_dtype
from candor.prompts import ContextChunk, evidence_text, fit_messages, gives_no_answer
from candor.refusal_score import refusal_confidence
from candor.settings import apply_thread_settings

log = logging.getLogger("candor.finetune.evaluate")

BASE = "base"


@dataclass
class EvalItem:
    id: str
    category: str  # answerable | unanswerable | retrieval_miss | no_context
    question: str
    chunks: list[ContextChunk]
    answers: list[str]
    should_refuse: bool
    retrieval_scores: list[float] | None = None
    gold_retrieved: bool | None = None


@dataclass
class Prediction:
    item_id: str
    text: str
    refused_text: bool
    confidence: float
    first_token_top: list[tuple[str, float]]
    new_tokens: int
    extra: dict = field(default_factory=dict)


def sample_questions(questions: Sequence[Question], limit: int, seed: int) -> list[Question]:
    """A deterministic sample keeping the answerable/unanswerable mix (all when limit is 0)."""
    qs = sorted(questions, key=lambda q: q.id)
    if not limit or limit >= len(qs):
        return qs
    rng = random.Random(f"eval-sample:{seed}")
    una = [q for q in qs if q.is_impossible]
    ans = [q for q in qs if not q.is_impossible]
    n_una = round(limit * len(una) / len(qs))
    picked = rng.sample(una, n_una) + rng.sample(ans, limit - n_una)
    return sorted(picked, key=lambda q: q.id)


def oracle_items(
    corpus: Corpus,
    limit: int = 0,
    seed: int = 13,
    distractors: int = 0,
    extra_categories: Sequence[str] = (),
    extra_limit: int = 200,
) -> list[EvalItem]:
    """Each question with its own paragraph (+ distractors from the same article, placed at random).

    Unanswerable questions get the paragraph they were written against, "as given": it looks
    relevant and does not hold the answer. ``extra_categories`` adds answerable questions with their
    gold paragraph left out (retrieval_miss) or with no context at all (no_context).
    """
    rng = random.Random(f"oracle:{seed}")
    by_article: dict[str, list[Paragraph]] = {}
    for p in sorted(corpus.paragraphs.values(), key=lambda p: p.doc_id):
        by_article.setdefault(p.article, []).append(p)

    def others(gold: Paragraph, k: int) -> list[Paragraph]:
        pool = [p for p in by_article[gold.article] if p.doc_id != gold.doc_id]
        return rng.sample(pool, min(k, len(pool)))

    items = []
    for q in sample_questions(corpus.questions, limit, seed):
        gold = corpus.paragraphs[q.doc_id]
        paras = [gold, *others(gold, distractors)]
        rng.shuffle(paras)
        items.append(
            EvalItem(
                q.id,
                "unanswerable" if q.is_impossible else "answerable",
                q.question,
                [ContextChunk(p.text, p.title) for p in paras],
                list(q.answers),
                q.is_impossible,
            )
        )
    answerable = [q for q in sample_questions(corpus.questions, 0, seed) if not q.is_impossible]
    for cat in extra_categories:
        if cat not in ("retrieval_miss", "no_context"):
            raise InvalidInputError(f"unknown extra eval category {cat!r} (retrieval_miss, no_context)")
        for q in random.Random(f"{cat}:{seed}").sample(answerable, min(extra_limit, len(answerable))):
            gold = corpus.paragraphs[q.doc_id]
            paras = [] if cat == "no_context" else others(gold, max(1, distractors + 1))
            items.append(
                EvalItem(
                    f"{cat}:{q.id}",
                    cat,
                    q.question,
                    [ContextChunk(p.text, p.title) for p in paras],
                    list(q.answers),
                    True,
                )
            )
    return items


def parse_models(models: dict[str, str] | Sequence[str]) -> dict[str, str]:
    """{name: "base" | adapter dir}; a list gets names from the folder names."""
    if isinstance(models, dict):
        out = dict(models)
    else:
        out = {}
        for spec in models:
            name, _, path = spec.partition("=")
            if not path:
                path = name
                name = BASE if spec == BASE else Path(spec).name
            out[name] = path
    for name, path in out.items():
        if path != BASE and not (Path(path) / "adapter_config.json").exists():
            raise NotFoundError(f"model {name!r}: no adapter_config.json in {path}")
    if not out:
        raise InvalidInputError("no models to evaluate")
    return out


class LocalGenerator:
    """Batched greedy generation with transformers, one base and any number of adapters."""

    def __init__(self, base_path: Path, dtype: str = "auto", threads: int = 1, top_n: int = 5, device: str = "auto"):
        apply_thread_settings(threads)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(base_path) / "config.json").exists():
            raise NotFoundError(f"base model not found at {base_path} (run `candor model prepare`)")
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.tokenizer.padding_side = "left"

        if dtype == INT8:  # adapters stay unmerged here (several side by side); int8 is a serving mode
            raise InvalidInputError("evaluation runs in auto, bfloat16, float32 or float16: set eval.dtype, not int8")
        self.device = resolve_device(device)  # CANDOR_DEVICE: auto is CUDA where torch sees a GPU
        self.model = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=load_dtype(resolve_model_dtype(dtype, self.device))
        ).to(self.device)
        self.model.eval()
        self.top_n = top_n
        self.adapters: list[str] = []
        self.eos_id = end_of_turn_id(self.tokenizer)  # the chat template's end of turn (candor.profile)

    def add_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.eval()
        self.adapters.append(name)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.render(messages, tokenize=True))

    def render(self, messages: list[dict[str, str]], tokenize: bool = False):
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize)
        if tokenize and hasattr(out, "keys"):
            return out["input_ids"]
        return out

    def _use(self, name: str):
        import contextlib

        if name == BASE:
            return self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def generate(
        self,
        prompts: list[str],
        model_name: str,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        progress=None,
        params: GenerationParams | None = None,
    ) -> list[tuple[str, list[tuple[str, float]], int]]:
        """(text, first-token top-n (token, logprob), new tokens) per prompt, in input order.

        ``params`` are the served ones (``candor.generation``): the repetition penalty (transformers'
        processor, over prompt and generated tokens as TGI and the model server apply it), the frequency
        penalty (the model server's: raw counts over prompt and generated tokens) and the stop sequences
        (greedy decoding: the text is cut at the first one, the prefix a stopped request returns).
        """
        import torch

        enc_lens = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: enc_lens[i])
        results: list = [None] * len(prompts)
        with self._use(model_name), torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer(
                    [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(self.device)
                extra = {}
                if params is not None and params.tgi().get("repetition_penalty"):
                    extra["repetition_penalty"] = params.repetition_penalty
                if params is not None and params.frequency_penalty:
                    pads = (batch["attention_mask"] == 0).sum(dim=1).tolist()
                    extra["logits_processor"] = [_FrequencyPenalty(params.frequency_penalty, pads)]
                out = self.model.generate(
                    **batch,
                    **extra,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    output_scores=True,
                    return_dict_in_generate=True,
                    eos_token_id=self.eos_id,
                    pad_token_id=self.tokenizer.pad_token_id or self.eos_id,
                )
                first = torch.log_softmax(out.scores[0].float(), dim=-1)
                top = first.topk(self.top_n, dim=-1)
                gen = out.sequences[:, batch["input_ids"].shape[1] :]
                for row, i in enumerate(idx):
                    ids = gen[row].tolist()
                    n = ids.index(self.eos_id) if self.eos_id in ids else len(ids)
                    text = self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
                    if params is not None and params.stop:
                        text = params.cut_stop(text).strip()
                    alts = [
                        (self.tokenizer.decode([tid]), float(lp))
                        for tid, lp in zip(top.indices[row].tolist(), top.values[row].tolist(), strict=True)
                    ]
                    results[i] = (text, alts, n)
                if progress is not None:
                    progress(len(idx))
        return results


class _FrequencyPenalty:
    """The model server's frequency penalty (model_server/sampling.py): each token's logit minus the
    penalty times its count over the prompt and the tokens generated so far (left padding not counted)."""

    def __init__(self, penalty: float, pads: list[int]):
        self.penalty = penalty
        self.pads = pads

    def __call__(self, input_ids, scores):
        import torch

        counts = torch.zeros_like(scores)
        for row, pad in enumerate(self.pads):
            ids = input_ids[row, pad:]
            counts[row].scatter_add_(0, ids, torch.ones_like(ids, dtype=scores.dtype))
        return scores - self.penalty * counts


def reader_evidence(reader, items: Sequence[EvalItem], mode: str, progress=None) -> list[tuple[float, str | None]]:
    """Per item, as served: the reader's P(answerable) (its best passage; 0 with none) and the prompt's
    evidence line for ``mode`` (``candor.prompts.evidence_text`` on the best passage's span)."""
    out = []
    for it in items:
        texts = [c.text for c in it.chunks]
        evs = reader.read(it.question, texts) if texts else []
        best = max(evs, key=lambda ev: ev.answerable) if evs else None
        line = None if best is None else evidence_text(mode, texts[best.passage], best.start, best.end)
        out.append((0.0 if best is None else best.answerable, line))
        if progress is not None:
            progress(1)
    return out


def verifier_scores(verifier, items: Sequence[EvalItem], progress=None) -> list[float]:
    """The answerability verifier's P(answerable) per item: its best passage (0 with none), as served."""
    out = []
    for it in items:
        out.append(verifier.answerable_probability(it.question, [c.text for c in it.chunks]))
        if progress is not None:
            progress(1)
    return out


def predict(
    gen: LocalGenerator,
    items: Sequence[EvalItem],
    model_name: str,
    max_input_tokens: int,
    max_new_tokens: int,
    batch_size: int,
    progress=None,
    answerable: Sequence[float] | None = None,
    params: GenerationParams | None = None,
    evidence: Sequence[str | None] | None = None,
) -> list[Prediction]:
    """Generate for every item; the refusal confidence is the verifier's when ``answerable`` is given.

    ``evidence``: the prompt's evidence line per item (``reader_evidence``). Each answer is then cut
    at its first repeated sentence, as the answer core does (``extra["repeated_raw"]`` says whether
    the raw text repeated one).
    """
    prompts = []
    for i, it in enumerate(items):
        line = None if evidence is None else evidence[i]
        fitted = fit_messages(it.question, it.chunks, [], gen.count_tokens, max_input_tokens, evidence=line)
        prompts.append(gen.render(fitted.messages))
    outs = gen.generate(prompts, model_name, max_new_tokens, batch_size, progress, params)
    preds = []
    for i, (it, (raw, alts, n)) in enumerate(zip(items, outs, strict=True)):
        p_ans = None if answerable is None else answerable[i]
        conf = refusal_confidence(alts, it.retrieval_scores, p_ans)
        extra = {} if p_ans is None else {"answerable": round(p_ans, 5)}
        text = clip(raw)
        extra["repeated_raw"] = repeats_a_sentence(raw)
        preds.append(Prediction(it.id, text, gives_no_answer(text), float(conf or 0.0), alts, n, extra))
    return preds


def score(items: Sequence[EvalItem], preds: Sequence[Prediction]):
    """Pair items with predictions as metrics.Scored."""
    out = []
    for it, p in zip(items, preds, strict=True):
        em = f1 = 0.0
        if not it.should_refuse and not p.refused_text:
            em, f1 = exact_match(p.text, it.answers), token_f1(p.text, it.answers)
        out.append(Scored(it.should_refuse, p.refused_text, p.confidence, em, f1, it.category))
    return out


@dataclass
class EvalRun:
    """Everything one `candor eval` run measured, per model."""

    config: dict
    models: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def write_predictions(path: Path, items: Sequence[EvalItem], preds: Sequence[Prediction]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for it, p in zip(items, preds, strict=True):
            fh.write(
                json.dumps(
                    {
                        "id": it.id,
                        "category": it.category,
                        "question": it.question,
                        "answers": it.answers,
                        "should_refuse": it.should_refuse,
                        "gold_retrieved": it.gold_retrieved,
                        "prediction": p.text,
                        "refused_text": p.refused_text,
                        "confidence": p.confidence,
                        "first_token_top": p.first_token_top,
                        **p.extra,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


def evaluate_oracle(
    gen: LocalGenerator,
    models: dict[str, str],
    items: Sequence[EvalItem],
    calibration: Sequence[EvalItem] = (),
    *,
    max_input_tokens: int,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    threshold_objective: str = "minimax",
    thresholds: dict[str, float | None] | None = None,
    n_boot: int = 1000,
    out_dir: Path | None = None,
    progress: bool = True,
    verifier=None,
    params: GenerationParams | None = None,
    evidence_mode: str = "none",
) -> dict[str, dict]:
    """Per model: metrics at its own decisions and at the threshold chosen on ``calibration``.

    With a ``verifier`` every model's refusal confidence is the verifier's (1 - P(answerable)), the
    signal the service then applies before generating; the model-only metrics do not change.
    """
    from tqdm import tqdm

    cal_ans = ans = cal_ev = ev = None
    if verifier is not None and evidence_mode != "none":
        if not hasattr(verifier, "read"):
            raise InvalidInputError("evidence in the prompt needs an answerability reader (--reader)")
        with tqdm(total=len(calibration) + len(items), desc="reader evidence", disable=not progress) as bar:
            cal_read = reader_evidence(verifier, calibration, evidence_mode, bar.update)
            read = reader_evidence(verifier, items, evidence_mode, bar.update)
        cal_ans, cal_ev = [a for a, _ in cal_read], [e for _, e in cal_read]
        ans, ev = [a for a, _ in read], [e for _, e in read]
    elif evidence_mode != "none":
        raise InvalidInputError("evidence in the prompt needs an answerability reader (--reader)")
    elif verifier is not None:
        with tqdm(total=len(calibration) + len(items), desc="verifier", disable=not progress) as bar:
            cal_ans = verifier_scores(verifier, calibration, bar.update)
            ans = verifier_scores(verifier, items, bar.update)
    results: dict[str, dict] = {}
    for name, path in models.items():
        if path != BASE and name not in gen.adapters:
            gen.add_adapter(name, path)
    for name in models:
        t0 = time.monotonic()
        res: dict = {"model": models[name]}
        threshold = (thresholds or {}).get(name)
        if calibration:
            with tqdm(total=len(calibration), desc=f"{name} calibration", disable=not progress) as bar:
                cal_preds = predict(
                    gen,
                    calibration,
                    name,
                    max_input_tokens,
                    max_new_tokens,
                    batch_size,
                    bar.update,
                    cal_ans,
                    params,
                    cal_ev,
                )
            cal_scored = score(calibration, cal_preds)
            threshold, cal_point = choose_threshold(cal_scored, threshold_objective)
            res["calibration"] = {
                "n": len(calibration),
                "objective": threshold_objective,
                "threshold": threshold,
                "at_threshold": {k: v for k, v in cal_point.items()},
                "model_only": summarize(cal_scored, None, n_boot=0),
            }
            res["calibration"]["model_only"].pop("curve", None)
            if out_dir:
                write_predictions(Path(out_dir) / f"calibration-{name}.jsonl", calibration, cal_preds)
        with tqdm(total=len(items), desc=f"{name} eval", disable=not progress) as bar:
            preds = predict(gen, items, name, max_input_tokens, max_new_tokens, batch_size, bar.update, ans, params, ev)
        scored = score(items, preds)
        # headline metrics over the data's own questions; derived categories are reported apart
        main = [s for s in scored if s.category in ("answerable", "unanswerable")]
        res["model_only"] = summarize(main, None, n_boot=n_boot)
        res["at_threshold"] = summarize(main, threshold, n_boot=n_boot) if threshold is not None else None
        res["extra_categories"] = {
            cat: {
                "n": len(xs),
                "refused_rate_model_only": sum(x.refused(None) for x in xs) / len(xs),
                "refused_rate_at_threshold": sum(x.refused(threshold) for x in xs) / len(xs),
            }
            for cat in sorted({s.category for s in scored} - {"answerable", "unanswerable"})
            for xs in [[s for s in scored if s.category == cat]]
        }
        res["threshold"] = threshold
        res["seconds"] = round(time.monotonic() - t0, 1)
        res["mean_new_tokens"] = sum(p.new_tokens for p in preds) / max(1, len(preds))
        res["answers_repeating_a_sentence"] = sum(repeats_a_sentence(p.text) for p in preds)
        res["raw_answers_repeating_a_sentence"] = sum(bool(p.extra.get("repeated_raw")) for p in preds)
        if out_dir:
            write_predictions(Path(out_dir) / f"predictions-{name}.jsonl", items, preds)
        results[name] = res
        log.info("%s: done in %.0f s", name, res["seconds"])
    return results
