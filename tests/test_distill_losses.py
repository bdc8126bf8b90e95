"""Each distillation loss against values computed by hand on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xlmr_compress.distillation import losses
from xlmr_compress.errors import UserError


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_soft_target_loss_is_kl_times_t_squared():
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    student = torch.zeros(1, 2)
    assert losses.soft_target_loss(student, teacher, 1.0).item() == pytest.approx(kl([0.75, 0.25], [0.5, 0.5]),
                                                                                  abs=1e-6)
    r = math.sqrt(3.0)  # at T=2 the teacher's odds 3:1 become sqrt(3):1
    expected = 4 * kl([r / (1 + r), 1 / (1 + r)], [0.5, 0.5])
    assert losses.soft_target_loss(student, teacher, 2.0).item() == pytest.approx(expected, abs=1e-6)


def test_soft_target_loss_skips_masked_rows():
    teacher = torch.tensor([[[math.log(3.0), 0.0], [9.0, -9.0]]])
    student = torch.tensor([[[0.0, 0.0], [-9.0, 9.0]]])
    mask = torch.tensor([[1, 0]])
    assert losses.soft_target_loss(student, teacher, 1.0, mask).item() == pytest.approx(kl([0.75, 0.25], [0.5, 0.5]),
                                                                                      abs=1e-6)


def test_hard_label_loss_ignores_minus_100_and_empty_batches():
    logits = torch.tensor([[math.log(3.0), 0.0], [5.0, -5.0]])
    assert losses.hard_label_loss(logits, torch.tensor([0, -100])).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    none = losses.hard_label_loss(logits, torch.tensor([-100, -100]))
    assert none.item() == 0.0 and not torch.isnan(none)


def test_hidden_mse_with_mask_and_projection():
    mask = torch.tensor([[1, 1, 0]])
    student = [torch.zeros(1, 3, 2)]
    teacher = [torch.full((1, 3, 2), 2.0)]
    teacher[0][0, 2] = 100.0  # a padded token: must not count
    assert losses.hidden_mse(student, teacher, mask).item() == pytest.approx(4.0)
    projection = nn.Linear(2, 2)
    nn.init.zeros_(projection.weight)
    nn.init.ones_(projection.bias)  # maps every student state to 1: error (1 - 2)^2
    assert losses.hidden_mse(student, teacher, mask, projection).item() == pytest.approx(1.0)
    two_layers = losses.hidden_mse(student * 2, [teacher[0], torch.zeros(1, 3, 2)], mask)
    assert two_layers.item() == pytest.approx((4.0 + 0.0) / 2)


def test_embedding_mse_matches_hand_value():
    s, t = torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[0.0, 0.0]]])
    assert losses.embedding_mse(s, t, torch.ones(1, 1)).item() == pytest.approx((1 + 9) / 2)


def test_cosine_loss_ignores_scale_and_padding():
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    teacher = torch.tensor([[[5.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]])  # same direction, orthogonal, opposite
    assert losses.cosine_loss(student, teacher).item() == pytest.approx((0 + 1 + 2) / 3)
    assert losses.cosine_loss(student, teacher, torch.tensor([[1, 1, 0]])).item() == pytest.approx(0.5)
    projection = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))  # maps (1, 0) onto (0, 1)
    assert losses.cosine_loss(student[0, :2], teacher[0, :2], None, projection).item() == pytest.approx(0.5)


def test_attention_kl_over_real_queries_and_heads():
    teacher = torch.tensor([[[[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]]])
    student = torch.tensor([[[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.9, 0.05, 0.05]]]])
    mask = torch.tensor([[1, 1, 0]])  # query 2 is padding; key 2 gets no mass
    expected = (kl([0.75, 0.25], [0.5, 0.5]) + 0.0) / 2
    assert losses.attention_kl([student], [teacher], mask).item() == pytest.approx(expected, abs=1e-6)
    # with unequal head counts the heads' mean distributions are compared
    two = torch.cat([teacher, teacher], 1)
    assert losses.attention_kl([student], [two], mask).item() == pytest.approx(expected, abs=1e-6)


def test_relation_kl_matches_minilm_by_hand():
    mask = torch.ones(1, 2, dtype=torch.long)
    zeros = torch.zeros(1, 2, 1)
    x = torch.tensor([[[1.0], [0.0]]])  # teacher query = key = value
    # teacher relations: row 0 softmax([1, 0]), row 1 softmax([0, 0]); student (all zeros): uniform
    e = math.e
    row0 = kl([e / (e + 1), 1 / (e + 1)], [0.5, 0.5])
    expected = (row0 + 0.0) / 2  # mean over rows; query-key and value-value relations are equal here
    got = losses.relation_kl((zeros, zeros, zeros), (x, x, x), mask, relation_heads=1)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_relation_heads_divide_both_widths():
    assert losses.relation_heads(384, 384, 12) == 12
    assert losses.relation_heads(256, 384, 12) == 4


def test_presets_and_overrides():
    assert losses.loss_weights("fast").active() == ["soft", "hard"]
    assert losses.loss_weights("fast").cacheable()
    assert losses.loss_weights("fast", ["cosine=1"]).cacheable()
    assert not losses.loss_weights("balanced").cacheable()
    quality = losses.loss_weights("quality")
    assert set(quality.active()) == {"soft", "hard", "hidden", "attention", "relations", "embedding"}
    w = losses.loss_weights("balanced", ["hidden=0", "attention=0.5"], temperature=3.0)
    assert (w.hidden, w.attention, w.temperature) == (0.0, 0.5, 3.0)
    labels_only = losses.loss_weights("fast", ["soft=0", "hard=1"])
    assert not labels_only.needs_teacher()
    for bad in (["nope=1"], ["soft=x"], ["soft=0", "hard=0", "hidden=0"], ["hard=-1"]):
        with pytest.raises(UserError):
            losses.loss_weights("balanced", bad)
