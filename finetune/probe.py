"""A fixed probe of general knowledge, asked without context and without Candor's prompt.

The adapter should change *when* the model answers from passages, not what the
base model knows or how it chats otherwise. Each probe is a question with
accepted answer words; an answer counts when it contains one of them as a whole word or number
("7 days" counts for seven; "17", "-18.00" and "Sunday" do not count for 7, 0 and sun).
"""

from __future__ import annotations

import re

PROBE_SYSTEM = "You are a helpful assistant. Answer in a few words."

PROBES: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("How many days are in a week?", ("seven", "7")),
    ("What is 2 plus 2?", ("four", "4")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What is the chemical symbol for water?", ("h2o", "h₂o")),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "co2", "co₂")),
    ("What is the freezing point of water in Celsius?", ("0", "zero")),
    ("What language is mainly spoken in Brazil?", ("portuguese",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the opposite of hot?", ("cold",)),
    ("How many continents are there?", ("seven", "7")),
    ("What is the capital of Italy?", ("rome",)),
    ("What do bees make?", ("honey",)),
    ("Which star is at the center of our solar system?", ("sun",)),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
]


def probe_messages() -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": q}] for q, _ in PROBES]


def says(answer: str, word: str) -> bool:
    """Whether ``word`` stands in ``answer`` on its own: not inside a longer word or number."""
    # "4.0" is 4, "4.5" is not
    return re.search(rf"(?<![\w.]){re.escape(word)}(?!\w|\.\d*[1-9])", answer.lower()) is not None


def score_probe(answers: list[str]) -> dict:
    rows = []
    for (q, accepted), a in zip(PROBES, answers, strict=True):
        ok = any(says(a, w) for w in accepted)
        rows.append({"question": q, "answer": a, "correct": ok})
    return {"n": len(rows), "correct": sum(r["correct"] for r in rows), "answers": rows}


def run_probe(gen, model_name: str, max_new_tokens: int = 24) -> dict:
    """Ask every probe with ``gen`` (an evaluate.LocalGenerator) as ``model_name``."""
    prompts = [gen.render(m) for m in probe_messages()]
    outs = gen.generate(prompts, model_name, max_new_tokens=max_new_tokens, batch_size=len(prompts))
    return score_probe([text for text, _, _ in outs])
