"""FUSC and confidence losses on tensors small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fusc_lib.losses import class_balance_weights, confidence_ce_loss, fusc_loss, spread


def test_fusc_loss_matches_a_hand_computation():
    anchor = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax: (3/4, 1/4), (1/2, 1/2)
    neighbor = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # (1/2, 1/2), (1/4, 3/4)
    total, consistency, spread = fusc_loss(anchor, neighbor, entropy_weight=2.0)
    # ⟨a, n⟩ = 1/2 for both rows; mean anchor prediction p̄ = (5/8, 3/8)
    expected_entropy = -(5 / 8 * math.log(5 / 8) + 3 / 8 * math.log(3 / 8))
    assert consistency.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert spread.item() == pytest.approx(expected_entropy, rel=1e-6)
    assert total.item() == pytest.approx(math.log(2.0) - 2.0 * expected_entropy, rel=1e-6)


def test_a_gradient_step_raises_agreement_and_evens_out_the_mean_prediction():
    torch.manual_seed(0)
    anchor = torch.randn(6, 3, requires_grad=True)
    neighbor = torch.randn(6, 3, requires_grad=True)
    consistency = fusc_loss(anchor, neighbor, entropy_weight=0.0)[0]
    consistency.backward()
    with torch.no_grad():
        before = (F.softmax(anchor, 1) * F.softmax(neighbor, 1)).sum(1).mean()
        after = (F.softmax(anchor - 0.1 * anchor.grad, 1)
                 * F.softmax(neighbor - 0.1 * neighbor.grad, 1)).sum(1).mean()
    assert after > before

    skewed = torch.tensor([[3.0, 0.0, 0.0], [2.0, 0.0, 1.0]], requires_grad=True)
    _, _, spread = fusc_loss(skewed, skewed.detach(), entropy_weight=1.0)
    (-spread).backward()  # the entropy part of the total
    with torch.no_grad():
        mean_before = F.softmax(skewed, 1).mean(0)
        mean_after = F.softmax(skewed - 0.5 * skewed.grad, 1).mean(0)
    uniform = torch.full((3,), 1 / 3)
    assert (mean_after - uniform).abs().sum() < (mean_before - uniform).abs().sum()


def test_spread_with_a_prior_is_highest_at_the_prior_and_is_the_entropy_for_uniform():
    mean = torch.tensor([0.6, 0.3, 0.1])
    uniform, prior = torch.full((3,), 1 / 3), torch.tensor([0.7, 0.2, 0.1])
    assert torch.isclose(spread(mean, uniform), spread(mean))  # SCAN's H(p̄)
    assert torch.isclose(spread(prior, prior), torch.tensor(math.log(3)))
    assert spread(mean, prior) < spread(prior, prior)
    assert spread(mean, prior) > spread(uniform, prior)  # the uniform mean is far from it


def test_confidence_ce_is_zero_with_a_gradient_when_nothing_is_confident():
    strong = torch.randn(4, 3, requires_grad=True)
    loss = confidence_ce_loss(torch.zeros(4, 3), strong, threshold=0.99)
    assert loss.item() == 0.0
    loss.backward()
    assert strong.grad is not None and torch.all(strong.grad == 0)


def test_confidence_ce_uses_only_samples_at_or_above_the_threshold():
    weak = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    strong = torch.randn(3, 3)
    threshold = F.softmax(weak[2:], 1).max().item()  # exactly the third sample's confidence
    loss = confidence_ce_loss(weak, strong, threshold=threshold, balance=False)
    expected = F.cross_entropy(strong[[0, 2]], torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_balancing_weighs_each_confident_class_equally():
    weak = torch.tensor([[10.0, 0.0]] * 3 + [[0.0, 10.0]])
    strong = torch.tensor([[1.0, 0.0]] * 3 + [[1.0, 0.0]])
    per_sample = F.cross_entropy(strong, torch.tensor([0, 0, 0, 1]), reduction="none")
    balanced = confidence_ce_loss(weak, strong, threshold=0.9, balance=True)
    # weights 4/3 for class 0 (three samples), 4 for class 1: the two classes count alike
    assert balanced.item() == pytest.approx((per_sample[0] + per_sample[3]).item() / 2, rel=1e-6)
    weights = class_balance_weights(torch.tensor([0, 0, 0, 1]), 3).tolist()
    assert weights == pytest.approx([4 / 3, 4.0, 1.0])
