"""The self-distillation term: KL from a frozen teacher to the student.

Kaplan et al. (2026) find that plain SFT on new material teaches a model to
make things up; keeping the student's next-token distribution close to a
teacher that knows the format but no new facts fixes most of it. The term is
KL(teacher_τ || student_τ) per token, averaged over the tokens it covers,
where both distributions are softened by the temperature τ. It is not scaled
by τ² (the loss is CE + λ·KL exactly as params say).

Here too: the whole loss (``distillation_loss``, ``DistillLoss``: what the trainer's ``compute_loss``
calls), computed with the LM head only at the positions that carry a loss, and the two teachers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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


def head_logits(model, input_ids, attention_mask, positions):
    """The trunk's hidden states, then the LM head only at ``positions`` (a [N, 2] index).

    The head (vocabulary x hidden) is the largest matmul of a small model's step: computing it only where
    a loss is taken is most of what keeps a CPU step cheap (and the logits' memory small).
    """
    inner = model.base_model.model  # the causal LM under the peft wrappers (its trunk and lm_head)
    hidden = inner.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return inner.lm_head(hidden[positions[:, 0], positions[:, 1]])


@dataclass(frozen=True)
class LossSpec:
    """The recipe's loss: CE on answer tokens (the first one weighted) + λ·KL to the teacher at τ.

    A batch flags some rows (``flag``: an answerable example; in the retraining loop, a base row). The KL
    covers the flagged rows' answer tokens (``kl_rows="flagged"``) or every row's (``"all"``); a flagged
    row's CE is scaled by ``flagged_ce_weight`` (the loop's ``base_ce_weight``; 1 elsewhere).
    ``kl_skip_first`` leaves each row's first N answer tokens out of the KL: the base teacher opens most
    answers with "The answer is:", and a KL there pulls the student's opening back to it.
    """

    first_token_weight: float = 1.0
    distill_lambda: float = 0.0
    tau: float = 0.5
    kl_rows: str = "flagged"
    flagged_ce_weight: float = 1.0
    kl_skip_first: int = 0  # answer tokens at the start of each row left out of the KL (its opening's format)

    def __post_init__(self) -> None:
        if self.kl_rows not in ("flagged", "all"):
            raise ValueError("kl_rows must be 'flagged' or 'all'")
        if self.kl_skip_first < 0:
            raise ValueError("kl_skip_first must be 0 or more")


def answer_token_index(first):
    """Each loss position's index within its row's answer (0 at the row's first), from the ``first`` mask."""
    import torch

    idx = torch.arange(first.numel(), device=first.device)
    start = torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), dim=0).values
    return idx - start


def distillation_loss(model, batch: dict, spec: LossSpec, teacher=None):
    """The loss for one batch (``input_ids``, ``attention_mask``, ``labels``, ``flag``) and its float parts.

    ``teacher`` is a context manager factory that turns the model into the teacher for one forward pass
    (``model.disable_adapter``: the base; or a ``SnapshotTeacher``); None, or λ = 0, is plain SFT.
    """
    import torch
    import torch.nn.functional as F

    ids, mask, labels, flag = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["flag"]
    target = labels[:, 1:]  # position t predicts token t+1: positions whose *next* label is set
    pos = (target != -100).nonzero()
    gold = target[pos[:, 0], pos[:, 1]]
    logits = head_logits(model, ids, mask, pos)
    ce = F.cross_entropy(logits.float(), gold, reduction="none")
    first = torch.ones_like(ce, dtype=torch.bool)  # nonzero() is row-major: a new row starts an answer
    first[1:] = pos[1:, 0] != pos[:-1, 0]
    on_flag = flag[pos[:, 0]]
    w = torch.where(first, spec.first_token_weight, 1.0)
    if spec.flagged_ce_weight != 1.0:
        w = w * torch.where(on_flag, spec.flagged_ce_weight, 1.0)
    ce_loss = (ce * w).sum() / w.sum().clamp_min(1e-8)
    parts = {"ce": float(ce_loss.detach())}
    loss = ce_loss
    if spec.distill_lambda > 0 and teacher is not None:
        sel = on_flag if spec.kl_rows == "flagged" else torch.ones_like(on_flag)
        if spec.kl_skip_first:
            sel = sel & (answer_token_index(first) >= spec.kl_skip_first)
        if bool(sel.any()):
            with torch.no_grad(), teacher():
                t_logits = head_logits(model, ids, mask, pos[sel])
            kl = kl_loss(logits[sel], t_logits, spec.tau)
            loss = loss + spec.distill_lambda * kl
            parts["kl"] = float(kl.detach())
        else:
            parts["kl"] = 0.0
    return loss, parts


class SnapshotTeacher:
    """A frozen copy of the adapter's weights, swapped in for the teacher's forward pass."""

    def __init__(self, params: list, saved: list | None = None):
        self.params = params
        self.saved = saved if saved is not None else [p.detach().clone() for p in params]

    def __call__(self):
        return self

    def __enter__(self):
        for p, t in zip(self.params, self.saved, strict=True):
            p.data, t.data = t.data, p.data
        return self

    def __exit__(self, *exc):
        for p, t in zip(self.params, self.saved, strict=True):
            p.data, t.data = t.data, p.data
        return False


SNAPSHOT_FILE = "teacher_snapshot.pt"


class DistillLoss:
    """``distillation_loss`` as the trainer's loss, with its teacher.

    ``teacher``: ``none`` (plain SFT), ``base`` (the model with the adapter disabled: no second copy in
    memory) or ``snapshot`` (the adapter as it was at ``snapshot_steps``; kept in each checkpoint, so a
    resumed run distils to the same teacher).
    """

    def __init__(self, model, spec: LossSpec, teacher: str = "base", snapshot_steps: int = 0):
        if teacher not in ("none", "base", "snapshot"):
            raise ValueError("teacher must be none, base or snapshot")
        self.model = model
        self.spec = spec
        self.mode = teacher if spec.distill_lambda > 0 else "none"
        self.snapshot_steps = snapshot_steps
        self.teacher = model.disable_adapter if self.mode == "base" else None

    def _params(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]

    def __call__(self, model, inputs: dict, global_step: int):
        if self.mode == "snapshot" and self.teacher is None and global_step >= self.snapshot_steps:
            self.teacher = SnapshotTeacher(self._params())
        return distillation_loss(model, inputs, self.spec, self.teacher)

    def save(self, folder: Path) -> None:
        """Write the snapshot teacher (if taken) into a checkpoint folder."""
        import torch

        if isinstance(self.teacher, SnapshotTeacher):
            torch.save([t.detach().cpu() for t in self.teacher.saved], Path(folder) / SNAPSHOT_FILE)

    def load(self, folder: str | None) -> None:
        """Take the snapshot teacher from the checkpoint a run resumes from, where it has one."""
        import torch

        path = Path(folder) / SNAPSHOT_FILE if folder else None
        if self.mode == "snapshot" and path is not None and path.exists():
            params = self._params()
            saved = [t.to(p.device) for t, p in zip(torch.load(path, weights_only=True), params, strict=True)]
            self.teacher = SnapshotTeacher(params, saved)
