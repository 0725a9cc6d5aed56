"""Tokenise chat examples with the model's own chat template and batch them.

Loss covers the assistant's answer and the token that closes its turn only (read
from the tokenizer's chat template, ``candor.profile.end_of_turn_id``; the prompt,
and the newline the template adds after it, are masked), so the model learns
to answer *and to stop*; pad shares eos's id in SmolLM2, which
is why the mask is built from positions, never from pad ids. Batches are
grouped by length so that short refusal examples do not pay for the padding of
long multi-passage ones.
"""

from __future__ import annotations

import random
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


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_factor: int = 32
) -> list[list[int]]:
    """A deterministic epoch order: shuffle, sort within mega-batches by length, shuffle the batches.

    Deterministic for (seed, epoch), so a resumed run regenerates the same order and skips what it did.
    """
    rng = random.Random(f"batches:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        group = sorted(order[start : start + mega], key=lambda i: lengths[i])
        batches.extend(group[j : j + batch_size] for j in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def pad_batch(items: list[Encoded], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels, answerable flags."""
    import torch

    width = max(len(x.input_ids) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x.input_ids)
        ids[i, :n] = torch.tensor(x.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(x.labels)
    answerable = torch.tensor([x.answerable for x in items], dtype=torch.bool)
    return ids, mask, labels, answerable
