"""ZO methods that choose their SPSA direction: MeZO-GV, MeZO-Greedy (Jin et al., arXiv 2601.04710) and
LDSD, learnable direction sampling (Parfenov, ..., Beznosikov, arXiv 2602.13659).

All three evaluate a pool of seeded candidate directions on the step's minibatch, one-sided
(``L(theta + eps * s * d_i)``, one forward pass each, as in the papers), and then take a two-point SPSA
step along a direction built from the pool. Nothing direction-sized is stored per candidate: a
direction is a list of ``(seed, coefficient)`` pairs that :class:`~finetune.zo.engine.ZOEngine` replays in the
candidate evaluation, in the ``+-eps`` passes and in the update, always with the same seeds and
coefficients. Each method comes with the ZO-SGD update (``momentum=0`` is plain SGD, ``momentum>0``
heavy-ball) and with the ZO-Adam update (``*Adam`` classes); :func:`make_direction_optimizer` builds them.

Forward passes per step (``engine.forwards`` counts every one):

* ``gv``: M candidates + 2 (``L(theta +- eps v)`` along the new direction v) = **M + 2**.
* ``greedy``: M candidates + 1 = **M + 1**. ``L(theta + eps z*)`` is the best candidate's loss, already
  evaluated at exactly that point on the same batch, so only ``L(theta - eps z*)`` is new. The papers
  (and LDSD's released code) evaluate it again, M + 2, which gives the same number at one more pass.
* ``ldsd``: k candidates + 1 = **k + 1**, for the same reason.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable

import torch
from torch import nn

from finetune.zo.engine import Direction
from finetune.zo.optim import ZOAdam, ZOOptimizer, ZOSGD


LDSD_RULES = ("corrected", "released")


def released_score_seed(best_seed: int, i: int) -> int:
    """The seed whose noise the ``released`` LDSD rule pairs with advantage i: the best seed itself for
    i = 0, and noise derived from the best seed's stream (which produced no loss) for the others."""
    return best_seed if i == 0 else (best_seed * 0x2545F4914F6CDD1D + i * 0x9E3779B97F4A7C15) % 2**62


def _rank(losses: list[float]) -> list[int]:
    """Candidate indices from the lowest loss to the highest (ties: the earlier candidate first)."""
    return sorted(range(len(losses)), key=lambda i: (losses[i], i))


class _CandidatePool:
    """Mixin over a :class:`ZOOptimizer`: draws a pool of seeds and evaluates its one-sided losses."""

    def _check_q(self, kw: dict) -> None:
        if kw.pop("q", 1) != 1:
            raise ValueError(f"{type(self).__name__} takes one SPSA direction per step; set its candidates, not q")

    def _pool(self, closure: Callable[[], torch.Tensor], size: int, eps: float, coeff: float = 1.0,
              mean: list[torch.Tensor] | None = None) -> tuple[list[int], list[float]]:
        """``size`` fresh seeds and ``L(theta + eps * (coeff * z(seed) + mean))`` for each."""
        seeds = [self.draw_seed() for _ in range(size)]
        losses = []
        for seed in seeds:
            with self.engine.perturbed(Direction([(seed, coeff)], offset=mean), eps):
                losses.append(self.engine.loss(closure))
        return seeds, losses

    @staticmethod
    def _give_up(losses: list[float]) -> dict:
        """A candidate loss is not finite: no step (the trainer stops on the NaN loss)."""
        return {"loss": math.nan, "candidate_losses": losses}


class _Candidates(_CandidatePool):
    """Mixin: a method that evaluates ``candidates`` seeded directions per step (at least 2)."""

    NAME = "this method"

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, candidates: int = 4, **kw):
        if candidates < 2:
            raise ValueError(f"{self.NAME} needs at least 2 candidates")
        self._check_q(kw)
        super().__init__(model, lr, eps, candidates=candidates, **kw)


