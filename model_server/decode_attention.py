"""An attention function tuned for one-token decode steps on CPU.

Measured on this machine (SmolLM2-135M, bf16, 1 thread, batch 8, 415-token
context): torch's SDPA picks its CPU flash kernel, which spends ~3.4 ms per
layer on a single query token, and the "eager" path copies K/V three times
over to repeat the grouped heads. Grouping the query heads onto their shared
K/V head and doing two batched matmuls halves the decode step (179 ms → 81 ms).
Prefill (many query tokens) stays on SDPA, where the flash kernel is fast.

Registered under the name ``candor``; models load with
``attn_implementation=ATTN_IMPLEMENTATION``.
"""

from __future__ import annotations

ATTN_IMPLEMENTATION = "candor"

_registered = False


def register_decode_attention() -> str:
    """Register the attention function (idempotent) and return its name."""
    global _registered
    if _registered:
        return ATTN_IMPLEMENTATION
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)
    # The same boolean masks SDPA gets (None when plain causal suffices).
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    _registered = True
    return ATTN_IMPLEMENTATION


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or kwargs.get("sliding_window") or kwargs.get("softcap") or heads % kv_heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = heads // kv_heads
    length = key.shape[2]
    scale = scaling if scaling is not None else dim**-0.5
    q = query.reshape(batch * kv_heads, groups, dim)
    k = key.reshape(batch * kv_heads, length, dim)
    v = value.reshape(batch * kv_heads, length, dim)
    scores = torch.bmm(q, k.transpose(1, 2)).view(batch, kv_heads, groups, length).float() * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., -length:], float("-inf"))
        else:  # an additive float mask
            scores = scores + attention_mask[..., -length:].float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(batch * kv_heads, groups, length)
    out = torch.bmm(probs, v)  # (batch*kv_heads, groups, dim)
    # Back to (batch, q_len=1, heads, dim), the layout attention modules expect.
    return out.view(batch, 1, heads, dim), None
