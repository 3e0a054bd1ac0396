"""The expected one-step change of a held-out loss under a ZO step, over the noise, to second order.

Set-up: Gaussian noise ``z = s * n`` with ``n ~ N(0, I)`` and one scale ``s_b`` per block (parameter tensor) b;
one ZO step of size ``eta`` whose estimate uses a training batch, ``theta' = theta - eta (z . a) z`` with
``a = grad L_train`` (the two-point SPSA estimate ``(L(theta + eps z) - L(theta - eps z)) / (2 eps)`` is
``z . a`` up to third order in eps). With ``h = grad L_held`` and ``H`` the held-out loss's Hessian, a second-order
expansion and Isserlis' theorem (``E[(n.u)^2 n.Mn] = |u|^2 tr M + 2 u.Mu`` for symmetric M) give

    E[dL_held] = -eta A + (eta^2 / 2) C,
    A = sum_b s_b^2 <a_b, h_b>,
    C = (sum_b s_b^2 |a_b|^2) (sum_b s_b^2 tr H_b) + 2 (s^2 a).H(s^2 a),

so the best step is ``eta* = A / C`` (when A > 0 and C > 0) and its expected change ``-A^2 / (2 C)``. Every term is
available with backpropagation during meta-training: two gradients, per-block Hessian traces from
Hutchinson probes (``E[v_b . (Hv)_b] = tr H_b`` for Rademacher v, all blocks from one Hessian-vector product
per probe) and one more Hessian-vector product for the last term. This is the expectation over the noise,
not one draw of it. Hessian-vector products differentiate twice: run models with an attention that allows it
(on CPU, ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``).

:func:`block_terms` computes the per-block quantities once; :func:`expected_change` evaluates the objective for
any allocation ``s`` from them (the last term needs the Hessian, so it takes a Hessian-vector product), and
:func:`allocation_gradient` its gradient with respect to the allocation, the meta-gradient a tuner trained on this
objective would follow:

    dE/d(s_b^2) = -eta <a_b, h_b> + (eta^2 / 2) [ |a_b|^2 sum_c s_c^2 tr H_c + tr H_b sum_c s_c^2 |a_c|^2
                                                  + 4 <a_b, (H (s^2 a))_b> ].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass
class BlockTerms:
    """Per-block quantities of one (train batch, held-out batch) pair; vectors have one entry per block."""

    dot: torch.Tensor      # <a_b, h_b>: agreement of the train and held-out gradients
    sq: torch.Tensor       # |a_b|^2
    trace: torch.Tensor    # tr H_b of the held-out loss (Hutchinson estimate, or exact when given)
    train_grad: list[torch.Tensor]
    hvp: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]  # v -> H v for the held-out loss


def _grad(value: torch.Tensor, params: Sequence[torch.Tensor], create_graph: bool = False) -> list[torch.Tensor]:
    """d value / d params, zeros for a parameter the value does not use."""
    grads = torch.autograd.grad(value, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _hvp_fn(params: Sequence[torch.Tensor], held_loss: Callable[[], torch.Tensor]):
    def hvp(vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        grads = _grad(held_loss(), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vectors) if g.requires_grad)
        if not isinstance(dot, torch.Tensor):  # the loss is linear in every parameter
            return [torch.zeros_like(p) for p in params]
        return [x.detach() for x in _grad(dot, params)]
    return hvp


def block_terms(params: Sequence[torch.Tensor], train_loss: Callable[[], torch.Tensor],
                held_loss: Callable[[], torch.Tensor], probes: int = 4,
                generator: torch.Generator | None = None) -> BlockTerms:
    """The per-block terms at the current ``params`` (tensors with ``requires_grad``): the train and held-out
    gradients' dot products and squared norms, and ``probes`` Rademacher Hutchinson probes of the held-out
    Hessian's per-block traces (:func:`hutchinson_traces`; no probes leaves them zero)."""
    a = [g.detach() for g in _grad(train_loss(), params)]
    h = [g.detach() for g in _grad(held_loss(), params)]
    hvp = _hvp_fn(params, held_loss)
    trace = hutchinson_traces(params, hvp, probes, generator)
    return BlockTerms(dot=torch.stack([(x * y).sum().double() for x, y in zip(a, h)]),
                      sq=torch.stack([(x * x).sum().double() for x in a]), trace=trace, train_grad=a, hvp=hvp)


def hutchinson_traces(params: Sequence[torch.Tensor], hvp: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]],
                      probes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-block ``tr H_b`` from ``probes`` Rademacher probes ``v`` (``E[v_b . (Hv)_b] = tr H_b``), one
    Hessian-vector product each; zeros for no probes."""
    trace = torch.zeros(len(params), dtype=torch.float64)
    for _ in range(probes):
        v = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p.dtype) for p in params]
        hv = hvp(v)
        trace += torch.stack([(vi * hvi).sum().double() for vi, hvi in zip(v, hv)]) / probes
    return trace


def expected_change(terms: BlockTerms, s2: torch.Tensor, eta: float | None = None) -> dict:
    """``E[dL_held]`` for per-block squared scales ``s2`` and step ``eta`` (None: the best step ``A / C``), with its
    parts ``A`` and ``C`` (see the module docstring). ``eta_star`` is None where the quadratic model has no
    minimum along eta (``C <= 0``, e.g. from negative trace estimates) or the step would go uphill (``A <= 0``)."""
    s2 = s2.to(torch.float64)
    A = float((s2 * terms.dot).sum())
    w = [float(s) * g for s, g in zip(s2, terms.train_grad)]  # s^2 * a
    quad = float(sum((x * hx).sum().double() for x, hx in zip(w, terms.hvp(w))))
    C = float((s2 * terms.sq).sum() * (s2 * terms.trace).sum()) + 2 * quad
    eta_star = A / C if A > 0 and C > 0 else None
    step = eta_star if eta is None else eta
    return {"A": A, "C": C, "eta_star": eta_star,
            "change": None if step is None else -step * A + 0.5 * step ** 2 * C}


def allocation_gradient(terms: BlockTerms, s2: torch.Tensor, eta: float) -> torch.Tensor:
    """``dE[dL_held] / d(s_b^2)`` for every block at the squared scales ``s2`` and step ``eta`` (the module
    docstring's formula; one Hessian-vector product). For the gradient with respect to ``s_b`` multiply by
    ``2 s_b``."""
    s2 = s2.to(torch.float64)
    w = [float(s) * g for s, g in zip(s2, terms.train_grad)]  # s^2 * a
    a_hw = torch.stack([(a * hw).sum().double() for a, hw in zip(terms.train_grad, terms.hvp(w))])
    curvature = terms.sq * (s2 * terms.trace).sum() + terms.trace * (s2 * terms.sq).sum() + 4 * a_hw
    return -eta * terms.dot + 0.5 * eta ** 2 * curvature
