"""Optimizers (LAMB against its paper's update), weight-decay groups, schedules and clipping."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.optim import (LRSchedule, OptimConfig, ScheduleConfig, build_optimizer, clip_grad_norm, make_lamb,
                            param_groups)


@pytest.fixture(autouse=True)
def _one_thread():
    # Two cores shared by several jobs: one thread avoids OpenMP spin-waiting and is faster for tiny models.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lamb_matches_algorithm_2_by_hand():
    """You et al. 2020, Algorithm 2 with phi = identity, eps = 0, on x = [1, -2]."""
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = make_lamb([x], lr=0.01, betas=(0.9, 0.999), eps=0.0, weight_decay=0.1)
    x.grad = torch.tensor([0.5, 0.5])
    opt.step()
    # m = 0.1*g = [.05, .05]; v = 0.001*g^2 = [.00025, .00025]; m^ = m/0.1 = [.5, .5]; v^ = v/0.001 = [.25, .25]
    # r = m^/sqrt(v^) = [1, 1]; u = r + 0.1*x = [1.1, 0.8]; ||x|| = sqrt(5) = 2.2360680; ||u|| = sqrt(1.85) = 1.3601471
    # x <- x - 0.01 * (2.2360680 / 1.3601471) * u = x - 0.016439899 * [1.1, 0.8]
    assert torch.allclose(x.detach(), torch.tensor([0.98191611, -2.01315192]), atol=1e-7)

    x.grad = torch.tensor([-1.0, 0.25])
    opt.step()
    # step 2, written out: bias corrections 1 - 0.9^2 = 0.19 and 1 - 0.999^2 = 0.001999
    g, x1 = [-1.0, 0.25], [0.98191611, -2.01315192]
    m = [0.9 * 0.05 + 0.1 * g[0], 0.9 * 0.05 + 0.1 * g[1]]  # [-0.055, 0.07]
    v = [0.999 * 0.00025 + 0.001 * g[0] ** 2, 0.999 * 0.00025 + 0.001 * g[1] ** 2]  # [0.00124975, 0.00031225]
    r = [(m[i] / 0.19) / math.sqrt(v[i] / 0.001999) for i in range(2)]
    u = [r[i] + 0.1 * x1[i] for i in range(2)]
    trust = math.hypot(*x1) / math.hypot(*u)
    expected = [x1[i] - 0.01 * trust * u[i] for i in range(2)]
    assert torch.allclose(x.detach(), torch.tensor(expected), atol=1e-6)


def test_lamb_trust_ratio_is_one_for_zero_weights():
    x = torch.zeros(3, requires_grad=True)
    opt = make_lamb([x], lr=0.1, eps=0.0)
    x.grad = torch.tensor([1.0, -1.0, 2.0])
    opt.step()
    # ||x|| = 0 -> trust 1; r = m^/sqrt(v^) = sign(g) on the first step -> x = -0.1 * sign(g)
    assert torch.allclose(x.detach(), torch.tensor([-0.1, 0.1, -0.1]))


def _tiny_model():
    from pretrain.model import build_model, from_preset

    torch.manual_seed(0)
    return build_model(from_preset("tiny"))


def test_param_groups_follow_nanogpt():
    model = _tiny_model()
    groups = param_groups(model, weight_decay=0.1)
    decay, no_decay = groups[0]["params"], groups[1]["params"]
    assert all(p.dim() >= 2 for p in decay) and all(p.dim() < 2 for p in no_decay)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    wte = model.get_input_embeddings().weight
    assert any(p is wte for p in decay)  # nanoGPT decays embeddings (dim >= 2)
    n_total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == n_total  # tied weights counted once
    groups = param_groups(model, weight_decay=0.1, decay_embeddings=False)
    assert any(p is wte for p in groups[1]["params"])


def test_schedule_is_nanogpts_get_lr():
    s = LRSchedule(1e-3, ScheduleConfig(kind="cosine", warmup_iters=100, decay_iters=2000, min_lr=1e-4), 2000)
    assert s(0) == pytest.approx(1e-3 / 101)  # lr * (it + 1) / (warmup + 1)
    assert s(100) == pytest.approx(1e-3)
    assert s(1050) == pytest.approx(5.5e-4)  # half way: min + 0.5 * (lr - min)
    assert s(2000) == pytest.approx(1e-4) and s(2500) == pytest.approx(1e-4)
    lin = LRSchedule(1e-3, ScheduleConfig(kind="linear", warmup_iters=100, decay_iters=2000, min_lr=1e-4), 2000)
    assert lin(575) == pytest.approx(1e-4 + 0.75 * 9e-4)  # a quarter of the decay done


def test_clip_grad_norm():
    w = torch.zeros(2, requires_grad=True)
    w.grad = torch.tensor([3.0, 4.0])
    norm = clip_grad_norm([w], 1.0)
    assert norm.item() == pytest.approx(5.0)  # the norm before clipping
    assert torch.allclose(w.grad, torch.tensor([0.6, 0.8]))


@pytest.mark.parametrize("name", ["adamw", "radam", "adafactor", "lamb"])
def test_each_optimizer_lowers_the_loss(name):
    model = _tiny_model()
    # LAMB scales each step to lr * ||w|| (1% of the weights per step at 1e-2): it is run at a higher rate.
    opt = build_optimizer(model, OptimConfig(name=name, lr=5e-2 if name == "lamb" else 1e-2))
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(10):
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
