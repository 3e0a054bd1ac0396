"""Tests for meta-training: the meta-gradient (closed form, higher, finite differences) and the loop."""
from __future__ import annotations

import copy

import pytest
import torch

from finetune.models import load_model
from finetune.scoring import TaskScorer
from finetune.tasks import Example
from finetune.zo import ZOEngine
from meta.metagrad import closed_form, unrolled
from pertnn import PertNNBank, PertNNConfig, StepHistory, model_blocks

BATCH = [Example(prompt=f"q{i}: is {i} even?", options=(" yes", " no"), label=i % 2) for i in range(4)]


def _setup(name="tiny-llama", noise="table", dtype=torch.float64, seed=0):
    model, tok = load_model(name, seed=seed)
    model = model.to(dtype)
    scorer = TaskScorer(tok, max_length=32)
    engine = ZOEngine(model, noise=noise)
    gen = torch.Generator().manual_seed(1)
    bank = PertNNBank([b.numel for b in model_blocks(model)], PertNNConfig(hidden=8), generator=gen, dtype=dtype)
    bank.randomize_output_(gen)  # a non-zero last layer, so every bank parameter gets a gradient
    return model, scorer, engine, bank


def _loss_fn(scorer):
    return lambda m: scorer.loss(m, BATCH)


# Llama and Qwen2 compute RMSNorm in float32 whatever the model dtype, which puts ~1e-7 noise on the loss
# and makes finite differences useless there; GPT-2 and OPT run in float64 throughout.
@pytest.mark.parametrize("name,noise,fd", [
    ("tiny-gpt2", "table", True), ("tiny-opt", "gaussian", True),
    ("tiny-llama", "table", False), ("tiny-qwen2", "gaussian", False),
])
def test_closed_form_equals_higher_and_finite_difference(name, noise, fd):
    """K = 1: the closed-form chain rule and autograd through higher give the same bank gradient, and both
    match a central finite difference of L(θ − η g σ(φ) u) in bank parameters (g held fixed)."""
    model, scorer, engine, bank = _setup(name, noise=noise)
    loss_fn = _loss_fn(scorer)
    seed, eps, lr = 1234, 1e-3, 0.5
    theta0 = [p.detach().clone() for p in engine.params]

    hist_a = StepHistory(len(engine.params))
    hist_a.update(0.7, 0.6, torch.ones(len(engine.params)))  # non-trivial loss features
    hist_b = copy.deepcopy(hist_a)
    feats = hist_a.features(engine.params)

    bank.zero_grad()
    a = closed_form(engine, bank, hist_a, loss_fn, seed, eps, lr)
    grads_a = {k: v.grad.clone() for k, v in bank.named_parameters()}
    for p, t in zip(engine.params, theta0):  # θ is back (up to the rounding of θ − a u + a u)
        torch.testing.assert_close(p.detach(), t, rtol=0, atol=1e-12)

    bank.zero_grad()
    b = unrolled(engine, bank, hist_b, loss_fn, [seed], eps, lr)
    grads_b = {k: v.grad.clone() for k, v in bank.named_parameters()}
    # the same estimate (θ came back up to rounding, so the losses agree to ~1e-15)
    assert a.g == pytest.approx(b.g, rel=1e-9) and a.loss_plus == pytest.approx(b.loss_plus, rel=1e-12)
    assert a.meta_loss == pytest.approx(b.meta_loss, rel=1e-12)
    for k in grads_a:
        assert grads_a[k].abs().max() > 0, k
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-6, atol=1e-12)
    assert hist_a.losses == pytest.approx(hist_b.losses, rel=1e-12)

    if not fd:
        return
    # finite difference in b2 (the output bias of each block's MLP) and one W1 entry, g held at a.g
    def meta_loss() -> float:
        sigma = bank(feats).detach()
        with torch.no_grad():
            for i, (p, t) in enumerate(zip(engine.params, theta0)):
                p.copy_(t - lr * a.g * float(sigma[i]) * engine.unit_noise(seed, i))
            value = float(loss_fn(model))
            for p, t in zip(engine.params, theta0):
                p.copy_(t)
        return value

    h = 1e-6
    for name, idx in [("b2", (0, 0)), ("b2", (3, 0)), ("b2", (len(engine.params) - 1, 0)), ("W1", (2, 1, 3))]:
        param = getattr(bank, name)
        with torch.no_grad():
            param[idx] += h
        up = meta_loss()
        with torch.no_grad():
            param[idx] -= 2 * h
        down = meta_loss()
        with torch.no_grad():
            param[idx] += h
        diff = (up - down) / (2 * h)
        assert diff == pytest.approx(float(grads_a[name][idx]), rel=1e-4, abs=1e-9), (name, idx)


def test_closed_form_leaves_gradient_at_the_virtual_point():
    """The model's .grad after a closed-form step is ∇L(θ') (reused by the first-order trajectory)."""
    model, scorer, engine, bank = _setup()
    loss_fn = _loss_fn(scorer)
    hist = StepHistory(len(engine.params))
    step = closed_form(engine, bank, hist, loss_fn, 7, 1e-3, 0.5)
    got = [p.grad.clone() for p in engine.params]
    ref = copy.deepcopy(model)
    ref_engine = ZOEngine(ref, noise="table")
    ref_engine.scales = step.sigma.double()
    ref_engine.update_(7, -0.5 * step.g)
    ref.zero_grad()
    loss_fn(ref).backward()
    for g, p in zip(got, ref_engine.params):
        torch.testing.assert_close(g, p.grad, rtol=1e-9, atol=1e-12)
    assert hist.losses == (step.loss_plus, step.loss_minus)


def test_unrolled_two_steps_differs_from_one_and_reaches_the_bank():
    model, scorer, engine, bank = _setup(dtype=torch.float32)
    loss_fn = _loss_fn(scorer)
    before = engine.forwards
    bank.zero_grad()
    unrolled(engine, bank, StepHistory(len(engine.params)), loss_fn, [1, 2], 1e-3, 0.5)
    assert engine.forwards - before == 2 + 2 + 1
    g2 = bank.b2.grad.clone()
    bank.zero_grad()
    unrolled(engine, bank, StepHistory(len(engine.params)), loss_fn, [1], 1e-3, 0.5)
    assert torch.isfinite(g2).all() and g2.abs().max() > 0
    assert not torch.allclose(g2, bank.b2.grad)
