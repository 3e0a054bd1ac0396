"""The meta-gradient of the PertNN bank: the loss after K virtual ZO steps, backpropagated into the bank.

One meta step at trajectory point θ, on one minibatch (``loss_fn(model)`` evaluates it):

1. features x (no gradient) → σ = bank(x), one scale per block, differentiable w.r.t. the bank;
2. a two-point SPSA estimate along σ⊙u with seed s: ``g = (L(θ+εσu) − L(θ−εσu)) / 2ε`` (detached);
3. the virtual ZO step ``θ' = θ − η·g·σ⊙u``; repeated K times (``unroll``), each with fresh σ and seed;
4. meta loss ``L(θ'_K)`` on the same batch, backpropagated into the bank; g is a constant throughout.

Two implementations:

* :func:`closed_form` (K = 1, the default, fast): with g detached, ∂L(θ')/∂σ_b = −η·g·⟨∇_b L(θ'), u_b⟩,
  so one ordinary backward at θ' (θ moved in place and moved back) gives every block's coefficient, the
  noise u_b being regenerated from the seed (never stored). ``σ.backward(coefficients)`` then reaches the
  bank, through the energy normalisation too. The model's ``.grad`` is left holding ∇L(θ'), which the
  first-order trajectory step may reuse.
* :func:`unrolled` (any K): the K virtual steps are differentiated with ``higher`` (a functional copy of
  the model whose parameters are the non-leaf θ'_k). Used for K > 1, and as
  the reference that the closed form is tested against.

Both return :class:`MetaStep`; both count their forward passes on the engine. :func:`closed_form` also
trains a direction policy (:mod:`pertnn.policy`) jointly with the bank: its gates enter θ' linearly
through the direction, exactly like σ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from finetune.zo.online import OnlineMean, tuned_direction
from finetune.zo.engine import ZOEngine
from pertnn import PertNNBank, StepHistory
from pertnn.policy import DirectionPolicy

LossFn = Callable[[nn.Module], torch.Tensor]


@dataclass
class MetaStep:
    """What one meta step saw: the meta loss L(θ'), the first SPSA step's losses and projected gradient,
    the scales it used, and the first-order gain statistics of the first virtual step (see :func:`gains`)."""

    meta_loss: float
    loss_plus: float
    loss_minus: float
    g: float
    sigma: torch.Tensor
    tuned_sq: float = float("nan")
    mezo_sq: float = float("nan")
    gate: torch.Tensor | None = None


def gains(sigma: torch.Tensor, dots: torch.Tensor) -> tuple[float, float]:
    """``(<∇L, σ⊙u>², <∇L, u>²)`` from the per-block dots ``c_b = <∇_b L, u_b>``.

    To first order, a ZO step along direction d with g ≈ <∇L, d> lowers the loss by η·<∇L, d>², so the
    ratio of their running means is the first-order gain of the tuned perturbation over MeZO's (σ ≡ 1)
    on the same noise; it ignores curvature, so it is a progress signal, not a result.
    """
    s = sigma.detach().double().cpu()
    return float((s * dots).sum() ** 2), float(dots.sum() ** 2)


def closed_form(engine: ZOEngine, bank: PertNNBank, history: StepHistory, loss_fn: LossFn,
                seed: int, eps: float, lr: float, policy: DirectionPolicy | None = None,
                online: OnlineMean | None = None) -> MetaStep:
    """One K = 1 meta step by the closed-form chain rule (module docstring). Accumulates into the bank's
    ``.grad``; leaves ∇L(θ') in the model's ``.grad`` (zeroed first) and θ back where it was (up to the
    rounding of ``θ − a·u + a·u``). Updates ``history`` with the step's losses and scales.

    With a direction ``policy`` (and the task's ``online`` mean), the direction is
    ``σ_b (√(1 − w_b²) u_b + w_b m̂_b)`` (:mod:`pertnn.policy`), so with ``a_b = σ_b √(1 − w_b²)`` and
    ``c_b = σ_b w_b``: ∂L(θ')/∂a_b = −η·g·⟨∇_b L(θ'), u_b⟩ and ∂L(θ')/∂c_b = −η·g·⟨∇_b L(θ'), m̂_b⟩, which
    reach both the bank and the policy; the online mean is then updated with the step, as at fine-tuning."""
    model, params = engine.model, engine.params
    features = history.features(params)
    sigma = bank(features)
    direction, gate, iso, mean_scale = tuned_direction(seed, sigma, features, policy, online)
    g, plus, minus = engine.spsa(lambda: loss_fn(model), direction, eps)
    for p in params:
        p.grad = None
    engine.update_(direction, -lr * g)
    try:
        with torch.enable_grad():
            meta_loss = loss_fn(model)
            meta_loss.backward()
        engine.forwards += 1
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        dots = engine.noise_dots(grads, seed)
        if policy is not None:
            rms = online.rms()
            mean_dots = torch.stack([torch.dot(gr.reshape(-1).double(), m.reshape(-1).double()).cpu() / r
                                     if r > 0 else torch.zeros((), dtype=torch.float64)
                                     for gr, m, r in zip(grads, online.means, rms.tolist())])
    finally:
        engine.update_(direction, lr * g)
    if policy is None:
        sigma.backward(-lr * g * dots.to(sigma.device))
    else:
        surrogate = (iso * dots.to(iso.device)).sum() + (mean_scale * mean_dots.to(iso.device)).sum()
        (-lr * g * surrogate).backward()
        online.update(seed, g, gate.detach())
    history.update(plus, minus, sigma)
    return MetaStep(float(meta_loss.detach()), plus, minus, g, sigma.detach().cpu(), *gains(iso, dots),
                    gate=None if gate is None else gate.detach().cpu())


# ----------------------------------------------------------------------------------------- higher

def _shim_module_list_slicing(fmodel: nn.Module) -> None:
    """Make ``higher``'s patched ModuleLists sliceable.

    transformers' decoders iterate ``self.layers[: self.config.num_hidden_layers]``. Slicing a ModuleList
    builds a new instance of the list's class, and ``higher``'s monkey-patched class cannot be built that
    way (``__init__() missing 1 required positional argument: 'root'``); higher 0.2.1 is unmaintained
    since 2020. A slice is only iterated, so returning the plain list of its modules is enough.
    """
    for m in fmodel.modules():
        if isinstance(m, nn.ModuleList):
            original = nn.ModuleList.__getitem__

            def getitem(self, idx, original=original):
                if isinstance(idx, slice):
                    return list(self._modules.values())[idx]
                return original(self, idx)

            type(m).__getitem__ = getitem


class _Bound:
    """A higher functional model with its parameters bound, callable like the model itself."""

    def __init__(self, fmodel: nn.Module, params: list[torch.Tensor]):
        self.fmodel, self.params = fmodel, params

    def __call__(self, *args, **kwargs):
        return self.fmodel(*args, params=self.params, **kwargs)

    def parameters(self):
        return iter(self.params)


def unrolled(engine: ZOEngine, bank: PertNNBank, history: StepHistory, loss_fn: LossFn,
             seeds: list[int], eps: float, lr: float) -> MetaStep:
    """A meta step through ``len(seeds)`` virtual ZO steps, differentiated with ``higher``.

    The first SPSA estimate runs on the model itself (θ'_0 = θ), exactly as :func:`closed_form` does; the
    later ones at the detached θ'_k ± εσu through the functional copy. Only the first step's losses and
    scales go into ``history`` (the later steps are virtual and see a copy). The model's ``.grad`` is not
    touched: a first-order trajectory step needs its own backward.
    """
    import higher  # only this path needs it

    model, params = engine.model, engine.params
    fmodel = higher.monkeypatch(model, copy_initial_weights=True, track_higher_grads=True)
    _shim_module_list_slicing(fmodel)
    theta = [p.detach() for p in params]
    hist = history
    first = None
    for k, seed in enumerate(seeds):
        sigma = bank(hist.features([t.detach() for t in theta]))
        if k == 0:
            g, plus, minus = engine.spsa(lambda: loss_fn(model), tuned_direction(seed, sigma, None)[0], eps)
            first = (plus, minus, g, sigma)
            history.update(plus, minus, sigma)
            hist = StepHistory(len(params), history.cfg)
            hist.load_state_dict(history.state_dict())
        else:
            s = sigma.detach()
            with torch.no_grad():
                noise = [engine.unit_noise(seed, i, t) for i, t in enumerate(theta)]
                plus_p = [t.detach() + eps * float(s[i]) * u for i, (t, u) in enumerate(zip(theta, noise))]
                minus_p = [t.detach() - eps * float(s[i]) * u for i, (t, u) in enumerate(zip(theta, noise))]
                plus = float(loss_fn(_Bound(fmodel, plus_p)))
                minus = float(loss_fn(_Bound(fmodel, minus_p)))
            engine.forwards += 2
            g = (plus - minus) / (2 * eps)
            hist.update(plus, minus, sigma)
        theta = [t - (lr * g) * sigma[i].to(t.dtype) * engine.unit_noise(seed, i, t)
                 for i, t in enumerate(theta)]
    with torch.enable_grad():
        meta_loss = loss_fn(_Bound(fmodel, theta))
        meta_loss.backward()
    engine.forwards += 1
    plus, minus, g, sigma = first
    return MetaStep(float(meta_loss.detach()), plus, minus, g, sigma.detach().cpu())
