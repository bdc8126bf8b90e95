"""Distillation losses, each selectable and weighted, and the presets that combine them.

soft: KL(teacher || student) of temperature-softened outputs, times T^2 (Hinton et al., 2015).
hard: cross-entropy on the gold labels (examples and tokens labelled -100, such as unlabelled text, are skipped).
hidden: MSE between hidden states over a layer map, through a learned projection where widths differ (TinyBERT).
attention: KL between the attention distributions over the same layer map (TinyBERT uses MSE; KL is scale-free).
relations: KL between the last layer's query-key and value-value self-attention relations (MiniLM).
embedding: MSE between the embedding outputs (TinyBERT).
cosine: 1 - cosine similarity between the last hidden states that the task head reads (DistilBERT): a target as
    wide as the model on every text, where the outputs give one number per class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import DEFAULT_PRESET
from ..errors import UserError

NEG = -1e4  # fills masked logits: exp() underflows to 0 while 0 * (NEG - x) stays finite (-inf would give NaN)


@dataclass
class LossWeights:
    """Weight of each loss (0 turns it off) and the softmax temperature of the soft targets."""

    soft: float = 1.0
    hard: float = 0.5
    hidden: float = 0.0
    attention: float = 0.0
    relations: float = 0.0
    embedding: float = 0.0
    cosine: float = 0.0
    temperature: float = 2.0

    def active(self) -> list[str]:
        """Names of the losses with a non-zero weight."""
        return [f.name for f in fields(self) if f.name != "temperature" and getattr(self, f.name)]

    def needs_teacher(self) -> bool:
        """Every loss but hard compares with the teacher."""
        return any(name != "hard" for name in self.active())

    def cacheable(self) -> bool:
        """True when the losses read only what the disk cache of the teacher keeps: its outputs and last hidden state
        (the latter for sequence classification, whose head reads one token)."""
        return set(self.active()) <= {"soft", "hard", "cosine"}


# fast: outputs only (cacheable); balanced: plus hidden states; quality: everything TinyBERT and MiniLM transfer.
PRESETS = {
    "fast": LossWeights(soft=1.0, hard=0.5),
    "balanced": LossWeights(soft=1.0, hard=0.5, hidden=1.0),
    "quality": LossWeights(soft=1.0, hard=0.5, hidden=1.0, attention=1.0, relations=1.0, embedding=1.0),
}


def loss_weights(preset: str = DEFAULT_PRESET, overrides: list[str] | None = None, temperature: float | None = None
                 ) -> LossWeights:
    """A preset's weights with `NAME=WEIGHT` overrides (e.g. ["hidden=0", "attention=0.5"])."""
    values = {f.name: getattr(PRESETS[preset], f.name) for f in fields(LossWeights)}
    for item in overrides or []:
        name, _, weight = item.partition("=")
        if name not in values or name == "temperature":
            raise UserError(f"unknown loss {name!r} in --losses {item}: use NAME=WEIGHT with NAME among "
                            f"{', '.join(n for n in values if n != 'temperature')}")
        try:
            values[name] = float(weight)
        except ValueError:
            raise UserError(f"--losses {item}: the weight must be a number, as in {name}=0.5") from None
    if temperature is not None:
        values["temperature"] = temperature
    weights = LossWeights(**values)
    if weights.temperature <= 0:
        raise UserError(f"temperature {weights.temperature} must be positive: 1 keeps the teacher's distribution, "
                        "2-4 softens it")
    if any(getattr(weights, n) < 0 for n in values if n != "temperature") or not weights.active():
        raise UserError("loss weights must be >= 0 with at least one positive: check --losses")
    return weights


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) over the last axis, averaged over the rows `mask` keeps."""
    log_s = F.log_softmax(student.float() / temperature, -1)
    log_t = F.log_softmax(teacher.float() / temperature, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    return _mean(kl, mask) * temperature**2


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on gold labels, skipping -100; zero (not NaN) when a batch has no label at all."""
    logits, labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    if not (labels != -100).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=-100)


def hidden_mse(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor,
               projection: nn.Module | None = None) -> torch.Tensor:
    """Mean over layer pairs of the MSE between (projected) student and teacher hidden states on real tokens."""
    losses = []
    for s, t in zip(student, teacher, strict=True):
        s = projection(s) if projection is not None else s
        losses.append(_mean((s.float() - t.float()).pow(2).mean(-1), mask))
    return torch.stack(losses).mean()


def attention_kl(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over layer pairs of KL(teacher || student) between attention rows [batch, heads, query, key] of real
    query tokens; with unequal head counts, the heads' mean distributions are compared."""
    losses = []
    for s, t in zip(student, teacher, strict=True):
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        losses.append(_distribution_kl(s, t, mask))
    return torch.stack(losses).mean()


def relation_kl(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], mask: torch.Tensor,
                relation_heads: int) -> torch.Tensor:
    """MiniLM: KL between the query-key and the value-value relations softmax(X Y^T / sqrt(d)) of the last layer,
    with (query, key, value) of shape [batch, seq, width] split into `relation_heads` heads on both sides."""
    (qs, ks, vs), (qt, kt, vt) = student, teacher
    pairs = ((qs, ks, qt, kt), (vs, vs, vt, vt))
    return torch.stack([
        _distribution_kl(_relation(a, b, mask, relation_heads), _relation(c, d, mask, relation_heads), mask)
        for a, b, c, d in pairs
    ]).mean()


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                projection: nn.Module | None = None) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over the vectors of the last axis that `mask` keeps; the scale of either
    side does not count, so a student's hidden states need not match the teacher's norms."""
    student = projection(student) if projection is not None else student
    return _mean(1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1), mask)


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                  projection: nn.Module | None = None) -> torch.Tensor:
    """MSE between (projected) student and teacher embedding outputs on real tokens."""
    return hidden_mse([student], [teacher], mask, projection)


def relation_heads(student_width: int, teacher_width: int, teacher_heads: int) -> int:
    """Relation heads MiniLM can use on both sides: the teacher's head count when it divides both widths."""
    return math.gcd(teacher_heads, math.gcd(student_width, teacher_width))


def _relation(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Relation distributions softmax(x y^T / sqrt(d)) [batch, heads, seq, seq], padded keys masked out."""
    b, n, width = x.shape
    x = x.float().view(b, n, heads, width // heads).transpose(1, 2)
    y = y.float().view(b, n, heads, width // heads).transpose(1, 2)
    scores = x @ y.transpose(-1, -2) / math.sqrt(width // heads)
    return scores.masked_fill(~mask.bool()[:, None, None, :], NEG).softmax(-1)


def _distribution_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between probability rows [batch, heads, query, key], averaged over real queries."""
    keys = mask.bool()[:, None, None, :]
    log_s = student.float().clamp_min(1e-12).log()
    kl = torch.where(keys, teacher.float() * (teacher.float().clamp_min(1e-12).log() - log_s), 0.0).sum(-1)
    query_mask = mask[:, None, :].expand_as(kl)
    return _mean(kl, query_mask)


def _mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over the positions `mask` keeps (all positions without a mask)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)
