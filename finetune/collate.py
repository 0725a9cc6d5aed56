"""Tokenise chat examples with the model's own chat template and batch them.

Loss covers the assistant's answer and the token that closes its turn only (read
from the tokenizer's chat template, ``candor.profile.end_of_turn_id``; the prompt,
and the newline the template adds after it, are masked), so the model learns
to answer *and to stop*; pad shares eos's id in SmolLM2, which
is why the mask is built from positions, never from pad ids. The trainer groups
batches by length (the library's sampler) so that short refusal examples do not
pay for the padding of long multi-passage ones; ``ChatCollator`` pads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from candor.profile import end_of_turn_id

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    answerable: bool  # the target is an answer, not the refusal (drives which tokens the KL covers)
    category: str


def encode_example(tokenizer, messages: list[dict[str, str]], answerable: bool, category: str = "") -> Encoded:
    """Token ids and labels; raises ValueError when the template does not render the prompt as a prefix."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
    full = tokenizer.apply_chat_template(messages, tokenize=True)
    prompt_ids = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    full_ids = list(full["input_ids"] if hasattr(full, "keys") else full)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("chat template does not render the prompt as a prefix of the full conversation")
    end = len(full_ids)
    eos = end_of_turn_id(tokenizer)
    while end > len(prompt_ids) and full_ids[end - 1] != eos:
        end -= 1  # drop the template's trailing newline from the loss
    labels = [IGNORE] * len(prompt_ids) + full_ids[len(prompt_ids) : end] + [IGNORE] * (len(full_ids) - end)
    return Encoded(full_ids, labels, answerable, category)


def as_row(e: Encoded) -> dict:
    """A dataset row for the trainer: ``flag`` marks the rows the KL covers (answerable ones, or the loop's
    base rows); the trainer's length grouping reads ``input_ids``' length."""
    return {"input_ids": e.input_ids, "labels": e.labels, "flag": e.answerable}


@dataclass
class ChatCollator:
    """Right-padded tensors for the trainer: input_ids, attention_mask, labels, flag."""

    pad_id: int

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(r["labels"])
        flag = torch.tensor([bool(r["flag"]) for r in rows], dtype=torch.bool)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "flag": flag}
