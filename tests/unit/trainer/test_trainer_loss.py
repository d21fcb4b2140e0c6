"""The GRPO / CISPO loss on hand-checked numbers: clipping on both sides, masks, zero
advantages, importance weights, token-level normalisation, KL and entropy terms."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import LossConfig
from trainer.loss import kl_k3, policy_loss


def _run(ratio: list[float], adv: list[float], mask: list[float] | None = None, *, iw: list[float] | None = None,
         cfg: LossConfig | None = None, num_tokens: float | None = None, **kw):
    """Loss and d loss / d logp for tokens with the given ratios pi/pi_prox (prox logp = 0)."""
    n = len(ratio)
    logp = torch.tensor([math.log(r) for r in ratio], dtype=torch.float64, requires_grad=True)
    prox = torch.zeros(n, dtype=torch.float64)
    behav = prox - torch.tensor([math.log(w) for w in (iw or [1.0] * n)], dtype=torch.float64)
    m = torch.tensor(mask or [1.0] * n, dtype=torch.float64)
    loss, stats = policy_loss(logp, prox, behav, torch.tensor(adv, dtype=torch.float64), m, cfg or LossConfig(),
                              num_tokens=num_tokens, **kw)
    loss.backward()
    return float(loss.detach()), logp.grad.tolist(), stats


def test_on_policy_loss_is_minus_mean_advantage_and_gradient_is_minus_advantage_over_n():
    loss, grad, stats = _run([1.0, 1.0, 1.0], [1.0, -1.0, 2.0], [1, 1, 0])
    assert loss == pytest.approx(0.0)
    assert grad == pytest.approx([-0.5, 0.5, 0.0])  # the masked token gets nothing
    assert stats.tokens == 2 and stats.clipped == 0


def test_positive_advantage_is_clipped_above_one_plus_epsilon():
    loss, grad, stats = _run([1.5], [1.0])
    assert loss == pytest.approx(-1.2)  # min(1.5, clip(1.5) = 1.2) * 1
    assert grad == pytest.approx([0.0])
    assert stats.clipped == 1


def test_positive_advantage_below_one_minus_epsilon_keeps_its_gradient():
    loss, grad, stats = _run([0.5], [1.0])
    assert loss == pytest.approx(-0.5)
    assert grad == pytest.approx([-0.5])  # d(-r*A)/dlogp = -r*A
    assert stats.clipped == 0


def test_negative_advantage_is_clipped_below_one_minus_epsilon():
    loss, grad, stats = _run([0.5], [-1.0])
    assert loss == pytest.approx(0.8)  # min(-0.5, -0.8) = -0.8
    assert grad == pytest.approx([0.0])
    assert stats.clipped == 1


def test_negative_advantage_above_one_plus_epsilon_is_not_clipped_by_ppo():
    loss, grad, _ = _run([1.5], [-1.0])
    assert loss == pytest.approx(1.5)
    assert grad == pytest.approx([1.5])


def test_two_sided_clipping_caps_the_ratio_at_delta_for_negative_advantages():
    loss, grad, stats = _run([5.0], [-2.0])
    assert loss == pytest.approx(8.0)  # min(min(5, 4) * -2, 1.2 * -2) = -8
    assert grad == pytest.approx([0.0])
    assert stats.clipped == 1
    # without the cap (delta huge) the same token would push with ratio 5
    loss_nocap, grad_nocap, _ = _run([5.0], [-2.0], cfg=LossConfig(delta=1e9))
    assert loss_nocap == pytest.approx(10.0)
    assert grad_nocap == pytest.approx([10.0])


def test_zero_advantages_give_zero_loss_and_zero_gradient():
    loss, grad, _ = _run([0.7, 1.0, 1.6], [0.0, 0.0, 0.0])
    assert loss == 0.0
    assert grad == [0.0, 0.0, 0.0]


def test_importance_weight_scales_the_token_and_is_capped():
    loss, grad, stats = _run([1.0, 1.0], [1.0, 1.0], iw=[1.5, 3.0])
    # w = [1.5, min(3, 2) = 2]; loss = -(1.5 + 2) / 2
    assert loss == pytest.approx(-1.75)
    assert grad == pytest.approx([-0.75, -1.0])
    assert stats.iw_capped == 1
    assert stats.means()["importance_weight"] == pytest.approx(1.75)


def test_token_level_normalisation_uses_the_step_token_count():
    loss_local, _, _ = _run([1.0, 1.0], [1.0, 1.0])
    loss_global, grad, _ = _run([1.0, 1.0], [1.0, 1.0], num_tokens=8)
    assert loss_local == pytest.approx(-1.0)
    assert loss_global == pytest.approx(-0.25)
    assert grad == pytest.approx([-0.125, -0.125])


def test_cispo_keeps_the_gradient_of_tokens_ppo_would_clip():
    cfg = LossConfig(kind="cispo")
    loss, grad, stats = _run([1.5], [1.0], cfg=cfg)
    assert grad == pytest.approx([-1.5])  # -sg(min(r, delta)) * A
    assert loss == pytest.approx(-1.5 * math.log(1.5))
    assert stats.clipped == 0
    _, grad_capped, stats_capped = _run([6.0], [1.0], cfg=cfg)
    assert grad_capped == pytest.approx([-4.0])  # weight capped at delta
    assert stats_capped.clipped == 1


def test_kl_k3_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.tensor([-1.0, -2.0])
    assert kl_k3(logp, logp).tolist() == [0.0, 0.0]
    x = -0.5  # ref - logp
    assert float(kl_k3(torch.tensor([-1.0]), torch.tensor([-1.5]))[0]) == pytest.approx(math.exp(x) - x - 1)


def test_kl_term_adds_to_the_loss_when_enabled():
    cfg = LossConfig(kl_coef=0.5)
    ref = torch.tensor([math.log(2.0)], dtype=torch.float64)  # pi_ref = 2 * pi_theta at ratio 1
    loss, _, stats = _run([1.0], [0.0], cfg=cfg, ref_logp=ref)
    k3 = 2.0 - math.log(2.0) - 1.0
    assert loss == pytest.approx(0.5 * k3)
    assert stats.kl_sum == pytest.approx(k3)
    with pytest.raises(ValueError):
        _run([1.0], [0.0], cfg=cfg)


def test_entropy_bonus_lowers_the_loss():
    cfg = LossConfig(entropy_coef=0.1)
    loss, _, _ = _run([1.0], [0.0], cfg=cfg, entropy=torch.tensor([2.0], dtype=torch.float64))
    assert loss == pytest.approx(-0.2)