class GVStep(_Candidates):
    """MeZO-GV: ZO-SGD along a guiding vector built from M ranked candidates.

    Per step, on one minibatch: draw M seeds and evaluate ``l_i = L(theta + eps z_i)`` (one-sided, M
    forward passes); rank them; with ``t = floor(M/2)`` the guiding vector is
    ``v = mean(z_i, best t) - mean(z_i, other M - t)`` (the paper's alpha = 0.5, not normalised, so
    ``E|v|^2 = d (1/t + 1/(M-t))``); then two-point SPSA along v,
    ``g = (L(theta + eps v) - L(theta - eps v)) / (2 eps)`` (2 passes), and the update uses
    ``ghat = g v``. v is the combination ``sum_i c_i z(seed_i)`` with ``c_i = 1/t`` or ``-1/(M-t)``,
    replayed from the seeds in the +- passes and the update, never stored. Cost: M + 2 forward passes,
    memory as the underlying update rule (plain SGD: none). With M = 2 the ranking carries no
    information (``ghat`` is invariant to ``v -> -v``): GV-2 is MeZO with a longer probe.
    Returns the mean of ``L(theta +- eps v)``.
    """

    NAME = "MeZO-GV"

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        group = self.param_groups[0]
        eps, m = group["eps"], group["candidates"]
        seeds, losses = self._pool(closure, m, eps)
        if not all(math.isfinite(x) for x in losses):
            return self._give_up(losses)
        top = m // 2
        coeffs = [0.0] * m
        for rank, i in enumerate(_rank(losses)):
            coeffs[i] = 1.0 / top if rank < top else -1.0 / (m - top)
        g, plus, minus = self.engine.spsa(closure, list(zip(seeds, coeffs)), eps)
        estimate = Direction([(s, g * c) for s, c in zip(seeds, coeffs)])
        return self._finish(group, (plus + minus) / 2, g, plus, minus, estimate,
                            candidate_losses=losses, coefficients=coeffs)


class GreedyStep(_Candidates):
    """MeZO-Greedy: ZO-SGD along the best of M candidate directions.

    Per step: evaluate ``l_i = L(theta + eps z_i)`` for M seeds (one-sided, M passes), keep
    ``z* = argmin_i l_i``, and take the two-point estimate ``g = (l_* - L(theta - eps z*)) / (2 eps)``,
    ``ghat = g z*``. ``l_*`` is ``L(theta + eps z*)`` itself, so the minus side is the only new pass:
    M + 1 forward passes (the paper re-evaluates the plus side: M + 2 for the same estimate). Memory as
    the underlying update rule. Returns the mean of the two sides.
    """

    NAME = "MeZO-Greedy"

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        group = self.param_groups[0]
        eps = group["eps"]
        seeds, losses = self._pool(closure, group["candidates"], eps)
        if not all(math.isfinite(x) for x in losses):
            return self._give_up(losses)
        best = _rank(losses)[0]
        plus = losses[best]
        with self.engine.perturbed(seeds[best], -eps):
            minus = self.engine.loss(closure)
        g = (plus - minus) / (2 * eps)
        return self._finish(group, (plus + minus) / 2, g, plus, minus, Direction([(seeds[best], g)]),
                            candidate_losses=losses, best=best)


