"""The self-distillation term: zero when the student equals the teacher, positive otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from candor.finetune.distill import kl_loss, token_kl


def test_kl_zero_when_student_equals_teacher() -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, 50)
    assert kl_loss(logits, logits.clone(), tau=0.5).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_positive_otherwise_and_matches_hand_computation() -> None:
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher p = (3/4, 1/4) at tau = 1
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert token_kl(s, t, 1.0).item() == pytest.approx(expected, rel=1e-5)
    # a lower temperature sharpens the teacher: p = (9/10, 1/10) at tau = 0.5
    expected_half = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert token_kl(s, t, 0.5).item() == pytest.approx(expected_half, rel=1e-5)
    assert kl_loss(torch.randn(4, 9), torch.randn(4, 9), 0.5).item() > 0


def test_kl_mask_selects_tokens_and_keeps_gradient() -> None:
    student = torch.zeros(3, 4, requires_grad=True)
    teacher = torch.tensor([[0.0] * 4, [5.0, 0, 0, 0], [0.0] * 4])
    none = kl_loss(student, teacher, 0.5, mask=torch.tensor([True, False, True]))
    assert none.item() == pytest.approx(0.0, abs=1e-6)
    some = kl_loss(student, teacher, 0.5, mask=torch.tensor([False, True, False]))
    assert some.item() > 0
    some.backward()
    assert student.grad[1].abs().sum() > 0 and student.grad[0].abs().sum() == 0
    empty = kl_loss(student, teacher, 0.5, mask=torch.tensor([False, False, False]))
    assert empty.item() == 0.0
    with pytest.raises(ValueError):
        token_kl(student, teacher, 0.0)
