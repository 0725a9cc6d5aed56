"""Row operations on a left-padded key/value cache, for continuous batching.

A running batch keeps one transformers ``DynamicCache`` whose tensors are
``(rows, kv_heads, columns, head_dim)`` plus a 2-D attention mask
``(rows, columns)``. Sequences have different lengths, so each row is padded
on the left (mask 0). New requests are prefilled together, left-padded to the
longest prompt, then joined to the batch; a finished request's row is
dropped; columns that have become padding in every row are trimmed so
attention does not keep paying for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class BatchKV:
    cache: DynamicCache
    mask: torch.Tensor  # (rows, columns), 1 = a real token

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _build(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    return DynamicCache(ddp_cache_data=layers)


def _pad_left(t: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    missing = columns - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def from_prefill(cache: DynamicCache, length: int) -> BatchKV:
    """Wrap the cache of one freshly prefilled sequence (no padding)."""
    return BatchKV(cache=cache, mask=torch.ones((1, length), dtype=torch.long))


def join(batch: BatchKV | None, new: BatchKV) -> BatchKV:
    """Append ``new``'s rows after ``batch``'s, left-padding the shorter side."""
    if batch is None or batch.rows == 0:
        return new
    columns = max(batch.columns, new.columns)
    layers = []
    for (k1, v1), (k2, v2) in zip(_layers(batch.cache), _layers(new.cache), strict=True):
        layers.append(
            (
                torch.cat([_pad_left(k1, columns, 2), _pad_left(k2, columns, 2)], dim=0),
                torch.cat([_pad_left(v1, columns, 2), _pad_left(v2, columns, 2)], dim=0),
            )
        )
    mask = torch.cat([_pad_left(batch.mask, columns, 1), _pad_left(new.mask, columns, 1)], dim=0)
    return BatchKV(cache=_build(layers), mask=mask)


def keep_rows(batch: BatchKV, rows: list[int]) -> BatchKV | None:
    """Keep only ``rows`` (in that order), then trim all-padding columns on the left."""
    if not rows:
        return None
    if rows == list(range(batch.rows)):
        return batch
    index = torch.tensor(rows, dtype=torch.long)
    mask = batch.mask.index_select(0, index)  # the mask stays on the CPU; the cache is where the model is
    real = mask.any(dim=0).nonzero()
    start = int(real[0]) if len(real) else 0
    layers = [
        (
            k.index_select(0, index.to(k.device))[:, :, start:].contiguous(),
            v.index_select(0, index.to(v.device))[:, :, start:].contiguous(),
        )
        for k, v in _layers(batch.cache)
    ]
    return BatchKV(cache=_build(layers), mask=mask[:, start:].contiguous())


def extend_mask(batch: BatchKV) -> torch.Tensor:
    """The mask for the next decode step: every row gains one real column."""
    ones = torch.ones((batch.rows, 1), dtype=batch.mask.dtype)
    batch.mask = torch.cat([batch.mask, ones], dim=1)
    return batch.mask