class LDSDStep(_CandidatePool):
    """LDSD: greedy ZO-SGD over directions drawn from a learned Gaussian ``N(mu, sigma^2 I)`` per block.

    A candidate direction is ``u_i = mu + sigma * z(seed_i)`` (z the seeded noise; ``mu = 0`` at the
    start, i.e. MeZO's sampler when ``sigma = 1``). Per step, on one minibatch:

    1. ``f_i = L(theta + eps u_i)`` for k fresh seeds (one-sided, k forward passes).
    2. ``u* = u_{argmin f}``; ``g = (f_* - L(theta - eps u*)) / (2 eps)`` (1 pass: ``f_*`` is the plus
       side); ``ghat = g u* = g sigma z(seed*) + g mu``, fed to the update rule (SGD/momentum/Adam).
    3. The policy mean follows REINFORCE on ``J(mu) = E_u L(theta + eps u)`` with the leave-one-out
       baseline: ``A_i = f_i - mean_{j != i} f_j``, and the score ``(u_i - mu) / sigma^2 = z(seed_i) / sigma``
       is regenerated **from the seed that produced f_i** (docs/public-code.md). Then::

           A_i <- A_i / (EMA of std_j f_j)                 (normalise=True; scale-free advantages)
           mu  <- decay * mu - (mean_lr / (k sigma)) * sum_i A_i z(seed_i)
           mu_b <- mu_b * min(1, cap * sigma / RMS(mu_b))  (per block: mu never outweighs the noise by more)

       With ``normalise=False``, ``decay=1`` and ``cap=inf`` this is the paper's rule
       ``mu <- mu - (mean_lr / (k sigma^2)) sum_i A_i (u_i - mu)``. mean_lr stays constant (the lr schedule
       moves theta only).

    ``rule="released"`` pairs the advantages with noise from the best seed's stream
    (:func:`released_score_seed`), as the released code does, **for ablations only**.

    Cost: k + 1 forward passes per step. Memory: mu is one
    parameter-sized buffer per block (``+1x`` the trainable parameters, like a momentum buffer); it is
    online optimizer state, kept in ``state_dict`` with the advantage scale. Returns the mean of the
    two sides.
    """

    ADV_EMA = 0.9  # smoothing of the advantage scale

    def __init__(self, model: nn.Module, lr: float, eps: float = 1e-3, k: int = 4, mean_lr: float = 0.1,
                 decay: float = 0.9, cap: float = 1.0, sigma: float = 1.0, normalise: bool = True,
                 rule: str = "corrected", **kw):
        if rule not in LDSD_RULES:
            raise ValueError(f"unknown LDSD rule {rule!r}; use one of {', '.join(LDSD_RULES)}")
        if k < 2:
            raise ValueError("LDSD needs k >= 2 candidates (k = 1 has no baseline: mu would never move)")
        if mean_lr < 0 or not 0 <= decay <= 1 or not cap > 0 or not sigma > 0:
            raise ValueError("LDSD needs mean_lr >= 0, 0 <= decay <= 1, cap > 0 and sigma > 0")
        self._check_q(kw)
        super().__init__(model, lr, eps, ldsd_k=k, ldsd_lr=mean_lr, ldsd_decay=decay, ldsd_cap=cap,
                         ldsd_sigma=sigma, ldsd_normalise=normalise, ldsd_rule=rule, **kw)
        self.adv_scale: float | None = None

    def means(self) -> list[torch.Tensor]:
        """The policy mean mu, one tensor per block (created as zeros on first use)."""
        out = []
        for p in self.param_groups[0]["params"]:
            state = self.state[p]
            if "ldsd_mean" not in state:
                state["ldsd_mean"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            out.append(state["ldsd_mean"])
        return out

    @torch.no_grad()
    def zo_step(self, closure: Callable[[], torch.Tensor]) -> dict:  # type: ignore[override]
        group = self.param_groups[0]
        eps, sigma = group["eps"], group["ldsd_sigma"]
        mu = self.means()
        seeds, losses = self._pool(closure, group["ldsd_k"], eps, coeff=sigma, mean=mu)
        if not all(math.isfinite(x) for x in losses):
            return self._give_up(losses)
        best = _rank(losses)[0]
        plus = losses[best]
        with self.engine.perturbed(Direction([(seeds[best], sigma)], offset=mu), -eps):
            minus = self.engine.loss(closure)
        g = (plus - minus) / (2 * eps)
        estimate = Direction([(seeds[best], g * sigma)], offset=mu, offset_scales=g)  # ghat = g * (sigma z* + mu)
        record = self._finish(group, (plus + minus) / 2, g, plus, minus, estimate,
                              candidate_losses=losses, best=best)
        if group["ldsd_rule"] == "released":  # the public code's mis-pairing (ablation only)
            seeds = [released_score_seed(seeds[best], i) for i in range(len(seeds))]
        self._update_mean(group, mu, seeds, losses)
        return record

    def advantages(self, losses: list[float], normalise: bool) -> list[float]:
        """Leave-one-out advantages ``f_i - mean_{j != i} f_j``, divided by the running std of the
        candidate losses when ``normalise`` (which updates that running scale)."""
        k, total = len(losses), sum(losses)
        adv = [(k * f - total) / (k - 1) for f in losses]
        if normalise:
            spread = statistics.pstdev(losses)
            self.adv_scale = spread if self.adv_scale is None else (
                self.ADV_EMA * self.adv_scale + (1 - self.ADV_EMA) * spread)
            adv = [a / self.adv_scale if self.adv_scale > 0 else 0.0 for a in adv]
        return adv

    def _update_mean(self, group: dict, mu: list[torch.Tensor], seeds: list[int], losses: list[float]) -> None:
        k, sigma, cap = len(seeds), group["ldsd_sigma"], group["ldsd_cap"]
        adv = self.advantages(losses, group["ldsd_normalise"])
        step = group["ldsd_lr"] / (k * sigma)
        for i, m in enumerate(mu):
            if group["ldsd_decay"] != 1:
                m.mul_(group["ldsd_decay"])
            for seed, a in zip(seeds, adv):  # each advantage with the noise of the seed that produced it
                if step * a != 0.0:
                    self.engine.noise.add(m, seed, i, -step * a, out=m)
            if math.isfinite(cap):
                rms = torch.linalg.vector_norm(m, dtype=torch.float64).item() / math.sqrt(m.numel())
                if rms > cap * sigma:
                    m.mul_(cap * sigma / rms)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"]["ldsd_adv_scale"] = self.adv_scale
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.adv_scale = state_dict["zo"].get("ldsd_adv_scale")
        super().load_state_dict(state_dict)


class ZOGV(GVStep, ZOSGD):
    """MeZO-GV with the ZO-SGD update (heavy-ball with ``momentum > 0``)."""


class ZOGVAdam(GVStep, ZOAdam):
    """MeZO-GV with the ZO-Adam update."""


class ZOGreedy(GreedyStep, ZOSGD):
    """MeZO-Greedy with the ZO-SGD update (heavy-ball with ``momentum > 0``)."""


class ZOGreedyAdam(GreedyStep, ZOAdam):
    """MeZO-Greedy with the ZO-Adam update."""


class LDSD(LDSDStep, ZOSGD):
    """LDSD with the ZO-SGD update (heavy-ball with ``momentum > 0``)."""


class LDSDAdam(LDSDStep, ZOAdam):
    """LDSD with the ZO-Adam update."""


DIRECTION_METHODS = {"gv": (ZOGV, ZOGVAdam), "greedy": (ZOGreedy, ZOGreedyAdam), "ldsd": (LDSD, LDSDAdam)}


def make_direction_optimizer(method: str, update: str, model: nn.Module, lr: float, eps: float, seed: int = 0,
                             weight_decay: float = 0.0, noise: str = "auto", momentum: float = 0.9,
                             candidates: int = 4, ldsd_k: int = 4, ldsd_lr: float = 0.1, ldsd_decay: float = 0.9,
                             ldsd_cap: float = 1.0, ldsd_rule: str = "corrected") -> ZOOptimizer:
    """``method`` (gv, greedy or ldsd) with the update rule ``update`` (sgd, momentum or adam)."""
    if method not in DIRECTION_METHODS:
        raise ValueError(f"unknown direction method {method!r}; use one of {', '.join(DIRECTION_METHODS)}")
    if update not in ("sgd", "momentum", "adam"):
        raise ValueError(f"unknown update rule {update!r}; use sgd, momentum or adam")
    sgd_cls, adam_cls = DIRECTION_METHODS[method]
    kw: dict = dict(seed=seed, weight_decay=weight_decay, noise=noise)
    if method == "ldsd":
        kw.update(k=ldsd_k, mean_lr=ldsd_lr, decay=ldsd_decay, cap=ldsd_cap, rule=ldsd_rule)
    else:
        kw["candidates"] = candidates
    if update == "adam":
        return adam_cls(model, lr=lr, eps=eps, **kw)
    return sgd_cls(model, lr=lr, eps=eps, momentum=momentum if update == "momentum" else 0.0, **kw)
