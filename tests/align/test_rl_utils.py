"""align.rl_utils: GAE, KL estimators, clipped losses, whitening, EMA and PPO-ptx against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from align.rl_utils import (AdaptiveKLController, RunningMoments, clipped_policy_loss, clipped_value_loss,
                            ema_update, entropy_from_logits, gae, kl_penalized_rewards, kl_per_token, masked_whiten,
                            ptx_mix)


def test_gae_no_discount_hand_example():
    # rewards [0, 0, 1], V = 0.5 everywhere, γ = 1, λ = 0.95:
    # t=2: δ = 1 + 0 − 0.5 = 0.5, A = 0.5
    # t=1: δ = 0 + 0.5 − 0.5 = 0, A = 0.95 · 0.5 = 0.475
    # t=0: δ = 0, A = 0.95 · 0.475 = 0.45125; returns = A + V
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.full((1, 3), 0.5)
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.45125, 0.475, 0.5])
    assert ret.tolist()[0] == pytest.approx([0.95125, 0.975, 1.0])


def test_gae_discounted_and_masked_gap():
    # γ = 0.9, λ = 1: A1 = 2 − 0 = 2; A0 = δ0 + 0.9 · A1 = (1 + 0.9·0 − 0) + 1.8 = 2.8
    adv, _ = gae(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.9, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([2.8, 2.0])
    # mask [1, 0, 1]: the middle (context) position is skipped; A2 = 0.5, A0 = 0 + 0.95 · 0.5 = 0.475
    r = torch.tensor([[0.0, 7.0, 1.0]])  # the 7 sits on a non-action position and must not count
    adv, ret = gae(r, torch.tensor([[0.5, 9.0, 0.5]]), torch.tensor([[1.0, 0.0, 1.0]]))
    assert adv.tolist()[0] == pytest.approx([0.475, 0.0, 0.5])
    assert ret.tolist()[0] == pytest.approx([0.975, 0.0, 1.0])


def test_kl_estimators_values():
    logp, ref = torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))
    # log r = log(0.25/0.5) = −log 2
    assert float(kl_per_token(logp, ref, "k1")) == pytest.approx(math.log(2))  # 0.6931
    assert float(kl_per_token(logp, ref, "k2")) == pytest.approx(0.5 * math.log(2) ** 2)  # 0.2402
    assert float(kl_per_token(logp, ref, "k3")) == pytest.approx(0.5 - 1 + math.log(2))  # 0.1931
    # the other way round: log r = +log 2; k1 negative, k3 = (2 − 1) − log 2 = 0.3069
    assert float(kl_per_token(ref, logp, "k1")) == pytest.approx(-math.log(2))
    assert float(kl_per_token(ref, logp, "k3")) == pytest.approx(1 - math.log(2))
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_per_token(logp, ref, "k4")


def test_kl_penalized_rewards_score_on_last_action():
    # mask [0, 1, 1, 0]; k1 = logp − ref = [·, 1, 0.5, ·]; β = 0.1 → [0, −0.1, −0.05 + 1, 0]
    logp = torch.tensor([[0.0, -1.0, -1.0, -3.0]])
    ref = torch.tensor([[0.0, -2.0, -1.5, -9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    rewards, kl = kl_penalized_rewards(torch.tensor([1.0]), logp, ref, mask, beta=0.1)
    assert rewards.tolist()[0] == pytest.approx([0.0, -0.1, 0.95, 0.0])
    assert kl.tolist()[0] == pytest.approx([0.0, 1.0, 0.5, 0.0])


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(12.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))  # error clipped at +0.2
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(3.0, 256) == pytest.approx(0.1 * (1 - 0.2 * 256 / 10000))  # −0.5 clipped at −0.2
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(6.6, 100) == pytest.approx(0.1 * (1 + 0.1 * 100 / 10000))  # inside the clip


def test_clipped_policy_loss_and_clipfrac():
    # ε = 0.2; rows: (ρ, A) = (1.5, 1): max(−1.5, −1.2) = −1.2 clipped; (1.5, −1): max(1.5, 1.2) = 1.5;
    # (0.5, 1): max(−0.5, −0.8) = −0.5; (0.5, −1): max(0.5, 0.8) = 0.8 clipped → mean 0.15, clipfrac 0.5
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    loss, stats = clipped_policy_loss(logp, old, adv, torch.ones(4, 1), clip=0.2)
    assert float(loss.detach()) == pytest.approx(0.15)
    assert float(stats["clipfrac"]) == pytest.approx(0.5)
    loss.backward()
    # clipped rows get no gradient; the others −A·ρ/4
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 1.5 / 4, -0.5 / 4, 0.0])


def test_clipped_value_loss():
    # V=1.0, V_old=0.5, R=0.6: V_clip = 0.7; max(0.16, 0.01) = 0.16 (unclipped wins)
    # V=0.0, V_old=0.5, R=0.0: V_clip = 0.3; max(0, 0.09) = 0.09 (clipped wins) → ½·mean = 0.0625
    loss, stats = clipped_value_loss(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.5], [0.5]]),
                                     torch.tensor([[0.6], [0.0]]), torch.ones(2, 1), clip=0.2)
    assert float(loss) == pytest.approx(0.5 * (0.16 + 0.09) / 2)
    assert float(stats["vf_clipfrac"]) == pytest.approx(0.5)
    assert float(stats["value_error"]) == pytest.approx(0.08)


def test_whitening_and_running_moments():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 2, unbiased var 1 → [−1, 0, 1]; the padded 100 is ignored and zeroed
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)
    m = RunningMoments()
    m.update(torch.tensor([1.0, 2.0, 3.0]))
    m.update(torch.tensor([4.0, 5.0]))
    # all five: mean 3, population variance 2, sample std sqrt(2.5)
    assert m.mean == pytest.approx(3.0) and m.var == pytest.approx(2.0) and m.std == pytest.approx(math.sqrt(2.5))
    assert m.normalize(torch.tensor([3.0])).item() == pytest.approx(0.0)


def test_ema_and_ptx_and_entropy():
    e, p = torch.ones(2), torch.zeros(2)
    ema_update([e], [p], beta=0.992)
    assert e.tolist() == pytest.approx([0.992, 0.992])
    ema_update([e], [p], beta=0.992)
    assert e.tolist() == pytest.approx([0.984064, 0.984064])
    # InstructGPT's γ = 27.8: 0.5 + 27.8 · 2.0 = 56.1; γ = 0 leaves the PPO loss alone
    assert float(ptx_mix(torch.tensor(0.5), torch.tensor(2.0), 27.8)) == pytest.approx(56.1)
    assert float(ptx_mix(torch.tensor(0.5), torch.tensor(2.0), 0.0)) == pytest.approx(0.5)
    assert float(entropy_from_logits(torch.zeros(4))) == pytest.approx(math.log(4))
