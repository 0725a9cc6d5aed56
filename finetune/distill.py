"""The self-distillation term: KL from a frozen teacher to the student.

Kaplan et al. (2026) find that plain SFT on new material teaches a model to
make things up; keeping the student's next-token distribution close to a
teacher that knows the format but no new facts fixes most of it. The term is
KL(teacher_τ || student_τ) per token, averaged over the tokens it covers,
where both distributions are softened by the temperature τ. It is not scaled
by τ² (the loss is CE + λ·KL exactly as params say).
"""

from __future__ import annotations


def token_kl(student_logits, teacher_logits, tau: float):
    """Per-token KL(teacher || student) at temperature ``tau``; shapes [N, V] -> [N]."""
    import torch.nn.functional as F

    if tau <= 0:
        raise ValueError("temperature must be positive")
    s = F.log_softmax(student_logits.float() / tau, dim=-1)
    t = F.log_softmax(teacher_logits.float() / tau, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def kl_loss(student_logits, teacher_logits, tau: float, mask=None):
    """Mean KL over the tokens selected by ``mask`` (all when None); 0 when none are selected."""
    per_token = token_kl(student_logits, teacher_logits, tau)
    if mask is not None:
        per_token = per_token[mask]
    if per_token.numel() == 0:
        return student_logits.sum() * 0.0
    return per_token.mean()
